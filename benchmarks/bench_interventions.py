"""Cost of an intervention sweep on a target; prints JSON and the curve's key numbers.

    python benchmarks/bench_interventions.py --target artifacts/demo/target-a \
        --cache-dir artifacts/demo/cache --scenarios artifacts/demo/scenarios/<set>.npz [--importance importance.csv]
    python benchmarks/bench_interventions.py            # random-init model of the demo target's size, S=128

With a cache, the scenarios are a seeded choice of its validation rows (what the
``Interventions`` callback evaluates); without ``--importance`` the ranking is a
synthetic random-normal (L, H) array, so only the cost and the random / k = all
parts of the numbers mean anything. Settings: the default k sweep x positive,
negative, neutral and ``--seeds`` random seeds, identical head sets run once.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from apmae.interventions.head_sets import read_importance_csv, sweep_head_sets, sweep_ks  # noqa: E402
from apmae.interventions.report import key_numbers  # noqa: E402
from apmae.interventions.sweep import InterventionScenarios, evaluate, run_sweep  # noqa: E402
from apmae.target.access import load_target  # noqa: E402
from benchmarks.bench_extraction import DEMO, random_scenarios, random_target  # noqa: E402


def cached_scenarios(cache_dir: str, name: str, scenarios_path: str, *, n: int, seed: int) -> InterventionScenarios:
    """A seeded choice of ``n`` validation rows of cache ``name`` (noise excluded)."""
    from apmae.cache.store import AttentionCache, cache_files
    from apmae.mining.scenario_set import ScenarioSet
    from apmae.encodings.rows import select_rows

    cache = AttentionCache(cache_files(cache_dir, name))
    rows = select_rows(cache, "val", tasks=[t for t in cache.task_names if t != "noise"])
    rows = np.sort(np.random.default_rng(seed).choice(rows, size=min(n, len(rows)), replace=False))
    middle_pos = ScenarioSet.load(scenarios_path).middle_pos[cache.scenario_index[rows]]
    return InterventionScenarios.from_cache(cache, rows, middle_pos=middle_pos)


def synthetic_scenarios(n: int, seq_len: int, vocab: int) -> InterventionScenarios:
    s = random_scenarios(n, seq_len, vocab)
    rng = np.random.default_rng(1)
    label_len = rng.integers(1, 17, size=n).astype(np.int32)  # the demo's holes: 1..16 tokens
    label_ids = rng.integers(5, vocab, size=(n, 16)).astype(np.int32)
    return InterventionScenarios(input_ids=s.input_ids, label_ids=label_ids, label_len=label_len,
                                 task=np.zeros(n, np.int16), task_names=["random"], scenario_index=np.arange(n))


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--target", help="target model directory or hub name (default: random demo-size model)")
    p.add_argument("--cache-dir", help="attention cache directory of that target")
    p.add_argument("--scenarios", help="the ScenarioSet .npz the cache was built from")
    p.add_argument("--importance", help="importance.csv (default: synthetic random normal)")
    p.add_argument("--n", type=int, default=128, help="scenarios")
    p.add_argument("--seeds", type=int, default=3, help="random seeds")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default="auto")
    p.add_argument("--attn", default="sdpa", help="attention kernel (the callback's default: sdpa)")
    p.add_argument("--first-tokens", action="store_true",
                   help="score the first token only (the study's sweeps: head sets share the layers below them), "
                        "and time the same sets run one at a time beside it")
    args = p.parse_args(argv)

    if args.target:
        target = load_target(args.target, device=args.device)
        scenarios = cached_scenarios(args.cache_dir, Path(args.target.rstrip("/")).name, args.scenarios,
                                     n=args.n, seed=0)
    else:
        target = random_target(DEMO, dtype="float32", device="cpu" if args.device == "auto" else args.device)
        scenarios = synthetic_scenarios(args.n, 128, DEMO["vocab"])
    if args.first_tokens:
        scenarios = scenarios.first_tokens(1)
    target.model.set_attn_implementation(args.attn)
    L, H = target.n_layers, target.n_heads
    importance = (read_importance_csv(args.importance, n_layers=L, n_heads=H) if args.importance
                  else np.random.default_rng(0).normal(size=(L, H)))
    sets = sweep_head_sets(importance, sweep_ks(L * H), n_layers=L, n_heads=H, seeds=list(range(args.seeds)))
    start, cpu = time.perf_counter(), time.process_time()
    sweep = run_sweep(target, scenarios, sets, batch_size=args.batch_size)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    unique = len({s.heads for s in sets} | {()})
    report = {
        "machine": {"cpu": platform.processor() or platform.machine(), "torch_threads": torch.get_num_threads()},
        "target": target.name or "random demo-size", "layers_x_heads": [L, H], "scenarios": len(scenarios),
        "seq_len": int(scenarios.input_ids.shape[1]), "mean_label_len": float(scenarios.label_len.mean()),
        "ks": sweep_ks(L * H), "settings": len(sets), "evaluations": unique, "batch_size": args.batch_size,
        "importance": args.importance or "synthetic", "attn": args.attn, "sweep_s": round(seconds, 2),
        "sweep_cpu_s": round(cpu, 2),
        "per_evaluation_s": round(seconds / unique, 3),
    }
    if args.first_tokens:  # the same head sets, one at a time over every scenario (no shared layers)
        start = time.perf_counter()
        for heads in dict.fromkeys([(), *(s.heads for s in sets)]):
            evaluate(target, scenarios, {layer: [h for l, h in heads if l == layer] for layer, _ in heads},
                     batch_size=args.batch_size)
        alone = time.perf_counter() - start
        report |= {"one_set_at_a_time_s": round(alone, 2), "shared_speedup": round(alone / seconds, 2)}
    print(json.dumps(report, indent=2))
    print("\n".join(key_numbers(sweep).lines()))
    return report


if __name__ == "__main__":
    main()
