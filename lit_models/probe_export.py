"""What a probe run writes: head importance tables, their heatmap and the per-task score table."""

from __future__ import annotations

import csv
from dataclasses import asdict
from pathlib import Path
from typing import Any, Optional

from apmae.common.head_tables import head_heatmap, write_head_table
from lit_models.probe_stage import ProbeStage


def write_probe_files(directory: str | Path, probe: ProbeStage, scores: Optional[dict[str, Any]]) -> list[Path]:
    """importance.csv, integrated_gradients.csv, heatmap.png and ``<stage>_scores.csv`` (when scored) in ``directory``.

    ``scores`` is ``{"stage": "val" | "test", "scores": {predictor: {task: BinaryScores}}}`` or None.
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
        files.append(write_score_table(directory / f"{scores['stage']}_scores.csv", scores["scores"]))
    return files


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


__all__ = ["write_probe_files", "write_score_table"]
