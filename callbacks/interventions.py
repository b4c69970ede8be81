"""Interventions during validation: zero the heads a ranking points at, measure what the target then gets right.

Glossary: L layers, H heads, n = L * H, k heads zeroed, N scenarios.

Every ``every_n_epochs`` validation runs, at the end of fit and at the end of
test, the callback re-runs the target model (loaded once, never the module
being trained) on a fixed set of scenarios of the DataModule's training-target
cache, with head sets chosen from a signed (L, H) head importance by the
strategies of :mod:`apmae.interventions.head_sets` over a k sweep (:mod:`apmae.interventions.sweep`).

The ranking is the ``importance_csv`` file when one is given (e.g. the
cross-fitted ranking of :mod:`apmae.probe.importance`, which the demo uses), else the
LightningModule's current ``head_importance`` ((L, H) tensor or array; None until it
is computed) when the module ranks heads (:class:`apmae.lit_models.interfaces.RanksHeads`,
e.g. ``LitProbe``). With ``per_task``, rankings per task (the module's
``head_importance_by_task: {task: (L, H)}``, else ``importance_csv_by_task``)
are each applied to that task's scenarios only. Until a ranking exists an
evaluation is skipped with a warning; a module that ranks no heads, with no
importance file given, is refused when the trainer sets the callback up.

Logged (validation and fit end; at test end under ``test/interventions/...``
and the artifact folder ``interventions/test/``):

- metrics ``interventions/<strategy>/k<k>/{accuracy,delta_accuracy,i2c,c2i,
  label_loss,exact_match,token_accuracy}`` (random: mean over seeds, plus
  ``<metric>_std``), ``interventions/baseline/...``, and per task ranking
  ``interventions/per_task/<task>/...``; step = the trainer's global step;
  for ranked strategies also ``.../accuracy/{ci_low,ci_high}`` (Wilson), ``.../p_mcnemar``
  (exact, flips against no intervention), ``.../p_mcnemar_bh`` (Benjamini-Hochberg over every
  ranked setting of the evaluation, global and per task) and ``.../p_vs_random`` (against the
  random head sets of the same k) of :mod:`apmae.interventions.significance`;
- artifacts ``interventions/results.csv`` (one row per scope, strategy, k,
  seed, with those intervals and p-values and the zeroed heads as ``L.H;L.H;...``),
  ``scenarios.csv`` (the
  scenarios and their outcome without intervention), ``by_task.csv`` (every
  setting's metrics per task) and ``curve.png`` (accuracy and exact match vs k:
  the collapse curve, Wilson intervals as error bars), each overwritten by the latest
  evaluation.

Under DDP only global rank 0 evaluates (the others go on and wait at their
next collective); the scenario count is that of rank 0's choice.
"""

from __future__ import annotations

import hashlib
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, TYPE_CHECKING

import numpy as np
from lightning.pytorch import Callback, LightningModule, Trainer

from apmae.common.plotting import pyplot
from apmae.common.tracking import log_to_runs
from apmae.interventions.head_sets import check_importance, check_ks, read_importance_csv, sweep_head_sets, sweep_ks
from apmae.interventions.report import (RESULT_FIELDS, SCENARIO_FIELDS, TASK_FIELDS, curve_figure, key_numbers,
                                        metric_values, result_rows, scenario_rows, task_rows, write_csv)
from apmae.interventions.settings import InterventionSettings, moved_to_settings
from apmae.interventions.significance import SettingKey, SettingTest, setting_tests, significance_metric_values
from apmae.interventions.sweep import InterventionScenarios, run_sweep
from apmae.target.access import load_target
from apmae.encodings.rows import select_rows
from apmae.lit_models.interfaces import RanksHeads, implements, require

if TYPE_CHECKING:  # annotations only: the classes' modules import torch or transformers
    from apmae.target.access import Target

ARTIFACTS = ("results.csv", "scenarios.csv", "by_task.csv", "curve.png")


@dataclass
class InterventionRun:
    """What one evaluation produced (kept as ``Interventions.last``)."""

    stage: str  # "val", "fit" or "test"
    step: int
    sweeps: list[Any]  # apmae.interventions.SweepResult, the global ranking first
    files: dict[str, Path]  # artifact name -> local file
    curve_location: str  # where curve.png of the first sweep is (MLflow artifact or local file)
    tests: dict[SettingKey, SettingTest] = field(default_factory=dict)  # every setting's intervals and tests
    stats_seconds: float = 0.0  # time spent on the intervals and tests


class Interventions(Callback):
    """Head-zeroing sweeps with the target model during validation, logged to MLflow.

    Args:
        every_n_epochs: evaluate at validation runs 0, N, 2N, ... (sanity checks never); None: only at the
            end of fit and of test.
        settings: the scenarios, the target and the head sets of every sweep
            (:class:`apmae.interventions.settings.InterventionSettings`: n_scenarios, split, tasks,
            exclude_tasks, seed, target, dtype, device, attn_implementation, strategies, fractions, ks,
            random_seeds, batch_size), or a dict of its fields; None: its defaults.
        importance_csv: ``importance.csv`` (``layer,head,importance``); when given it is the ranking, ahead of
            the module's ``head_importance``.
        per_task: also run each task's own ranking on that task's scenarios.
        importance_csv_by_task: ``{task: importance.csv}`` used when the module has no ``head_importance_by_task``.
        output_dir: local folder of the artifacts (default ``<default_root_dir>/interventions``).
        run_at_fit_end: evaluate again at the end of fit when the ranking changed since the last evaluation.
        verbose: print the curve's key numbers at the end of fit and of test.
    """

    def __init__(
        self,
        *,
        every_n_epochs: Optional[int] = 1,
        settings: Optional[InterventionSettings] = None,
        importance_csv: Optional[str] = None,
        per_task: bool = False,
        importance_csv_by_task: Optional[dict[str, str]] = None,
        output_dir: Optional[str] = None,
        run_at_fit_end: bool = True,
        verbose: bool = True,
        **moved: Any,
    ) -> None:
        super().__init__()
        moved_to_settings("Interventions", moved)
        self.settings = InterventionSettings.of(settings)
        if every_n_epochs is not None and every_n_epochs < 1:
            raise ValueError(f"every_n_epochs must be >= 1 or null, got {every_n_epochs}")
        files = [importance_csv, *(importance_csv_by_task or {}).values()]
        missing = [p for p in files if p and not Path(p).is_file()]
        if missing:
            raise ValueError(f"importance files {missing} do not exist; give the importance.csv of a probe run")
        if importance_csv_by_task and not per_task:
            raise ValueError("importance_csv_by_task is used only with per_task: true; set it or drop the files")
        self.every_n_epochs = every_n_epochs
        self.importance_csv, self.per_task = importance_csv, per_task
        self.importance_csv_by_task = dict(importance_csv_by_task or {})
        self.output_dir = output_dir
        self.run_at_fit_end, self.verbose = run_at_fit_end, verbose
        self.target: Optional[Target] = None  # loaded on first use
        self.scenarios: Any = None  # apmae.interventions.InterventionScenarios, chosen on first use
        self.cached_correct: Optional[np.ndarray] = None  # (N,) the cache's own outcome of those scenarios
        self.last: Optional[InterventionRun] = None
        self._validations = 0
        self._ranking_key: Optional[str] = None
        self._warned: set[str] = set()

    # ------------------------------------------------------------------ hooks
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Refuse a module that ranks no heads when no importance file stands in for it.

        Raises:
            TypeError: the module lacks :class:`apmae.lit_models.interfaces.RanksHeads` and neither
                ``importance_csv`` nor ``importance_csv_by_task`` is given.
        """
        if not (self.importance_csv or self.importance_csv_by_task):
            require(pl_module, RanksHeads, reader="Interventions",
                    use="attach the callback to an apmae.lit_models.probe_module.LitProbe run, or give importance_csv "
                        "(a probe run's importance.csv)")

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking:
            return
        count, self._validations = self._validations, self._validations + 1
        if self.every_n_epochs is not None and count % self.every_n_epochs == 0:
            self.evaluate(trainer, pl_module, stage="val")

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.run_at_fit_end and (self.last is None or self._current_key(pl_module) != self._ranking_key):
            self.evaluate(trainer, pl_module, stage="fit")
        self._report(trainer)

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.evaluate(trainer, pl_module, stage="test")
        self._report(trainer)

    def _report(self, trainer: Trainer) -> None:
        if self.verbose and trainer.is_global_zero and self.last is not None:
            print("\n".join(self.summary_lines()), flush=True)

    # ------------------------------------------------------------- evaluation
    def evaluate(self, trainer: Trainer, pl_module: LightningModule, *, stage: str) -> Optional[InterventionRun]:
        """One sweep per ranking (global, then per task) on rank 0; None elsewhere or without a ranking."""
        if not trainer.is_global_zero:
            return None
        self._prepare(trainer, pl_module)
        plans = self._plans(pl_module)
        if not plans:
            self._warn_once("no head importance yet (the module has not computed it, no importance_csv): "
                            "interventions skipped")
            return None
        sweeps = [run_sweep(self.target, scenarios, sets, batch_size=self.settings.batch_size, scope=scope,
                            progress=trainer.progress_bar_callback is not None)
                  for scope, scenarios, sets in plans]
        self._ranking_key = self._current_key(pl_module)
        self.last = self._log(trainer, stage, sweeps)
        return self.last

    def _prepare(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Load the target and choose the scenarios, once."""
        datamodule = _datamodule(trainer)
        if self.target is None:
            x = self.settings
            device = str(pl_module.device) if x.device == "auto" else x.device
            self.target = load_target(x.target or datamodule.target, dtype=x.dtype, device=device)
            self.target.model.set_attn_implementation(x.attn_implementation)
        if self.scenarios is None:
            self.scenarios, self.cached_correct = choose_scenarios(
                datamodule, n=self.settings.n_scenarios, split=self.settings.split, tasks=self.settings.tasks,
                exclude_tasks=self.settings.exclude_tasks, seed=self.settings.seed)

    def _sweep_ks(self) -> list[int]:
        n_total = self.target.n_layers * self.target.n_heads
        ks = self.settings.ks
        return check_ks(ks, n_total) if ks is not None else sweep_ks(n_total, fractions=self.settings.fractions)

    def _plans(self, pl_module: LightningModule) -> list[tuple[str, Any, list[Any]]]:
        """(scope, scenarios, head sets) for the global ranking and, with ``per_task``, each task's."""
        t = self.target
        plans = []
        rankings = {"all": self.global_ranking(pl_module), **(self.task_rankings(pl_module) if self.per_task else {})}
        for scope, importance in rankings.items():
            if importance is None:
                continue
            scenarios = self.scenarios if scope == "all" else self._task_scenarios(scope)
            if scenarios is None:
                continue
            sets = sweep_head_sets(importance, self._sweep_ks(), n_layers=t.n_layers, n_heads=t.n_heads,
                                   strategies=self.settings.strategies, seeds=self.settings.random_seeds)
            plans.append((scope, scenarios, sets))
        return plans

    def _task_scenarios(self, task: str) -> Any:
        s = self.scenarios
        if task not in s.task_names or not (s.task == s.task_names.index(task)).any():
            self._warn_once(f"a ranking for task {task!r} was given but no chosen scenario has that task")
            return None
        return s.subset(np.flatnonzero(s.task == s.task_names.index(task)))

    def global_ranking(self, pl_module: LightningModule) -> Optional[np.ndarray]:
        """``importance_csv`` if given, else the module's ``head_importance``, as (L, H); None without either."""
        t = self.target
        if self.importance_csv:
            return read_importance_csv(self.importance_csv, n_layers=t.n_layers, n_heads=t.n_heads)
        found = pl_module.head_importance if implements(pl_module, RanksHeads) else None
        if found is not None:
            return check_importance(found, n_layers=t.n_layers, n_heads=t.n_heads, source="module head_importance")
        return None

    def task_rankings(self, pl_module: LightningModule) -> dict[str, np.ndarray]:
        """``{task: (L, H)}`` from the module's ``head_importance_by_task``, else ``importance_csv_by_task``."""
        t = self.target
        found = pl_module.head_importance_by_task if implements(pl_module, RanksHeads) else None
        if found is not None:
            return {task: check_importance(v, n_layers=t.n_layers, n_heads=t.n_heads,
                                           source=f"module head_importance_by_task[{task!r}]")
                    for task, v in found.items()}
        return {task: read_importance_csv(path, n_layers=t.n_layers, n_heads=t.n_heads)
                for task, path in self.importance_csv_by_task.items()}

    def _current_key(self, pl_module: LightningModule) -> Optional[str]:
        """A hash of the rankings now in force (None before the target is loaded or without any)."""
        if self.target is None:
            return None
        rankings = {"all": self.global_ranking(pl_module), **(self.task_rankings(pl_module) if self.per_task else {})}
        h = hashlib.sha256()
        for scope, array in sorted(rankings.items()):
            if array is not None:
                h.update(scope.encode() + np.ascontiguousarray(array).tobytes())
        return h.hexdigest()

    # ---------------------------------------------------------------- logging
    def _log(self, trainer: Trainer, stage: str, sweeps: list[Any]) -> InterventionRun:
        prefix, folder = ("test/interventions", "interventions/test") if stage == "test" else \
            ("interventions", "interventions")
        start = time.perf_counter()
        tests = setting_tests(sweeps)
        stats_seconds = time.perf_counter() - start
        values: dict[str, float] = significance_metric_values(tests, prefix=prefix)
        for sweep in sweeps:
            values.update(metric_values(sweep, prefix=prefix))
        for logger in trainer.loggers:
            logger.log_metrics(values, step=trainer.global_step)
        local = Path(self.output_dir or Path(trainer.default_root_dir) / "interventions")
        files = self._write_files(sweeps, local / "test" if stage == "test" else local, stage, tests)
        location = str(files["curve.png"])

        for client, run_id in log_to_runs(trainer.loggers, files.values(), folder):
            uri = client.get_run(run_id).info.artifact_uri
            location = f"{uri.removeprefix('file://')}/{folder}/curve.png"
        return InterventionRun(stage=stage, step=trainer.global_step, sweeps=sweeps, files=files,
                               curve_location=location, tests=tests, stats_seconds=stats_seconds)

    def _write_files(self, sweeps: list[Any], folder: Path, stage: str,
                     tests: dict[SettingKey, SettingTest]) -> dict[str, Path]:
        plt = pyplot()
        folder.mkdir(parents=True, exist_ok=True)
        main = sweeps[0]
        files = {
            "results.csv": write_csv(result_rows(sweeps, tests), folder / "results.csv", RESULT_FIELDS),
            "scenarios.csv": write_csv(scenario_rows(main, cached_correct=self._cached_for(main)),
                                       folder / "scenarios.csv", SCENARIO_FIELDS),
            "by_task.csv": write_csv(task_rows(sweeps), folder / "by_task.csv", TASK_FIELDS),
        }
        fig = curve_figure(main, title=f"{Path(self.target.name).name}: heads zeroed by ranking [{main.scope}], "
                                       f"{len(main.scenarios)} {self.settings.split} scenarios ({stage})", tests=tests)
        fig.savefig(folder / "curve.png", dpi=110)
        plt.close(fig)
        files["curve.png"] = folder / "curve.png"
        return files

    def _cached_for(self, sweep: Any) -> Optional[np.ndarray]:
        if sweep.scenarios is self.scenarios:
            return self.cached_correct
        return None

    def summary_lines(self) -> list[str]:
        """The last evaluation's key numbers per ranking and where its curve is (empty before any)."""
        if self.last is None:
            return []
        lines = []
        for sweep in self.last.sweeps:
            lines += key_numbers(sweep, self.last.tests).lines()
        family = sum(1 for key in self.last.tests if key[1] != "random")
        lines.append(f"  p-values: exact McNemar of the flips against no intervention; BH: Benjamini-Hochberg over "
                     f"the {family} ranked settings of this evaluation; vs random: rank among random head sets")
        return [*lines, f"  collapse curve: {self.last.curve_location}"]

    def _warn_once(self, message: str) -> None:
        if message not in self._warned:
            warnings.warn(message, stacklevel=2)
            self._warned.add(message)


def choose_scenarios(datamodule: Any, *, n: int, split: str, tasks: Optional[list[str]],
                     exclude_tasks: list[str], seed: int) -> tuple[Any, np.ndarray]:
    """A seeded choice of ``n`` rows of the training target's cache (all when fewer) and their cached correctness.

    Raises:
        ValueError: the DataModule has no attention cache or scenario set, or the split has no rows.
    """
    caches = getattr(datamodule, "caches", None) or {}
    name = getattr(datamodule, "train_target_name", None)
    if name not in caches or not hasattr(datamodule, "scenario_set"):
        raise ValueError("Interventions needs an AttentionCacheDataModule (attention caches and a scenario set); "
                         f"got {type(datamodule).__name__}")
    cache = caches[name]
    wanted = [t for t in (tasks or cache.task_names) if t not in exclude_tasks]
    rows = select_rows(cache, split, tasks=wanted)
    if not len(rows):
        raise ValueError(f"the {split!r} split of cache {name!r} has no scenarios of tasks {wanted}; "
                         "choose another split or tasks")
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(rows, size=min(n, len(rows)), replace=False))
    middle_pos = datamodule.scenario_set().middle_pos[cache.scenario_index[rows]]
    return InterventionScenarios.from_cache(cache, rows, middle_pos=middle_pos), cache.correct[rows]


def _datamodule(trainer: Trainer) -> Any:
    datamodule = getattr(trainer, "datamodule", None)
    if datamodule is None:
        raise ValueError("Interventions needs the trainer to run with a DataModule "
                         "(trainer.fit(model, datamodule=...))")
    return datamodule
