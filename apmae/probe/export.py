"""What a probe run writes: head importance tables, their heatmap, the per-task score table and its intervals."""

from __future__ import annotations

import csv
from dataclasses import asdict
from pathlib import Path
from typing import Any, Optional

from apmae.common.head_tables import head_heatmap, write_head_table
from apmae.probe.uncertainty import ProbeScores, ScoreUncertainty
from apmae.probe.stage import ProbeStage


def write_probe_files(directory: str | Path, probe: ProbeStage, scores: Optional[ProbeScores]) -> list[Path]:
    """importance.csv, integrated_gradients.csv, heatmap.png and ``<stage>_scores.csv`` (when scored) in ``directory``.

    With ``scores.uncertainty`` also ``<stage>_intervals.csv`` and ``<stage>_paired_tests.csv``.
    """
    directory = Path(directory)
    importance = probe.head_importance.cpu().numpy()
    ig = probe.ig_importance.cpu().numpy()
    files = [write_head_table(directory / "importance.csv", {"importance": importance}),
             write_head_table(directory / "integrated_gradients.csv", {"importance": ig}),
             head_heatmap(directory / "heatmap.png",
                          {"mean replacement (logit change)": importance, "integrated gradients": ig},
                          title="probe head importance: + pushes toward 'correct'")]
    if scores is not None:
        files.append(write_score_table(directory / f"{scores.stage}_scores.csv", scores.scores))
    if scores is not None and scores.uncertainty:
        files += write_uncertainty_tables(directory, scores.stage, scores.uncertainty)
    return files


def write_uncertainty_tables(directory: str | Path, stage: str,
                             uncertainty: dict[str, dict[str, ScoreUncertainty]]) -> list[Path]:
    """``<stage>_intervals.csv`` (predictor, task, metric, estimate, ci_low, ci_high) and
    ``<stage>_paired_tests.csv`` (predictor, other, task, metric, difference, ci_low, ci_high, p_value)."""
    intervals, tests = [], []
    for predictor, per_task in uncertainty.items():
        for task, u in per_task.items():
            intervals += [{"predictor": predictor, "task": task, "metric": m, "estimate": u.estimates[m],
                           "ci_low": ci.low, "ci_high": ci.high} for m, ci in u.intervals.items()]
            tests += [{"predictor": predictor, "other": other, "task": task, "metric": m, "difference": t.difference,
                       "ci_low": t.interval.low, "ci_high": t.interval.high, "p_value": t.p_value}
                      for other, by_metric in u.tests.items() for m, t in by_metric.items()]
    return [_write_rows(Path(directory) / f"{stage}_intervals.csv", intervals),
            _write_rows(Path(directory) / f"{stage}_paired_tests.csv", tests)]


def _write_rows(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        if rows:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    return path


def write_score_table(path: str | Path, scores: dict[str, dict[str, Any]]) -> Path:
    """CSV of predictor x task scores: predictor, task, accuracy, balanced_accuracy, auroc, f1, n."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = None
        for predictor, per_task in scores.items():
            for task, s in per_task.items():
                row = {"predictor": predictor, "task": task, **asdict(s)}
                if writer is None:
                    writer = csv.DictWriter(f, fieldnames=list(row))
                    writer.writeheader()
                writer.writerow(row)
    return path


__all__ = ["write_probe_files", "write_score_table", "write_uncertainty_tables"]
