"""AP-MAE training variants on the demo, each measured under the demo's probe protocol beside the demo's AP-MAE.

    python -m apmae.demo.variants [--demo-dir artifacts/demo] [--variants row-emphasis] [--retrain]
    (make demo-variants)

Needs a built demo (``make demo``): its caches, its AP-MAE and its protocol table
(``probe-protocol/probe_table.csv``). For each variant this

1. fits AP-MAE with the demo's config and the variant's overlay (:data:`VARIANTS`), into
   ``<demo>/variants/<name>/``; a finished fit of the same config and arguments is reused;
2. encodes the demo's SmolLM2 cache with it (pooled encodings, row readouts, row scalars);
3. runs the demo's probe protocol on those encodings: the same folds, settings and plan;
4. prints the validation ratios and every readout's out-of-fold AUROC, interval and permutation p
   beside the demo AP-MAE's, and writes ``<demo>/variants/variants.csv``.

The variant is chosen before it is measured (its overlay is fixed), and the table reports
every variant that ran, whatever it shows.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import time
from pathlib import Path

import numpy as np

from apmae.cache.store import AttentionCache, cache_files
from apmae.common.stats import grouped_auroc_bootstrap, paired_p_value, percentile_interval
from apmae.demo.console import quiet_libraries
from apmae.demo.probe_report import DEMO_PLAN, DEMO_PROTOCOL, PROTOCOL_FOLDER
from apmae.demo.run import DEFAULT_CONFIG, FIT_RECORD, DemoSummary, demo_overrides, finished_fit, fit_key, \
    save_finished_fit, summarize
from apmae.encodings.store import EncodingSet, encoder_hash, encodings_path, ensure_encodings
from apmae.model.loading import load_encoder
from apmae.probe.features import ProbeData
from apmae.probe.report import run_protocol
from apmae.probe.summary import control_line, report_lines, write_report

# name -> the overlay stacked on the demo's AP-MAE config
VARIANTS = {"row-emphasis": "configs/demo/apmae_row_emphasis.yaml"}
TRAIN_TARGET = "smollm2"  # the demo's target, whose cache the probe reads
# the table's rows: what AP-MAE contributes, and the row scalars it is held against
ROWS = ("apmae", "apmae_row", "apmae_rowattn", "apmae*", "confidence+task+apmae*", "row")
RATIOS = ("mse_over_baseline", "mse_over_neighbour")
READOUTS = ("apmae", "apmae_row", "apmae_rowattn", "apmae*")  # paired against the demo AP-MAE's


def fit_variant(name: str, overlay: str, demo_dir: Path, *, retrain: bool) -> DemoSummary:
    """Fit (or reuse) AP-MAE with the demo config plus ``overlay``, exported into ``<demo>/variants/<name>/apmae``."""
    folder = demo_dir / "variants" / name
    fit_args = [
        "fit",
        "--config",
        DEFAULT_CONFIG,
        "--config",
        overlay,
        *demo_overrides(str(demo_dir)),
        f"--trainer.default_root_dir={folder / 'runs'}",
        f"--model.init_args.recipe.export_dir={folder / 'apmae'}",
    ]
    record, key = folder / "apmae" / FIT_RECORD, fit_key(fit_args)
    summary = None if retrain else finished_fit(record, key)
    if summary is None:
        from apmae.cli import cli_main  # import cost ~5 s (Lightning)

        summary = summarize(cli_main(fit_args))
        save_finished_fit(record, key, summary)
    else:
        print(f"{name}: reusing the finished fit of MLflow run {summary.run_id}")
    return summary


def encode(export_dir: str | Path, demo_dir: Path, out: Path) -> EncodingSet:
    """The encodings of the demo's SmolLM2 cache under the AP-MAE exported in ``export_dir`` (resumed when partial)."""

    files = cache_files(demo_dir / "cache", TRAIN_TARGET)
    if not files:
        raise SystemExit(f"no {TRAIN_TARGET} cache in {demo_dir / 'cache'}: build the demo first (make demo)")
    net = load_encoder(str(export_dir))
    path = encodings_path(out, TRAIN_TARGET, encoder_hash(net))
    return ensure_encodings(net, AttentionCache(files), path, scaler="log_normalize")


def read_table(path: Path) -> dict[str, dict[str, str]]:
    with open(path, newline="") as f:
        return {row["predictor"]: row for row in csv.DictReader(f)}


def _cell(row: dict[str, str] | None) -> str:
    if row is None:
        return "-"
    p = f" p {float(row['permutation_p']):.3f}" if row.get("permutation_p") else ""
    return f"{float(row['auroc']):.3f} [{float(row['ci_low']):.2f}, {float(row['ci_high']):.2f}]{p}"


def read_scores(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """(rows, correct, source files, {predictor: out-of-fold P(correct)}) of an ``oof_scores.csv``."""
    with open(path, newline="") as f:
        table = list(csv.reader(f))
    header, body = table[0], np.array(table[1:], dtype=object)
    # the first four columns describe the scenario (row, task, source, correct); the rest are predictors
    scores = {name: body[:, j].astype(np.float64) for j, name in enumerate(header) if j >= 4}
    return body[:, 0].astype(np.int64), body[:, 3].astype(np.int64).astype(bool), body[:, 2].astype(str), scores


def paired_lines(reference: Path, variant: Path, name: str) -> list[str]:
    """Each AP-MAE readout of ``variant`` against the demo AP-MAE's, paired on the same scenarios and folds."""

    rows, correct, files, ref = read_scores(reference)
    rows_v, _, _, var = read_scores(variant)
    if not np.array_equal(rows, rows_v):
        raise SystemExit(f"{reference} and {variant} score other scenarios: rerun the demo and the variant")
    lines = [f"  {name} - demo AP-MAE, paired (file bootstrap of the AUROC difference):"]
    for predictor in READOUTS:
        boot = grouped_auroc_bootstrap(np.stack([var[predictor], ref[predictor]]), correct, files, seed=0)
        d = boot.distribution[0] - boot.distribution[1]
        low, high = percentile_interval(d)
        lines.append(f"    {predictor:<16} {boot.estimate[0] - boot.estimate[1]:+.3f} [{low:+.3f}, {high:+.3f}], "
                     f"p {paired_p_value(d):.3f}")
    return lines


def comparison_lines(reference: dict[str, dict[str, str]], variants: dict[str, dict[str, dict[str, str]]],
                     ratios: dict[str, dict[str, float]]) -> list[str]:
    """The side-by-side table: validation ratios, then each readout's AUROC [interval] and permutation p."""
    names = ["demo AP-MAE", *variants]
    width = max(len(r) for r in (*ROWS, *(f"val {t} {k}" for k in RATIOS for t in (TRAIN_TARGET, "target-a"))))
    lines = ["AP-MAE variants under the demo's probe protocol (out-of-fold AUROC [95 % file bootstrap], "
             "within-task permutation p):", "  " + " " * width + "  " + "  ".join(f"{n:<32}" for n in names)]
    for target in (TRAIN_TARGET, "target-a"):
        for key in RATIOS:
            values = [ratios.get(n, {}).get(f"val/{target}/{key}") for n in names]
            cells = [f"{v:.3f}" if v is not None else "-" for v in values]
            lines.append(f"  {f'val {target} {key}':<{width}}  " + "  ".join(f"{c:<32}" for c in cells))
    for row in ROWS:
        cells = [_cell(reference.get(row)), *(_cell(t.get(row)) for t in variants.values())]
        lines.append(f"  {row:<{width}}  " + "  ".join(f"{c:<32}" for c in cells))
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m apmae.demo.variants", description=__doc__.split("\n")[0])
    parser.add_argument("--demo-dir", default="artifacts/demo", help="where make demo built everything")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=sorted(VARIANTS))
    parser.add_argument("--retrain", action="store_true", help="fit each variant again even when one is finished")
    args = parser.parse_args(argv)
    demo_dir = Path(args.demo_dir)
    reference_table = demo_dir / PROTOCOL_FOLDER / "probe_table.csv"
    reference_fit = demo_dir / "apmae" / FIT_RECORD
    if not reference_table.is_file() or not reference_fit.is_file():
        raise SystemExit(f"{reference_table} or {reference_fit} is missing: run the demo first (make demo)")
    quiet_libraries()

    ratios = {"demo AP-MAE": json.loads(reference_fit.read_text())["summary"]["metrics"]}
    tables: dict[str, dict[str, dict[str, str]]] = {}
    plan = dataclasses.replace(DEMO_PLAN, other_models=())
    for name in args.variants:
        folder = demo_dir / "variants" / name
        seconds = {}
        start = time.perf_counter()
        summary = fit_variant(name, VARIANTS[name], demo_dir, retrain=args.retrain)
        ratios[name] = summary.metrics
        seconds["fit"] = time.perf_counter() - start
        start = time.perf_counter()
        encodings = encode(summary.export_dir, demo_dir, folder)
        seconds["encode"] = time.perf_counter() - start
        start = time.perf_counter()
        report = run_protocol(ProbeData.from_encodings(encodings), settings=DEMO_PROTOCOL, plan=plan,
                              noise=control_line(encodings))
        write_report(report, folder / PROTOCOL_FOLDER)
        seconds["protocol"] = time.perf_counter() - start
        print(f"{name}:", *report_lines(report), sep="\n")
        print(f"{name} times: " + " | ".join(f"{k} {v:.0f} s" for k, v in seconds.items()))
        tables[name] = read_table(folder / PROTOCOL_FOLDER / "probe_table.csv")
    lines = comparison_lines(read_table(reference_table), tables, ratios)
    for name in tables:
        lines += paired_lines(reference_table.with_name("oof_scores.csv"),
                              demo_dir / "variants" / name / PROTOCOL_FOLDER / "oof_scores.csv", name)
    print("\n".join(lines))
    out = demo_dir / "variants" / "variants.csv"
    with open(out, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["variant", "predictor", "auroc", "ci_low", "ci_high", "permutation_p"])
        for name, table in {"demo AP-MAE": read_table(reference_table), **tables}.items():
            for row in ROWS:
                if row in table:
                    r = table[row]
                    writer.writerow([name, row, r["auroc"], r["ci_low"], r["ci_high"], r["permutation_p"]])
    print(f"  table: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
