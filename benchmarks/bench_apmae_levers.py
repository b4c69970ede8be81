"""AP-MAE's levers on the demo's SmolLM2 patterns: each variant's validation ratios and training time.

    python benchmarks/bench_apmae_levers.py [--steps 3000] [--only base,patch8,...] [--demo-dir artifacts/demo]

Every variant is ``python -m apmae fit`` of configs/demo/apmae.yaml with a few overrides, on the
caches ``make demo`` built (nothing is extracted again), logged to the MLflow experiment
``demo-apmae-levers`` so the variants compare side by side in the UI. The demo's callbacks
(figures, head metrics) and checkpoints are off; validation runs once, at the end, on the
whole validation split of SmolLM2 and of the unseen target-a. Each variant prints one JSON
line: AP-MAE/trivial and AP-MAE/neighbours on both targets, with their 95 % intervals, and
the fit's seconds. Pick levers on these validation figures; the test split is the probe's.

``norm_pix_loss`` (MAE's per-patch normalised targets) is not a variant: its decoder predicts
each hidden patch up to that patch's own mean and spread, which are unknown at reconstruction
time, so its MSE in pattern space cannot be compared with the baselines'.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

# name -> overrides on top of the demo config (model.init_args.* unless given in full)
VARIANTS: dict[str, list[str]] = {
    "base": [],
    "lr2e-3": ["--model.init_args.recipe.lr=2.0e-3"],
    "lr5e-4": ["--model.init_args.recipe.lr=5.0e-4"],
    "patch8": ["--model.init_args.net_overrides={patch_size: 8}"],
    "patch32": ["--model.init_args.net_overrides={patch_size: 32}"],
    "mask0.75": ["--model.init_args.net_overrides={patch_size: 16, mask_ratio: 0.75}"],
    "wide": ["--model.init_args.net_overrides={patch_size: 16, enc_dim: 192, enc_mlp: 768}"],
    "deep": ["--model.init_args.net_overrides={patch_size: 16, enc_depth: 6}"],
    "all-heads": ["--data.init_args.head_selection=all"],
    "constant-lr": ["--model.init_args.min_lr_ratio=1.0"],
    # cost only: two torch threads beside the DataLoader worker (the demo trains on one)
    "threads2": ["--model.init_args.recipe.num_threads=2"],
}


def run_variant(name: str, steps: int, demo_dir: str) -> dict:
    from apmae.cli import cli_main
    from apmae.demo.console import quiet_libraries
    from apmae.demo.run import demo_overrides

    quiet_libraries()

    root = Path(demo_dir) / "lever-runs" / name
    args = ["fit", "--config", "configs/demo/apmae.yaml", *demo_overrides(demo_dir),
            "--experiment=demo-apmae-levers", f"--run_name={name}", "--trainer.callbacks=[]",
            "--trainer.enable_checkpointing=false", f"--trainer.max_steps={steps}",
            f"--trainer.check_val_every_n_epoch={10 ** 6}", "--trainer.val_check_interval=1.0",
            "--trainer.enable_progress_bar=false",
            f"--trainer.default_root_dir={root}", f"--model.init_args.recipe.export_dir={root / 'apmae'}",
            *VARIANTS[name]]
    start = time.perf_counter()
    cli = cli_main(args)
    cli.trainer.validate(cli.model, datamodule=cli.datamodule, verbose=False)
    seconds = time.perf_counter() - start
    m = {k: float(v) for k, v in cli.trainer.callback_metrics.items() if k.startswith("val/")}
    out = {"variant": name, "steps": steps, "seconds": round(seconds, 1)}
    for target in cli.datamodule.val_target_names:
        for over in ("baseline", "neighbour"):
            key = f"val/{target}/mse_over_{over}"
            if key in m:
                out[f"{target}/{over}"] = round(m[key], 3)
                if key + "/ci_low" in m:
                    out[f"{target}/{over}/ci"] = [round(m[key + "/ci_low"], 3), round(m[key + "/ci_high"], 3)]
    return out


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--only", default=",".join(VARIANTS), help=f"comma-separated, of {', '.join(VARIANTS)}")
    parser.add_argument("--demo-dir", default="artifacts/demo")
    args = parser.parse_args(argv)
    names = [n for n in args.only.split(",") if n]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; choose from {', '.join(VARIANTS)}")
    if not (Path(args.demo_dir) / "cache").is_dir():
        raise SystemExit(f"no caches under {args.demo_dir}: run `make demo` first (the variants read its caches)")
    results = []
    for name in names:
        results.append(run_variant(name, args.steps, args.demo_dir))
        print(json.dumps(results[-1]), flush=True)
    return results


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
