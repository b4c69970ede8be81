"""Head metrics of related work, once per fit, on the validation scenarios of the attention cache.

At the start of fit (rank zero only, under ``torch.no_grad``, with the random
number generators restored afterwards so the training run is unchanged) the
callback loads the target model, takes ``n_scenarios`` validation rows of
the DataModule's attention cache (spread evenly over the split), and runs

- ``contribution``: attention vs norm-based / signed contribution weights,
  captured in one forward pass over the rows' prompts;
- ``distance``: WAAD and FAI of the cached patterns, the local/global split
  and each scenario's anchor tokens;
- ``maps``: MAPS relation scores from the parameters of the target and, by
  default, of the DataModule's extra targets;
- ``types`` (opt-in: list it in ``methods``): head-type scores (previous-token,
  duplicate-token, induction, sink, self, local) from the rows' cached
  patterns and the target on repeated random tokens.

Per target it logs CSV tables and L x H heatmaps as MLflow artifacts under
``head_metrics/<target>/`` (under ``<default_root_dir>/head_metrics/`` when
no MLflow logger is attached), scalars ``head_metrics/<target>/<method>/<name>``
(``seconds`` among them), and prints one line per method naming the most
striking heads. It reads nothing from the LightningModule (only the trainer's
DataModule), so it works beside any module (see :mod:`apmae.lit_models.interfaces`).
"""

from __future__ import annotations

import contextlib
import random
import shutil
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_only

from apmae.cache.store import AttentionCache
from apmae.common.cores import torch_threads, usable_cores
from apmae.common.tracking import log_to_runs
from apmae.head_metrics import suite
from apmae.head_metrics.distance import DEFAULT_LOCAL_THRESHOLD, DEFAULT_WINDOW, local_heads
from apmae.head_metrics.relations import RELATIONS
from apmae.head_metrics.types import check_thresholds
from apmae.mining.scenario_set import SPLITS
from apmae.target.access import load_target
from apmae.datamodules.attention_cache import target_short_name

METHODS = ("contribution", "distance", "maps", "types")
DEFAULT_METHODS = ("contribution", "distance", "maps")


class HeadMetrics(Callback):
    """Contribution weights, WAAD/FAI, MAPS and head types of the target's heads, logged once at the start of fit."""

    def __init__(
        self,
        *,
        methods: list[str] = list(DEFAULT_METHODS),
        n_scenarios: int = 16,
        target: Optional[str] = None,
        cache: Optional[str] = None,
        maps_targets: Optional[list[str]] = None,
        window: int = DEFAULT_WINDOW,
        local_threshold: float = DEFAULT_LOCAL_THRESHOLD,
        anchors_per_scenario: int = 5,
        relations: list[str] = list(RELATIONS),
        max_pairs: int = 2000,
        first_mlp: bool = False,
        batch_size: int = 8,
        dtype: str = "float32",
        device: str = "auto",
        type_thresholds: Optional[dict[str, float]] = None,
        repeat_length: int = 32,
    ) -> None:
        """
        Args:
            methods: which of ``contribution``, ``distance``, ``maps``, ``types`` to run.
            n_scenarios: validation rows of the cache used by ``contribution`` and ``distance``.
            target: hub name or directory of the target model (default: the DataModule's ``target``).
            cache: cache file(s) or glob of that target (default: the DataModule's cache of its target).
            maps_targets: models MAPS runs on (default: the target and the DataModule's ``extra_targets``);
                they must share the scenarios' tokenizer.
            window: WAAD window W (>= 1).
            local_threshold: a head is local when its mean WAAD <= local_threshold * window.
            anchors_per_scenario: anchor tokens listed per scenario.
            relations: MAPS relations, from ``copying``, ``brackets``, ``accessor_field``, ``type_variable``.
            max_pairs: largest number of pairs per MAPS relation (most frequent first).
            first_mlp: pass MAPS source embeddings through layer 0's MLP block.
            batch_size: prompts per forward pass of ``contribution``.
            dtype: target model dtype (``float32``, ``bfloat16``, ``float16``).
            device: device of the target model, ``auto`` = the first GPU if any, else CPU.
            type_thresholds: head-type thresholds replacing those of
                :data:`apmae.head_metrics.types.DEFAULT_THRESHOLDS` (type -> score in (0, 1]).
            repeat_length: tokens in each random block of the duplicate/induction test (>= 2; shortened to
                fit the cache's S).
        """
        super().__init__()
        unknown = sorted(set(methods) - set(METHODS))
        if unknown or not methods:
            raise ValueError(f"methods {unknown or methods} are not valid; use a non-empty subset of {list(METHODS)}")
        if n_scenarios < 1 or batch_size < 1 or anchors_per_scenario < 1:
            raise ValueError(f"n_scenarios={n_scenarios}, batch_size={batch_size} and "
                             f"anchors_per_scenario={anchors_per_scenario} must be >= 1")

        local_heads(np.zeros((1, 1)), window=window, local_threshold=local_threshold)  # fail early on bad values
        check_thresholds(type_thresholds or {})
        if repeat_length < 2:
            raise ValueError(f"repeat_length={repeat_length}; the induction test needs blocks of >= 2 tokens")
        self.type_thresholds, self.repeat_length = dict(type_thresholds or {}), repeat_length
        self.methods, self.n_scenarios = list(methods), n_scenarios
        self.target, self.cache, self.maps_targets = target, cache, maps_targets
        self.window, self.local_threshold, self.anchors_per_scenario = window, local_threshold, anchors_per_scenario
        self.relations, self.max_pairs, self.first_mlp = list(relations), max_pairs, first_mlp
        self.batch_size, self.dtype, self.device = batch_size, dtype, device
        self.lines: list[str] = []  # the printed lines, also for a run's final summary
        self.seconds: dict[str, float] = {}  # "<target>/<method>" -> seconds, plus loading, writing, logging
        self.artifacts: list[str] = []  # artifact paths relative to the run's artifact root

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._run(trainer)

    @rank_zero_only
    def _run(self, trainer: Trainer) -> None:
        self.lines, self.seconds, self.artifacts = [], {}, []
        with _restored_rng(), _all_cores(), torch.no_grad(), tempfile.TemporaryDirectory() as tmp:
            try:
                reports = self._compute(trainer.datamodule)
            except NoValidationRows as e:  # small data: the metrics are skipped, the training goes on
                self.lines = [f"head metrics skipped: {e}"]
                warnings.warn(self.lines[0], stacklevel=2)
                return
            start = time.perf_counter()
            root = Path(tmp) / "head_metrics"
            for name, report in reports:
                (root / name).mkdir(parents=True, exist_ok=True)
                paths = report.write(root / name)
                self.artifacts += [str(p.relative_to(tmp)) for p in paths]
            self.seconds["tables and figures"] = time.perf_counter() - start
            start = time.perf_counter()
            self._log(trainer, root, reports)
            self.seconds["logging"] = time.perf_counter() - start
        for _, report in reports:
            self.lines.append(report.line())
        self.lines.append(f"head metrics: {len(reports)} reports in {sum(self.seconds.values()):.1f} s ("
                          + ", ".join(f"{k} {v:.1f} s" for k, v in self.seconds.items()) + ")")
        for line in self.lines:
            print(line, flush=True)

    def _compute(self, datamodule: Any) -> list[tuple[str, Any]]:
        target_path = self.target or datamodule.target
        name = target_short_name(target_path)
        cache = AttentionCache(self.cache) if self.cache else datamodule.caches[datamodule.train_target_name]
        rows = validation_rows(cache, self.n_scenarios)
        reports: list[tuple[str, Any]] = []
        target = self._load(target_path)
        if "contribution" in self.methods:
            reports.append((name, suite.contribution_report(target, cache.input_ids[rows], batch_size=self.batch_size,
                                                            name=name)))
        if "distance" in self.methods:
            reports.append((name, suite.distance_report(cache, rows, tokenizer=target.tokenizer, window=self.window,
                                                        local_threshold=self.local_threshold, name=name,
                                                        anchors_per_scenario=self.anchors_per_scenario)))
        if "types" in self.methods:
            reports.append((name, suite.types_report(target, cache, rows, window=self.window, name=name,
                                                     thresholds={"local": 1.0 - self.local_threshold,
                                                                 **self.type_thresholds},
                                                     repeat_length=self.repeat_length)))
        if "maps" in self.methods:
            extra = list(getattr(datamodule, "extra_targets", []) or [])
            caches = getattr(datamodule, "caches", None) or {}
            for path in self.maps_targets if self.maps_targets is not None else [target_path, *extra]:
                model = target if path == target_path else self._load(path)
                # relations are mined from a corpus in the target's own tokens: its own cache when it has one
                own = cache if path == target_path else caches.get(target_short_name(path), cache)
                reports.append((target_short_name(path), suite.maps_report(
                    model, own.input_ids, relations=self.relations, max_pairs=self.max_pairs,
                    first_mlp=self.first_mlp, name=target_short_name(path))))
        for label, report in reports:
            self.seconds[f"{label}/{report.method}"] = report.seconds
        return reports

    def _load(self, path: str) -> Any:
        start = time.perf_counter()
        target = load_target(path, dtype=self.dtype, device=self.device)
        self.seconds[f"load {Path(str(path)).name}"] = time.perf_counter() - start
        return target

    def _log(self, trainer: Trainer, root: Path, reports: list[tuple[str, Any]]) -> None:
        scalars = {f"head_metrics/{name}/{r.method}/{k}": v for name, r in reports for k, v in r.scalars().items()}
        for logger in trainer.loggers:
            logger.log_metrics(scalars, step=trainer.global_step)
        if not log_to_runs(trainer.loggers, [root], "head_metrics"):
            # no MLflow logger: keep them next to the run's other outputs
            shutil.copytree(root, Path(trainer.default_root_dir) / "head_metrics", dirs_exist_ok=True)


class NoValidationRows(ValueError):
    """The cache's validation split is empty (small data: splits are drawn per source file)."""


def validation_rows(cache: AttentionCache, n: int) -> np.ndarray:
    """``n`` rows of the cache's validation split spread evenly over it (all of them when there are fewer).

    Raises:
        NoValidationRows: the cache has no validation rows.
    """
    val = np.flatnonzero(cache.split == SPLITS.index("val"))
    if not len(val):
        counts = {name: int((cache.split == k).sum()) for k, name in enumerate(SPLITS)}
        raise NoValidationRows(f"the attention cache has no validation rows (rows per split: {counts}); splits are "
                               "drawn per source file, so give the scenarios more source files, raise n_per_task "
                               "or max_per_file, or raise the val fraction")
    if len(val) <= n:
        return val
    return val[np.linspace(0, len(val) - 1, n).round().astype(int)]


def _all_cores() -> contextlib.AbstractContextManager[None]:
    """Every core for the metrics: they run before training, while the DataLoader workers are idle, and a
    module that keeps one thread for training (``num_threads: 1``) would otherwise leave the others unused."""
    return torch_threads(max(torch.get_num_threads(), usable_cores()))


@contextlib.contextmanager
def _restored_rng() -> Iterator[None]:
    """Python, numpy and torch (CPU and CUDA) random states as they were before the block."""
    py, np_state = random.getstate(), np.random.get_state()
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            random.setstate(py)
            np.random.set_state(np_state)


__all__ = ["DEFAULT_METHODS", "HeadMetrics", "validation_rows", "METHODS"]
