"""The probe protocol's report as people read it: the printed table, CSV files and figures.

Files written by :func:`write_report` (and logged to MLflow by the demo):

- ``probe_table.csv``: every predictor, its out-of-fold AUROC and file-bootstrap interval, its
  permutation test (within task), the paired test against confidence + task, Holm-adjusted p;
- ``probe_comparisons.csv``: the paired comparisons between predictors the plan names;
- ``probe_per_task.csv``: AUROC of every predictor within each task with both classes >= 10;
- ``oof_scores.csv``: every scenario's out-of-fold P(correct) under every predictor;
- ``crossfit_importance.csv`` (``layer,head,importance,drop,direction``): the cross-fitted head ranking
  the Interventions callback reads and the head atlas shows, and ``crossfit_importance.png``, its heatmap;
- ``probe_auroc.png``: every predictor's AUROC with its interval, baselines beside the attention sets.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from apmae.common.head_tables import head_heatmap, table_cell, write_head_table
from apmae.common.plotting import pyplot
from apmae.common.tracking import HEADLINE
from apmae.encodings.store import EncodingSet
from apmae.mining.tasks import CONTROL_TASK
from apmae.probe.report import SELECTED, ProbeReport, Row

IMPORTANCE_CSV = "crossfit_importance.csv"  # the head ranking: Interventions' importance_csv, the atlas' column
KIND_TITLES = {"baseline": "baselines", "attention": "attention alone",
               "control": "attention control alone (what the row-conditioned readout weights by)",
               "readout": "AP-MAE readouts alone",
               "on top": "on top of confidence + task", "model": "other models"}


def _p(value: float) -> str:
    return "-" if value != value else ("<0.001" if value < 0.001 else f"{value:.3f}")


def _test_cell(row: Row) -> str:
    if row.permutation is not None:
        t = row.permutation
        early = f", stopped after {len(t.null)}" if t.stopped_early else f", {len(t.null)} permutations"
        if t.method == "normal":
            early += f", normal tail; count p {_p(t.p_exact)}"
        return f"perm p {_p(t.p_value)} (Holm {_p(row.p_holm)}{early})"
    if row.delta == row.delta:
        return (f"{row.delta:+.3f} {row.delta_interval} vs control, p {_p(row.delta_p)} (Holm {_p(row.p_holm)})"
                + (f"; ~{row.n_needed:,.0f} scenarios for 80 % power" if row.n_needed == row.n_needed
                   and row.p_holm >= 0.05 else ""))
    return ""


def report_lines(report: ProbeReport) -> list[str]:
    """The table the demo prints."""
    data, s = report.data, report.settings
    n_files = len(np.unique(data.groups))
    out = [f"Correctness probe, cross-fitted: every one of {len(data)} scenarios ({int(data.correct.sum())} correct, "
           f"{n_files} files) scored out of fold ({s.n_repeats} x {s.n_splits}-fold, grouped by file, stratified by "
           f"task x label; C by inner {s.inner_splits}-fold CV); AUROC [95 % file-bootstrap interval]"]
    if report.noise:
        out.append(f"  noise control (reported apart, not in the folds): {report.noise}")
    kind = None
    for row in report.rows:
        if row.kind != kind:
            kind = row.kind
            out.append(f"  {KIND_TITLES[kind]}:")
        chosen = (" chose " + ", ".join(f"{k} {v}x" for k, v in row.chosen.items())) if row.chosen else ""
        out.append(f"    {row.name:<34} {row.model:<8} {row.auroc:.3f} {row.interval}  {_test_cell(row)}{chosen}")
    if report.comparisons:
        out.append("  paired comparisons (same out-of-fold scores, file bootstrap):")
        out += [f"    {c.first} - {c.second}: {c.delta:+.3f} {c.interval}, p {_p(c.p_value)} (Holm {_p(c.p_holm)})"
                for c in report.comparisons]
    imp = report.importance
    out.append("  time: " + ", ".join(f"{k} {v:.1f} s" for k, v in report.seconds.items()))
    out.append(f"  head ranking from {imp.source}: stability across repeats (Spearman) mean {imp.stability:.2f}, "
               f"min {imp.stability_min:.2f}")
    if report.per_task:
        names = [r.name for r in report.rows if r.kind in ("baseline", "attention", "control") and r.name != "majority"]
        out.append("  per task (both classes >= %d): AUROC of %s" % (s.min_per_class, ", ".join(names)))
        for task, values in report.per_task.items():
            out.append(f"    {task:<24}" + " ".join(f"{values[n]:.2f}" for n in names))
    if report.unscored:
        out.append(f"  {len(report.unscored)} tasks not scored alone (a class below {s.min_per_class}): "
                   + "; ".join(f"{k} {v}" for k, v in report.unscored.items()))
    return out


def control_line(encodings: EncodingSet) -> str:
    """How often the target completes the noise control (random token ids) correctly ("" without one)."""
    names = list(encodings.task_names)
    if CONTROL_TASK not in names:
        return ""
    keep = encodings.task == names.index(CONTROL_TASK)
    return f"{int(encodings.correct[keep].sum())} of {int(keep.sum())} completed correctly"


def protocol_metrics(report: ProbeReport) -> dict[str, float]:
    """``probe_cv/<predictor>/{auroc,ci_low,ci_high}`` (and ``p_perm``, ``delta``, ``p_holm``) for MLflow."""
    out = {}
    for r in report.rows:
        key = "probe_cv/" + "".join(c if c.isalnum() or c in "_-." else "-" for c in r.name.replace("*", "_selected"))
        out |= {f"{key}/auroc": r.auroc, f"{key}/ci_low": r.interval.low, f"{key}/ci_high": r.interval.high}
        if r.permutation is not None:
            out[f"{key}/p_perm"] = r.permutation.p_value
        out |= {f"{key}/delta": r.delta, f"{key}/p_holm": r.p_holm}
    out["probe_cv/importance_stability"] = report.importance.stability
    out |= headline_metrics(report)
    return {k: float(v) for k, v in out.items() if np.isfinite(v)}


# predictor -> its headline key: the AP-MAE readout the folds chose, the row features, the two baselines
# every claim stands next to, and attention on top of confidence + task
HEADLINE_ROWS = {SELECTED: "auroc_apmae", "row": "auroc_row", "task": "auroc_task",
                 "confidence+task": "auroc_confidence_task", "confidence+task+row": "auroc_confidence_task_row"}


def headline_metrics(report: ProbeReport) -> dict[str, float]:
    """``headline/<name>``: the out-of-fold AUROCs of :data:`HEADLINE_ROWS` present in ``report``, and the
    permutation p of the chosen AP-MAE readout."""
    out = {}
    for r in report.rows:
        if r.name in HEADLINE_ROWS:
            out[HEADLINE + HEADLINE_ROWS[r.name]] = r.auroc
            if r.name == SELECTED and r.permutation is not None:
                out[HEADLINE + "p_perm_apmae"] = r.permutation.p_value
    return out


def write_report(report: ProbeReport, folder: str | Path) -> list[Path]:
    """Every file of the report into ``folder``; returns their paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = [_table(report, folder / "probe_table.csv"), _per_task_table(report, folder / "probe_per_task.csv"),
             _scores(report, folder / "oof_scores.csv")]
    imp = report.importance
    paths.append(write_head_table(folder / IMPORTANCE_CSV, {"importance": imp.importance, "drop": imp.drop,
                                                              "direction": imp.direction}))
    paths.append(head_heatmap(folder / "crossfit_importance.png", {"signed importance": imp.importance},
                              title=f"head importance, {imp.source}, out of fold"))
    paths.append(_forest(report, folder / "probe_auroc.png"))
    paths.append(_write_csv(folder / "probe_comparisons.csv", ["first", "second", "delta", "ci_low", "ci_high",
                                                               "p", "p_holm"],
                            [[c.first, c.second, c.delta, c.interval.low, c.interval.high, c.p_value, c.p_holm]
                             for c in report.comparisons]))
    return paths


def _write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows([[table_cell(v) for v in row] for row in rows])
    return path


def _table(report: ProbeReport, path: Path) -> Path:
    header = ["predictor", "kind", "model", "auroc", "ci_low", "ci_high", "permutation_p", "permutations",
              "delta_vs_control", "delta_ci_low", "delta_ci_high", "paired_p", "p_holm", "n_needed"]
    rows = []
    for r in report.rows:
        t, d = r.permutation, r.delta_interval
        rows.append([r.name, r.kind, r.model, r.auroc, r.interval.low, r.interval.high,
                     t.p_value if t else "", len(t.null) if t else "", r.delta if r.delta == r.delta else "",
                     d.low if d else "", d.high if d else "", r.delta_p if r.delta_p == r.delta_p else "",
                     r.p_holm if r.p_holm == r.p_holm else "", r.n_needed if r.n_needed == r.n_needed else ""])
    return _write_csv(path, header, rows)


def _per_task_table(report: ProbeReport, path: Path) -> Path:
    names = list(report.scores)
    rows = [[task, *(values[n] for n in names)] for task, values in report.per_task.items()]
    return _write_csv(path, ["task", *names], rows)


def _scores(report: ProbeReport, path: Path) -> Path:
    data, names = report.data, list(report.scores)
    rows = [[int(data.rows[i]) if data.rows is not None else i, data.task_names[int(data.task[i])], data.groups[i],
             int(data.correct[i]), *(report.scores[n][i] for n in names)] for i in range(len(data))]
    return _write_csv(path, ["row", "task", "source", "correct", *names], rows)


def _forest(report: ProbeReport, path: Path) -> Path:
    plt = pyplot()
    rows = report.rows
    fig, ax = plt.subplots(figsize=(7.5, 0.8 + 0.28 * len(rows)))
    colours = {"baseline": "0.45", "attention": "tab:red", "control": "tab:orange", "readout": "tab:purple",
               "on top": "tab:blue",
               "model": "tab:green"}
    for y, r in enumerate(rows):
        ax.plot([r.interval.low, r.interval.high], [y, y], color=colours[r.kind], lw=2)
        ax.plot([r.auroc], [y], "o", color=colours[r.kind])
    ax.axvline(0.5, color="0.7", ls=":")
    ax.set_yticks(range(len(rows)), [f"{r.name} [{r.model}]" for r in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("out-of-fold AUROC (95 % file-bootstrap interval)")
    ax.set_title(f"Correctness probe on {len(report.data)} scenarios (grey: baselines)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


__all__ = ["IMPORTANCE_CSV", "control_line", "protocol_metrics", "report_lines", "write_report"]
