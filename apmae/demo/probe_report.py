"""The demo's probe stage: fit and test the correctness probe, then cluster the encodings.

    python -m apmae.demo.run      (runs AP-MAE, then this stage)

The probe overlay (configs/demo/probe.yaml) is stacked on the AP-MAE config, so the
probe reads the very scenarios and caches AP-MAE was trained and validated on.
It is fitted on the train split, checkpointed on validation loss, and scored once
on the test split from the best checkpoint; the table printed here is that test
score next to the baselines measured on the same balanced test scenarios.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from apmae.atlas.run import INPUT_FOLDERS, build_atlas
from apmae.common.tracking import download_run_artifacts, log_to_run, run_location
from apmae.demo.overrides import input_overrides
from apmae.patterns.cluster_probe import ClusterProbeConfig
from apmae.patterns.run import run_recurring_patterns

PROBE_CONFIG = "configs/demo/probe.yaml"
# table columns: (metric key, header)
COLUMNS = (("probe", "AP-MAE probe"), ("stats_probe", "pattern stats"), ("confidence", "confidence"),
           ("probe_confidence", "probe+conf"), ("majority", "majority"))
# the mark a paired test against that baseline gets when it holds at 0.05: ">c" above confidence, "<c" below
MARKS = {"confidence": "c", "stats_probe": "s"}
ALPHA = 0.05


@dataclass
class ProbeSummary:
    """What the demo's probe stage measured and where it put it."""

    scores: dict[str, dict[str, Any]]  # predictor -> task -> BinaryScores (test split)
    export_dir: str
    run_id: str | None
    experiment: str | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    interventions: list[str] = field(default_factory=list)
    patterns: list[str] = field(default_factory=list)
    atlas: list[str] = field(default_factory=list)
    unscored: list[str] = field(default_factory=list)  # tasks with no test scenario left after balancing
    uncertainty: dict[str, dict[str, Any]] | None = None  # predictor -> task -> ScoreUncertainty (None: not computed)
    bootstrap_seconds: dict[str, float] = field(default_factory=dict)  # intervals and tests, inside the stage times

    def table(self) -> list[str]:
        """Per task: every predictor's balanced accuracy and AUROC, with their intervals when computed, and n."""
        out = self._interval_table() if self.uncertainty is not None else self._plain_table()
        if self.unscored:
            out.append(f"  not scored (one class only, nothing to balance): {', '.join(self.unscored)}")
        return out

    def _tasks(self) -> list[str]:
        return [t for t in self.scores["probe"] if t != "all"] + ["all"]

    def _plain_table(self) -> list[str]:
        """Balanced accuracy (AUROC) per predictor, without intervals."""
        head = f"  {'task':<24}" + "".join(f"{h:>17}" for _, h in COLUMNS) + f"{'n test':>8}"
        out = ["Correctness probe, test split (class-balanced per task): balanced accuracy (AUROC)", head]
        for task in self._tasks():
            cells = []
            for key, _ in COLUMNS:
                s = self.scores[key][task]
                auc = "  -  " if s.auroc != s.auroc else f"{s.auroc:.2f}"
                cells.append(f"{s.balanced_accuracy:>10.3f} ({auc})")
            out.append(f"  {task:<24}" + "".join(f"{c:>17}" for c in cells) + f"{self.scores['probe'][task].n:>8}")
        return out

    def _interval_table(self) -> list[str]:
        """Balanced accuracy, then AUROC, each with its 95 % interval and the paired tests that hold."""
        out = []
        for metric, title in (("balanced_accuracy", "balanced accuracy"), ("auroc", "AUROC")):
            out += [f"Correctness probe, test split (class-balanced per task): {title} [95 % bootstrap interval]",
                    f"  {'task':<24}" + "".join(f"{h:>25}" for _, h in COLUMNS) + f"{'n test':>8}"]
            for task in self._tasks():
                cells = "".join(f"{self._cell(key, task, metric):>25}" for key, _ in COLUMNS)
                out.append(f"  {task:<24}{cells}{self.scores['probe'][task].n:>8}")
        out.append(f"  marks: >c / <c above / below confidence, >s / <s above / below pattern stats (paired "
                   f"bootstrap on the same scenarios, p < {ALPHA}); no mark: no difference shown at that level")
        return out

    def _cell(self, predictor: str, task: str, metric: str) -> str:
        value = getattr(self.scores[predictor][task], metric)
        if value != value:
            return "-"
        u = self.uncertainty[predictor][task]
        marks = [(">" if t[metric].difference > 0 else "<") + MARKS[other]
                 for other, t in u.tests.items() if other in MARKS and t[metric].p_value < ALPHA]
        return f"{value:.3f} {u.intervals[metric]}" + "".join(f" {m}" for m in marks)

    def lines(self) -> list[str]:
        out = ["", *self.table(),
               f"  head importance:  {Path(self.export_dir) / 'heatmap.png'} and importance.csv "
               "(MLflow: head_importance/)"]
        if self.interventions:
            out += ["Interventions on test scenarios (heads zeroed by the probe's ranking):", *self.interventions]
        out += self.patterns + self.atlas
        out.append(f"  MLflow run:       {self.run_id} (experiment {self.experiment!r})")
        return out


def probe_overrides(demo_dir: str) -> list[str]:
    """CLI overrides that point the stacked probe config at ``demo_dir``."""
    d = Path(demo_dir)
    return [*input_overrides(demo_dir), f"--trainer.default_root_dir={d / 'probe-runs'}",
            f"--model.init_args.encoder={d / 'apmae'}", f"--model.init_args.export_dir={d / 'probe'}"]


def run_probe_stage(apmae_config: str, demo_dir: str, *, patterns: bool = True, reduction: str = "pca",
                    workers: int = 1, apmae_run_id: str | None = None) -> ProbeSummary:
    """Fit the probe, test its best checkpoint, cluster the encodings; returns what to print.

    ``reduction`` is the clustering's (``pca``, or the paper's ``umap``: about four minutes
    more on two cores for SmolLM2's 270 heads), ``workers`` the processes clustering heads at once;
    ``apmae_run_id`` is the AP-MAE run whose head metrics join the head atlas.
    """
    # import cost ~5 s (Lightning): the demo's --skip-probe and --help never pay it
    from apmae.cli import cli_main
    from callbacks.interventions import Interventions

    seconds = {}
    start = time.perf_counter()
    cli = cli_main(["fit", "--config", apmae_config, "--config", PROBE_CONFIG, *probe_overrides(demo_dir)])
    seconds["probe fit"] = time.perf_counter() - start
    start = time.perf_counter()
    interventions = [cb for cb in cli.trainer.callbacks if isinstance(cb, Interventions)]
    for callback in interventions:
        callback.verbose = False  # its key numbers are part of the summary printed at the end
    # verbose=False: the summary's table replaces Lightning's table of every test metric
    cli.trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path="best", verbose=False)
    seconds["probe test + interventions"] = time.perf_counter() - start
    run_id, experiment, tracking_uri, _ = run_location(cli.trainer.logger)
    summary = ProbeSummary(scores=cli.model.probe_scores["scores"], export_dir=str(cli.model.export_path()),
                           uncertainty=cli.model.probe_scores.get("uncertainty"),
                           run_id=run_id, experiment=experiment, seconds=seconds,
                           interventions=[line for cb in interventions for line in cb.summary_lines()])
    summary.bootstrap_seconds = {"probe": cli.model.probe_scores.get("bootstrap_seconds", 0.0),
                                 "interventions": sum(cb.last.stats_seconds for cb in interventions if cb.last)}
    scored = cli.model.probe_scores["scores"]["probe"]
    summary.unscored = [t for t in cli.datamodule.task_names if t not in scored]
    if patterns:
        start = time.perf_counter()
        summary.patterns, cluster_probe_seconds = _patterns(cli, demo_dir, run_id, tracking_uri, reduction=reduction,
                                                            workers=workers)
        seconds["recurring patterns"] = time.perf_counter() - start
        summary.bootstrap_seconds["cluster probe"] = cluster_probe_seconds
    start = time.perf_counter()
    summary.atlas = _atlas(cli, demo_dir, [r for r in (run_id, apmae_run_id) if r], tracking_uri)
    seconds["head atlas"] = time.perf_counter() - start
    return summary


def _atlas(cli: Any, demo_dir: str, run_ids: list[str], tracking_uri: str | None) -> list[str]:
    """The head atlas of the probe run (and the AP-MAE run's head metrics), logged into the probe run."""
    d = Path(demo_dir)
    roots = [download_run_artifacts(r, d / "atlas-inputs" / r, tracking_uri=tracking_uri, folders=INPUT_FOLDERS)
             for r in run_ids]
    report = build_atlas(roots or [cli.model.export_path(), d / "patterns"], d,
                         cache=cli.datamodule.caches[cli.datamodule.train_target_name])
    if run_ids:
        log_to_run(run_ids[0], tracking_uri=tracking_uri, artifacts=report.files)
    return report.lines() + (["  MLflow: atlas/index.html among the probe run's artifacts"] if run_ids else [])


def _patterns(cli: Any, demo_dir: str, run_id: str | None, tracking_uri: str | None, *, reduction: str,
              workers: int) -> tuple[list[str], float]:
    """The stage's report lines and the seconds its cluster-probe intervals took."""
    data = cli.datamodule
    name = data.train_target_name
    # the cluster probe fits, stops and is scored on the very rows the neural probe used
    probe = ClusterProbeConfig(balance=data.balance, balance_seed=int(data.seed))
    report = run_recurring_patterns(data.encodings[name], data.caches[name], Path(demo_dir) / "patterns",
                                    reduction=reduction, workers=workers, probe=probe, run_id=run_id,
                                    tracking_uri=tracking_uri)
    neural = cli.model.probe_scores["scores"]["probe"]["all"]
    u = cli.model.probe_scores.get("uncertainty", {}).get("probe", {}).get("all")
    ci = {m: f" {u.intervals[m]}" if u else "" for m in ("balanced_accuracy", "auroc")}
    line = (f"  neural AP-MAE probe, test: balanced accuracy {neural.balanced_accuracy:.3f}{ci['balanced_accuracy']}, "
            f"AUROC {neural.auroc:.3f}{ci['auroc']} (n={neural.n}, class-balanced)")
    return [*report.lines(), line], report.probe.bootstrap_seconds if report.probe else 0.0
