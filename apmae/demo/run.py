"""Train AP-MAE on the demo's attention caches and say where the results are.

    python -m apmae.demo.run [--demo-dir artifacts/demo] [--config configs/demo/apmae.yaml] [CLI overrides]

The demo inputs (corpus, held-out corpus, tokenizer, target-a, target-b) must be
built first (``make demo`` does it with ``python -m apmae.demo.build``). The fit
mines the scenarios and extracts both targets' caches on first use (reused on
later runs), trains AP-MAE, validates on target-a and on the unseen target-b,
and logs everything to MLflow. At the end this prints how far AP-MAE is above
the trivial mean-pattern reconstruction, the cross-model ratio, and where the
run, the exported network and the UI are.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from apmae.common.atomic import atomic_write_text
from apmae.common.tracking import run_location
from apmae.demo.console import clock, quiet_libraries
from apmae.demo.overrides import input_overrides
from apmae.demo.probe_report import run_probe_stage

DEFAULT_CONFIG = "configs/demo/apmae.yaml"
FIT_RECORD = "demo_fit.json"  # written into the exported AP-MAE's folder after a finished fit


@dataclass
class DemoSummary:
    """The numbers and places a finished demo run reports."""

    train_target: str
    metrics: dict[str, float]  # val/... metrics of the last validation
    run_id: str | None
    experiment: str | None
    tracking_uri: str | None
    artifact_uri: str | None
    export_dir: str
    head_metrics: list[str] = field(default_factory=list)  # lines of the HeadMetrics callback, when configured

    def ratio_to_baseline(self, target: str) -> float:
        return self.metrics[f"val/{target}/mse_over_baseline"]

    def _interval(self, target: str, over: str) -> str:
        """`` [low, high]``: the ratio's 95 % interval over validation scenarios, when it was computed."""
        key = f"val/{target}/mse_over_{over}/ci_"
        if key + "low" not in self.metrics:
            return ""
        return f" [{self.metrics[key + 'low']:.3f}, {self.metrics[key + 'high']:.3f}]"

    def finding(self, target: str) -> str:
        """One sentence on ``target``: does AP-MAE beat the strongest baseline measured, by its interval."""
        over, name = (("neighbour", "visible-neighbour baseline") if f"val/{target}/mse_over_neighbour" in self.metrics
                      else ("baseline", "trivial mean pattern"))
        ratio = self.metrics[f"val/{target}/mse_over_{over}"]
        low, high = (self.metrics.get(f"val/{target}/mse_over_{over}/ci_{end}") for end in ("low", "high"))
        if low is None or high is None:
            verdict = "beats" if ratio < 1 else "does not beat"
            return f"-> AP-MAE {verdict} the {name} on {target} (error ratio {ratio:.3f}; no interval computed)"
        if high < 1:
            return (f"-> AP-MAE beats the {name} on {target}: {100 * (1 - ratio):.0f} % less error "
                    f"(95 % interval of the ratio {low:.3f}-{high:.3f}, below 1)")
        if low > 1:
            return (f"-> AP-MAE does not beat the {name} on {target}: {100 * (ratio - 1):.0f} % more error "
                    f"(95 % interval of the ratio {low:.3f}-{high:.3f}, above 1)")
        return f"-> AP-MAE and the {name} cannot be told apart on {target} (ratio interval {low:.3f}-{high:.3f} holds 1)"

    def lines(self) -> list[str]:
        out = ["", "AP-MAE demo finished: validation MSE on masked patches (log-normalised patterns)"]
        for key in sorted(k for k in self.metrics if k.endswith("/mse") and k.startswith("val/")):
            target = key.split("/")[1]
            role = "training target" if target == self.train_target else "unseen target  "
            m = self.metrics
            out.append(
                f"  {role} {target}: AP-MAE {m[key]:.4f} | trivial mean pattern {m[f'val/{target}/baseline_mse']:.4f}"
                f" | AP-MAE/trivial {m[f'val/{target}/mse_over_baseline']:.3f}{self._interval(target, 'baseline')}"
                + (f" | visible neighbours {m[f'val/{target}/neighbour_mse']:.4f}"
                   f" | AP-MAE/neighbours {m[f'val/{target}/mse_over_neighbour']:.3f}"
                   f"{self._interval(target, 'neighbour')}"
                   if f"val/{target}/neighbour_mse" in m else "")
                + f" | vs {self.train_target} x{m[f'val/{target}/mse_over_train']:.3f}"
            )
            out.append(f"    {self.finding(target)}")
        if self.head_metrics:
            out.append("Related-work head metrics (tables and heatmaps under head_metrics/ in the run):")
            out += [f"  {line}" for line in self.head_metrics]
        out += [
            f"  MLflow run:       {self.run_id} (experiment {self.experiment!r}, store {self.tracking_uri})",
            f"  run artifacts:    {self.artifact_uri} (config.yaml, figures/, apmae_net/)",
            f"  exported AP-MAE:  {self.export_dir}  (apmae.model.APMAE.load(dir), no Lightning needed)",
            "  open the UI:      make ui   then browse http://127.0.0.1:5000",
        ]
        return out


def demo_overrides(demo_dir: str) -> list[str]:
    """CLI overrides that point the demo config at ``demo_dir`` instead of artifacts/demo."""
    d = Path(demo_dir)
    return [*input_overrides(demo_dir), f"--data.init_args.extra_targets=[{d / 'target-a'}]",
            f"--trainer.default_root_dir={d / 'runs'}", f"--model.init_args.recipe.export_dir={d / 'apmae'}"]


def summarize(cli: Any) -> DemoSummary:
    """Collect the final metrics, MLflow locations and head-metric lines of a finished ``fit``."""
    from apmae.callbacks.head_metrics import HeadMetrics  # import cost ~5 s (Lightning): after the fit that loaded it

    trainer = cli.trainer
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
    run_id, experiment, uri, artifact_uri = run_location(trainer.logger)
    return DemoSummary(
        train_target=cli.datamodule.train_target_name, metrics=metrics, run_id=run_id, experiment=experiment,
        tracking_uri=uri, artifact_uri=artifact_uri, export_dir=str(cli.model.export_path()),
        head_metrics=[line for cb in trainer.callbacks if isinstance(cb, HeadMetrics) for line in cb.lines],
    )


def fit_key(fit_args: list[str]) -> str:
    """What a finished AP-MAE fit depends on: the arguments and the text of every config file they name."""
    h = hashlib.sha256(json.dumps(fit_args).encode())
    for i, arg in enumerate(fit_args[:-1]):
        if arg == "--config":
            h.update(Path(fit_args[i + 1]).read_bytes())
    return h.hexdigest()


def save_finished_fit(record: Path, key: str, summary: DemoSummary) -> None:
    """Record a finished fit beside its exported AP-MAE, so a rerun with the same key reuses it."""
    if record.parent.is_dir():  # the export folder: absent when the fit ended without exporting
        atomic_write_text(record, json.dumps({"key": key, "summary": dataclasses.asdict(summary)}, indent=1) + "\n")


def finished_fit(record: Path, key: str) -> DemoSummary | None:
    """The summary of a finished fit with this key, when its record and export are there (else None)."""
    try:
        saved = json.loads(record.read_text())
        if saved["key"] != key:
            return None
        return DemoSummary(**saved["summary"])
    except (OSError, ValueError, KeyError, TypeError):  # no record, or one from another version: fit again
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m apmae.demo.run", description=__doc__.split("\n")[0])
    parser.add_argument("--demo-dir", default="artifacts/demo", help="where `make demo` built the inputs")
    parser.add_argument("--config", default=DEFAULT_CONFIG)
    parser.add_argument("--skip-probe", action="store_true", help="stop after AP-MAE (no probe, interventions, clusters)")
    parser.add_argument("--patterns", default="pca", choices=["pca", "umap", "none"],
                        help="reduction before HDBSCAN in the recurring-patterns stage (umap: the paper's, slower)")
    parser.add_argument("--retrain", action="store_true",
                        help="fit AP-MAE again even when the exported one came from the same config and arguments")
    parser.add_argument("--pattern-workers", type=int, default=None,
                        help="processes clustering heads at once (default: 2 for umap, 1 otherwise)")
    args, extra = parser.parse_known_args(argv)
    for name in ("eval-corpus", "smollm2", "target-a"):
        if not (Path(args.demo_dir) / name).is_dir():
            raise SystemExit(f"{Path(args.demo_dir) / name} is missing: build the demo inputs first (make demo)")
    # Lightning takes ~5 s to import: missing inputs and --help answer before it
    from apmae.cli import cli_main

    quiet_libraries()

    start = time.perf_counter()
    fit_args = ["fit", "--config", args.config, *demo_overrides(args.demo_dir), *extra]
    record, key = Path(args.demo_dir) / "apmae" / FIT_RECORD, fit_key(fit_args)
    summary = None if args.retrain else finished_fit(record, key)
    if summary is None:
        cli = cli_main(fit_args)
        summary = summarize(cli)
        bootstraps = {"reconstruction": getattr(cli.model, "bootstrap_seconds", 0.0)}
        save_finished_fit(record, key, summary)
        seconds = {"AP-MAE (mining, extraction, training)": time.perf_counter() - start}
    else:
        print(f"AP-MAE: reusing the finished fit of MLflow run {summary.run_id} (same config and arguments; "
              f"--retrain fits again)")
        bootstraps, seconds = {}, {"AP-MAE (reused)": time.perf_counter() - start}
    print("\n".join(summary.lines()))
    ratio = summary.ratio_to_baseline(summary.train_target)
    if ratio >= 1.0:
        print(f"WARNING: AP-MAE did not beat the trivial baseline (ratio {ratio:.3f}); train longer", file=sys.stderr)
        return 1
    if args.skip_probe:
        print(disk_line(args.demo_dir))
        return 0
    probe = run_probe_stage(args.config, args.demo_dir, reduction=args.patterns,
                            workers=args.pattern_workers or (2 if args.patterns == "umap" else 1),
                            apmae_run_id=summary.run_id)
    print("\n".join(probe.lines()))
    seconds.update(probe.seconds)
    bootstraps.update(probe.bootstrap_seconds)
    print("Stage times: " + " | ".join(f"{k} {clock(v)}" for k, v in seconds.items()))
    print(bootstrap_line(bootstraps))
    print(disk_line(args.demo_dir))
    return 0


def bootstrap_line(seconds: dict[str, float]) -> str:
    """What the intervals and tests cost, part of the stage times above."""
    parts = " | ".join(f"{k} {v:.2f} s" for k, v in seconds.items())
    return f"  of which intervals and tests (bootstraps, exact tests): {parts} | total {sum(seconds.values()):.2f} s"


def tree_bytes(path: Path) -> int:
    """Bytes of the files under ``path`` (or of the file itself); links are not followed."""
    if not path.is_dir() or path.is_symlink():
        return path.lstat().st_size
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += (Path(root) / name).lstat().st_size
            except OSError:  # removed while walking
                pass
    return total


def disk_line(demo_dir: str | Path, largest: int = 4) -> str:
    """What the demo's folder takes on disk: the total and its ``largest`` parts (GB = 10^9 bytes)."""
    root = Path(demo_dir)
    sizes = {entry.name: tree_bytes(entry) for entry in root.iterdir()}
    top = sorted(sizes.items(), key=lambda kv: (-kv[1], kv[0]))[:largest]
    parts = ", ".join(f"{name}/ {_gigabytes(size)}" for name, size in top)
    return f"Disk: {root} takes {_gigabytes(sum(sizes.values()))} (largest: {parts}); make clean-demo removes it"


def _gigabytes(n_bytes: int) -> str:
    return f"{n_bytes / 1e9:.2f} GB" if n_bytes >= 1e8 else f"{n_bytes / 1e6:.1f} MB"


if __name__ == "__main__":
    sys.exit(main())
