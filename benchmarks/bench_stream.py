"""Encodings two ways: pattern cache then encode, against streaming target -> encoder; prints JSON.

    python benchmarks/bench_stream.py                       # demo shape, then StarCoder2-3B shape
    python benchmarks/bench_stream.py --cases demo --model artifacts/demo/target-a \\
        --scenarios artifacts/demo/scenarios/scenarios-....npz --encoder artifacts/demo/apmae

For each case, in one process over the same scenarios, with the default
workers and torch threads of both paths and the same batch size:

- ``cache_then_encode``: :func:`apmae.cache.extract.extract` into a pattern cache,
  then :func:`apmae.encodings.store.ensure_encodings` over it; its disk need is the
  cache plus the encodings;
- ``stream``: :func:`apmae.encodings.stream.stream_encodings`; its disk need is the
  encodings file alone.

Both are timed in interleaved rounds (fresh files each round) so that load
from other processes hits both alike; the median round is reported.

Cases: ``demo`` is the demo target (``--model``, or a random-init StarCoder2 of
its shape: 4 layers x 8 heads, 2 kv heads, hidden 128, vocab 2048) at S = 128
with the demo's AP-MAE (``--encoder``, or the ``tiny`` preset with 16-pixel
patches, D = 128). ``starcoder2-3b`` is a random-init StarCoder2 with
StarCoder2-3B's attention shape (30 layers x 24 query heads, 2 kv heads) at
S = 256, hidden 768 instead of 3072 (the patterns' count and size, which
decide the bytes, are StarCoder2-3B's; the forward pass is cheaper) and the
``tiny`` AP-MAE at S = 256 (D = 128). The bytes of the paper's encoder width
(D = 512) are measured on an encodings file of that width written through the
same writer, and the study's disk need (10,000 scenarios x 720 heads) is
projected from the measured bytes per scenario.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_extraction import DEMO, random_scenarios, random_target  # noqa: E402

from apmae.cache.settings import ExtractionSettings
from apmae.common.allocator import keep_freed_memory  # noqa: E402
from apmae.cache.store import AttentionCache, shard_path  # noqa: E402
from apmae.encodings.readouts import ROW_FEATURE_NAMES  # noqa: E402
from apmae.encodings.store import (STAT_NAMES, WIDE, EncodedRows, EncodingsSpec, EncodingsWriter,  # noqa: E402
                                   ensure_encodings, placeholder_outcomes)
from apmae.cache.extract import extract  # noqa: E402
from apmae.model.net import APMAE  # noqa: E402
from apmae.mining.scenario_set import ScenarioSet  # noqa: E402
from apmae.encodings.stream import stream_columns, stream_encodings  # noqa: E402
from apmae.target.access import load_target  # noqa: E402

STARCODER2_3B_ATTENTION = {"layers": 30, "heads": 24, "kv_heads": 2, "hidden": 768, "vocab": 2048}
STUDY = {"scenarios": 10_000, "heads": 720, "seq_len": 256, "encoder_dim": 512}


def run_cache_then_encode(target, scenarios: ScenarioSet, net: APMAE, out: Path, batch_size: int) -> dict:
    """Pattern cache, then its encodings: seconds of each step, bytes of each file."""
    cache_path = shard_path(out, "cache", 0)
    start = time.perf_counter()
    extract(target, scenarios, cache_path, ExtractionSettings(batch_size=batch_size, progress=False))
    extracted = time.perf_counter()
    enc_path = out / "from-cache.h5"
    cache = AttentionCache(cache_path)
    ensure_encodings(net, cache, enc_path, batch_size=batch_size, progress=False)
    end = time.perf_counter()
    for i in range(len(cache)):  # untimed above: what reading the patterns back alone costs
        cache.scenario(i)
    read = time.perf_counter() - end
    return {"seconds": end - start, "extract_seconds": extracted - start, "encode_seconds": end - extracted,
            "read_decode_seconds": read, "bytes": cache_path.stat().st_size + enc_path.stat().st_size,
            "cache_bytes": cache_path.stat().st_size, "encodings_bytes": enc_path.stat().st_size}


def run_stream(target, scenarios: ScenarioSet, net: APMAE, out: Path, batch_size: int) -> dict:
    result = stream_encodings(target, scenarios, net, shard_path(out, "stream", 0),
                              {"batch_size": batch_size, "progress": False})
    return {"seconds": result.seconds, "bytes": result.bytes, "encodings_bytes": result.bytes}


def bench_case(target, scenarios: ScenarioSet, net: APMAE, *, batch_size: int, rounds: int, warmup: bool) -> dict:
    """Both modes over the same scenarios, interleaved for ``rounds`` rounds (after a one-batch warm-up of each)."""
    runs = {"cache_then_encode": run_cache_then_encode, "stream": run_stream}
    warm = scenarios.subset(np.arange(min(batch_size, len(scenarios))))
    timed: dict[str, list[dict]] = {name: [] for name in runs}
    with tempfile.TemporaryDirectory() as tmp:
        for name, run in runs.items() if warmup else ():
            run(target, warm, net, Path(tmp) / f"warm-{name}", batch_size)
        for r in range(rounds):
            for name, run in runs.items():
                timed[name].append(run(target, scenarios, net, Path(tmp) / f"{name}-{r}", batch_size))
    n, heads = len(scenarios), target.n_layers * target.n_heads
    report = {}
    for name, results in timed.items():
        median = sorted(results, key=lambda x: x["seconds"])[len(results) // 2]
        report[name] = {"scenarios_per_s": round(n / median["seconds"], 3),
                        "ms_per_scenario": round(1000 * median["seconds"] / n, 1),
                        "bytes_per_scenario": round(median["bytes"] / n),
                        **{k: round(v / n) for k, v in median.items() if k.endswith("_bytes")},
                        **{k: round(v, 2) for k, v in median.items() if k.endswith("seconds")}}
        if "read_decode_seconds" in median:
            report[name]["read_decode_ms_per_scenario"] = round(1000 * median["read_decode_seconds"] / n, 1)
        report[name]["bytes_per_head"] = round(median["bytes"] / (n * heads), 1)
    a, b = report["cache_then_encode"], report["stream"]
    report["stream_speedup"] = round(b["scenarios_per_s"] / a["scenarios_per_s"], 2)
    report["bytes_ratio"] = round(a["bytes_per_scenario"] / b["bytes_per_scenario"], 1)
    report["pattern_cache_over_encodings"] = round(a["cache_bytes"] / b["encodings_bytes"], 1)
    return {"scenarios": n, "seq_len": scenarios.seq_len, "layers": target.n_layers, "heads": target.n_heads,
            "target": target.summary()["model"], "encoder_dim": net.config.enc_dim, "batch_size": batch_size,
            "rounds": rounds, "warmup": warmup, **report}


def encodings_bytes_per_scenario(*, layers: int, heads: int, seq_len: int, dim: int, n: int = 16) -> float:
    """File bytes per scenario of an encodings file of width ``dim``, written through the writer."""
    rng = np.random.default_rng(0)
    scenarios = random_scenarios(n, seq_len, 1000)
    rows = np.arange(n)
    spec = EncodingsSpec(source_fingerprint="0" * 16, encoder_hash="0" * 16, scaler="log_normalize", seq_len=seq_len,
                         n_layers=layers, n_heads=heads, dim=dim, n_rows=n, task_names=("random",), target={})
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "width.h5"
        with EncodingsWriter.open(path, spec, stream_columns(scenarios, rows)) as writer:
            shape = (n, layers, heads)
            wide = {k: rng.standard_normal((*shape, dim)).astype(np.float16) for k in WIDE}
            writer.append(EncodedRows(**wide, stats=rng.random((*shape, len(STAT_NAMES)), dtype=np.float32),
                                      row=rng.random((*shape, len(ROW_FEATURE_NAMES)), dtype=np.float32),
                                      row_attention=rng.random((*shape, seq_len), dtype=np.float32).astype(np.float16)),
                          placeholder_outcomes(n))
        return path.stat().st_size / n


def paper_encoder_images_per_s(n: int = 8) -> float:
    """Images/s of the paper's AP-MAE encoder (24 x 512, S = 256) on this machine, inference."""
    from apmae.model.scaling import scale

    net = APMAE.from_preset("paper").eval()
    images = scale(torch.rand(n, 1, 256, 256).tril(), "log_normalize")
    with torch.inference_mode():
        net.encode(images[:2])
        start = time.perf_counter()
        net.encode(images)
    return n / (time.perf_counter() - start)


def projection(case_3b: dict, per_scenario_d512: float) -> dict:
    """Disk need of the study in both modes, from the measured bytes per scenario."""
    n = STUDY["scenarios"]
    cache = case_3b["cache_then_encode"]["cache_bytes"]
    return {
        "study": STUDY,
        "pattern_cache_gb": round(n * cache / 1e9, 1),
        "cache_then_encode_gb": round(n * (cache + per_scenario_d512) / 1e9, 1),
        "stream_gb": round(n * per_scenario_d512 / 1e9, 1),
        "float32_full_patterns_gb": round(n * STUDY["heads"] * STUDY["seq_len"] ** 2 * 4 / 1e9, 1),
        "pattern_cache_over_stream": round(cache / per_scenario_d512, 1),
    }


def _demo_case(args) -> tuple:
    target = (load_target(args.model, device="cpu") if args.model
              else random_target(DEMO, dtype="float32", device="cpu"))
    if args.scenarios:
        scenarios = ScenarioSet.load(args.scenarios)
        scenarios = scenarios.subset(np.arange(min(args.n_demo, len(scenarios))))
    else:
        scenarios = random_scenarios(args.n_demo, 128, int(target.model.config.vocab_size))
    torch.manual_seed(0)
    net = (APMAE.load(args.encoder) if args.encoder
           else APMAE.from_preset("tiny", seq_len=scenarios.seq_len, patch_size=scenarios.seq_len // 8))
    return target, scenarios, net.eval()


def _starcoder2_3b_case(args) -> tuple:
    target = random_target(STARCODER2_3B_ATTENTION, dtype="float32", device="cpu")
    scenarios = random_scenarios(args.n_3b, 256, STARCODER2_3B_ATTENTION["vocab"])
    torch.manual_seed(0)
    return target, scenarios, APMAE.from_preset("tiny").eval()


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", nargs="+", default=["demo", "starcoder2-3b"], choices=["demo", "starcoder2-3b"])
    p.add_argument("--model", help="demo case: target directory (default: random-init of the demo's shape)")
    p.add_argument("--scenarios", help="demo case: ScenarioSet .npz (default: random scenarios at S = 128)")
    p.add_argument("--encoder", help="demo case: exported AP-MAE directory (default: random-init tiny, D = 128)")
    p.add_argument("--n-demo", type=int, default=32, help="demo case: scenarios per round")
    p.add_argument("--n-3b", type=int, default=2, help="StarCoder2-3B case: scenarios per round")
    p.add_argument("--batch-size", type=int, default=8, help="demo case; the StarCoder2-3B case uses 1")
    p.add_argument("--rounds", type=int, default=3, help="demo case: interleaved rounds")
    p.add_argument("--rounds-3b", type=int, default=1, help="StarCoder2-3B case: interleaved rounds")
    args = p.parse_args(argv)
    torch.set_grad_enabled(False)
    keep_freed_memory()  # as the extracting entry points do (python -m apmae, the demo)
    report: dict = {"host": platform.node(), "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "load_average": os.getloadavg()}
    if "demo" in args.cases:
        target, scenarios, net = _demo_case(args)
        report["demo"] = bench_case(target, scenarios, net, batch_size=args.batch_size, rounds=args.rounds,
                                    warmup=True)
    if "starcoder2-3b" in args.cases:
        target, scenarios, net = _starcoder2_3b_case(args)
        # One round, no warm-up: a scenario costs seconds on a CPU, so first-call overheads are noise.
        case = bench_case(target, scenarios, net, batch_size=1, rounds=args.rounds_3b, warmup=False)
        d512 = encodings_bytes_per_scenario(layers=30, heads=24, seq_len=256, dim=STUDY["encoder_dim"])
        case["stream_bytes_per_scenario_d512"] = round(d512)
        case["pattern_cache_over_stream_d512"] = round(case["cache_then_encode"]["cache_bytes"] / d512, 1)
        report["starcoder2-3b"] = case
        report["projection"] = projection(case, d512)
        rate = paper_encoder_images_per_s()
        report["paper_encoder"] = {"images_per_s": round(rate, 1),
                                   "s_per_scenario_720_heads": round(STUDY["heads"] / rate, 1)}
    report["load_average_after"] = os.getloadavg()
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
