"""Cost of the cross-fitted probe protocol at the demo's size and at 5,000 scenarios; prints JSON lines.

    python benchmarks/bench_probe_protocol.py [--sizes 468 5000] [--repeats 3] [--permutations 100]

The inputs are synthetic (seeded) with the demo's shapes: SmolLM2's 30 x 9 heads, five row
scalars and four statistics per head, AP-MAE readouts of width 128, the scored row (S = 128, patch 16), 13 tasks, one file per
about nine scenarios, a label carried by a few heads' row scalars. Only the seconds mean
anything. Per size it times: each feature set's designs (standardisation, per-head PCA),
an l2 cross-fit of each, one pass of the permutation test (the cross-fit of one repeat with
its inner CV, what every permutation costs), and the whole :func:`apmae.probe.report.run_protocol`
with the demo's plan (l1 as the other model) and permutation cap. ``--with-slow-models`` adds one
CatBoost and one neural-probe cross-fit of the row features; ``--parts-only`` leaves out the whole
run (at 5,000 scenarios with ``--workers 1`` it keeps the memory within this machine's 24 GB: the
synthetic arrays alone are 3.5 GB, and two workers each hold a fold's 1 GB readout block).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from apmae.probe.crossfit import Protocol, ProtocolSettings  # noqa: E402
from apmae.probe.features import ProbeData  # noqa: E402
from apmae.probe.report import ProbePlan, run_protocol  # noqa: E402


def synthetic(n: int, *, layers: int = 30, heads: int = 9, dim: int = 128, tasks: int = 13, seq_len: int = 128,
              seed: int = 0) -> ProbeData:
    rng = np.random.default_rng(seed)
    row = rng.standard_normal((n, layers, heads, 5)).astype(np.float32)
    task = rng.integers(0, tasks, n)
    logit = row[:, 20, 3, 0] + 0.7 * row[:, 25, 1, 4] - 0.5 * row[:, 5, 5, 1] + 0.3 * (task % 4) - 2.0
    correct = rng.random(n) < 1 / (1 + np.exp(-logit))
    wide = {k: rng.standard_normal((n, layers, heads, dim)).astype(np.float32)
            for k in ("cls", "mean", "row_mean", "row_attn")}
    wide["row_attention"] = rng.dirichlet(np.ones(seq_len), (n, layers, heads)).astype(np.float32)
    return ProbeData(task=task, correct=correct, groups=np.array([f"F{i}" for i in rng.integers(0, max(n // 9, 5), n)]),
                     probability=rng.random(n).astype(np.float32), task_names=[f"t{i}" for i in range(tasks)],
                     n_layers=layers, n_heads=heads, patch_size=16,
                     arrays={"row": row, "stats": rng.standard_normal((n, layers, heads, 4)).astype(np.float32), **wide})


def timed(function):
    start = time.perf_counter()
    result = function()
    return result, time.perf_counter() - start


def bench(n: int, repeats: int, permutations: int, slow_models: bool, full: bool, workers: int) -> dict:
    data = synthetic(n)
    settings = ProtocolSettings(n_repeats=repeats, permutations=permutations, workers=workers)
    protocol = Protocol(data, settings)
    out = {"scenarios": n, "folds": len(protocol.folds)}
    for spec in ("row", "row_mass", "stats", "apmae", "apmae_rowattn"):
        _, out[f"design_{spec}_s"] = timed(lambda: protocol.prepared(spec))
        fit, out[f"l2_{spec}_s"] = timed(lambda: protocol.run(spec))
    first = [i for i, f in enumerate(protocol.folds) if f.repeat == 0]
    _, out["one_permutation_s"] = timed(lambda: protocol._oof(fit, protocol.y, first))
    if slow_models:
        for model in ("catboost", "neural"):
            _, out[f"{model}_row_s"] = timed(lambda: protocol.run("row", model))
    if full:
        report, out["run_protocol_s"] = timed(lambda: run_protocol(data, settings=settings,
                                                                   plan=ProbePlan(other_models=("l1",))))
        out["permutations_run"] = {r.name: len(r.permutation.null) for r in report.rows if r.permutation}
        out["protocol_stage_seconds"] = {k: round(v, 2) for k, v in report.seconds.items()}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[468, 5000])
    parser.add_argument("--repeats", type=int, default=3, help="the demo's 3 x 5 folds")
    parser.add_argument("--permutations", type=int, default=100, help="the demo's cap")
    parser.add_argument("--with-slow-models", action="store_true")
    parser.add_argument("--parts-only", action="store_true",
                        help="designs, cross-fits and one permutation only, not the whole run_protocol")
    parser.add_argument("--workers", type=int, default=2, help="processes (1 bounds the memory at 5,000)")
    args = parser.parse_args()
    machine = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "workers": args.workers,
               "python": platform.python_version()}
    for n in args.sizes:
        result = bench(n, args.repeats, args.permutations, args.with_slow_models, not args.parts_only, args.workers)
        print(json.dumps({"bench": "probe_protocol", **machine, **{k: (round(v, 2) if isinstance(v, float) else v)
                                                                   for k, v in result.items()}}), flush=True)


if __name__ == "__main__":
    main()
