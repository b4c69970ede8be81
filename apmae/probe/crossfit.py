"""The cross-fitted probe protocol: out-of-fold scores for every scenario, permutation tests, selection.

Glossary: N scenarios, R repeats, K folds per repeat, B permutations.

:class:`Protocol` holds one set of folds (:func:`apmae.probe.folds.grouped_folds`: grouped by
source file, stratified by task x label, repeated, seeded) and scores every (feature set,
model) pair on all of them, so all out-of-fold scores are paired. A scenario's score is
the mean of its R out-of-fold probabilities. Designs (standardisation, per-head PCA,
label-free reductions) are prepared once per feature set and fold and shared by every
model and every permutation.

Permutation test (:meth:`Protocol.permutation_test`): labels shuffled within each task
(so task identity keeps its share of correct scenarios and cannot explain a rejection), the
whole cross-fit of the first repeat rerun inside, including the inner CV that picks C;
the statistic is the pooled AUROC of that repeat's out-of-fold scores. It stops early
(Besag & Clifford) once ``stop_after`` null AUROCs reached the observed one: p is then
``stop_after / permutations run``, clearly above alpha; otherwise ``(1 + hits) / (1 + B)``.

With ``permutation_p="normal"`` (for thousands of scenarios, where each permutation costs seconds)
the p-value is instead the upper tail of the observed AUROC under a normal whose mean and spread
are the B null AUROCs' (a t prediction interval, B - 1 degrees of freedom): the null of an AUROC
over thousands of scenarios is close to normal, and this p can go below ``1 / (1 + B)``, which a
Holm family of several claims needs. The count-based p is kept beside it (``p_exact``); a test
stopped early keeps the count-based p.
"""

from __future__ import annotations

import multiprocessing
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import numpy as np
from threadpoolctl import threadpool_limits
from tqdm.auto import tqdm

from apmae.common.stats import prediction_p_value
from apmae.probe.features import ProbeData, blocks_of, parts_of
from apmae.probe.folds import Fold, grouped_folds, strata_of
from apmae.probe.metrics import auroc
from apmae.probe.models import MODELS, FoldScore, PreparedFold
from apmae.probe.preprocess import FoldDesign, combine, fold_design


@dataclass(frozen=True)
class ProtocolSettings:
    """How the probe protocol cross-fits, tests and reports."""

    n_splits: int = 5  # K outer folds per repeat, grouped by source file
    n_repeats: int = 5  # R repeats of the K folds, each with another seeded shuffle
    inner_splits: int = 3  # grouped folds inside each outer training fold that choose C
    seed: int = 0  # folds, PCA directions, permutations and bootstraps
    bootstrap_resamples: int = 1000  # file bootstrap of every AUROC and paired difference
    permutations: int = 200  # B label permutations at most per permutation test
    stop_after: int = 10  # a permutation test stops once this many null AUROCs reach the observed
    permutation_p: str = "exact"  # "exact": (1 + hits) / (1 + B); "normal": the t tail under the null's mean
    # and spread (see the module docstring), for sizes where B in the hundreds costs too much
    alpha: float = 0.05  # family-wise level of the claims (Holm)
    min_per_class: int = 10  # a task is scored alone when both classes have at least this many scenarios
    workers: int = 2  # processes fitting folds at once
    progress: bool = False  # progress bars: cross-fits done, and each permutation test's permutations

    def __post_init__(self) -> None:
        if self.n_splits < 2 or self.n_repeats < 1 or self.inner_splits < 2:
            raise ValueError(f"n_splits={self.n_splits}, n_repeats={self.n_repeats}, inner_splits="
                             f"{self.inner_splits}: use n_splits >= 2, n_repeats >= 1, inner_splits >= 2")
        if self.bootstrap_resamples < 100 or self.permutations < 1 or self.stop_after < 1:
            raise ValueError(f"bootstrap_resamples={self.bootstrap_resamples}, permutations={self.permutations}, "
                             f"stop_after={self.stop_after}: use >= 100 resamples and >= 1 of the others")
        if self.workers < 1:
            raise ValueError(f"workers={self.workers}: use at least 1")
        if self.permutation_p not in ("exact", "normal"):
            raise ValueError(f"permutation_p={self.permutation_p!r}: use 'exact' or 'normal'")
        if self.permutation_p == "normal" and self.permutations < 10:
            raise ValueError(f"permutation_p='normal' estimates the null's spread: use permutations >= 10, "
                             f"got {self.permutations}")
        if not 0 < self.alpha < 1:
            raise ValueError(f"alpha={self.alpha}: use a level in (0, 1)")


@dataclass
class CrossFit:
    """A predictor's out-of-fold scores of every scenario."""

    name: str  # what the reports call it, e.g. "row"
    feature_set: str
    model: str
    folds: list[Fold]
    fold_scores: list[FoldScore]
    chosen: list[str] = field(default_factory=list)  # per fold, for a selection: the feature set it chose

    def repeat_scores(self, repeat: int) -> np.ndarray:
        """(N,) the out-of-fold probabilities of one repeat."""
        n = sum(len(f.test) for f in self.folds if f.repeat == 0)
        out = np.full(n, np.nan)
        for fold, score in zip(self.folds, self.fold_scores):
            if fold.repeat == repeat:
                out[fold.test] = score.p
        return out

    @property
    def scores(self) -> np.ndarray:
        """(N,) mean over repeats of each scenario's out-of-fold probability."""
        repeats = sorted({f.repeat for f in self.folds})
        return np.mean([self.repeat_scores(r) for r in repeats], axis=0)


@dataclass(frozen=True)
class PermutationTest:
    """A label-permutation test of one predictor's pooled AUROC."""

    name: str
    within_task: bool
    observed: float  # the first repeat's out-of-fold AUROC
    null: np.ndarray  # (B',) null AUROCs, B' <= B when stopped early
    p_value: float
    stopped_early: bool
    seconds: float
    p_exact: float = float("nan")  # the count-based p, (1 + hits) / (1 + B) (or hits / B when stopped early)
    method: str = "exact"  # how p_value was computed: "exact" or "normal" (ProtocolSettings.permutation_p)


class Protocol:
    """One set of grouped, stratified, repeated folds over ``data``, and every predictor scored on them."""

    def __init__(self, data: ProbeData, settings: ProtocolSettings | None = None) -> None:
        self.data = data
        self.settings = settings or ProtocolSettings()
        s = self.settings
        self.y = data.correct.astype(bool)
        self.strata = strata_of(data.task, data.correct)
        self.folds = grouped_folds(data.groups, self.strata, n_splits=s.n_splits, n_repeats=s.n_repeats, seed=s.seed)
        self._prepared: dict[str, list[PreparedFold]] = {}
        self._parts: dict[str, list[FoldDesign]] = {}
        self._inner = [self._inner_folds(i, fold) for i, fold in enumerate(self.folds)]
        self._bar: Any = None  # the cross-fits' progress bar, opened by the first one (with settings.progress)

    def prepared(self, spec: str) -> list[PreparedFold]:
        """Every fold's design of feature set ``spec`` and its reductions (each part's design computed once)."""
        if spec not in self._prepared:
            parts = [self._part(name) for name in parts_of(spec)]
            self._prepared[spec] = self._map(
                lambda i: PreparedFold.of(combine([p[i] for p in parts]), self._inner[i]), range(len(self.folds)))
        return self._prepared[spec]

    def _part(self, name: str) -> list[FoldDesign]:
        """One registered extractor's design in every fold."""
        if name not in self._parts:
            block = blocks_of(self.data, name)
            self._parts[name] = self._map(
                lambda i: fold_design(block, self.folds[i].train, self.folds[i].test, seed=self.settings.seed + i),
                range(len(self.folds)))
        return self._parts[name]

    def _map(self, function: Callable[[Any], Any], items: Iterable[Any], *, processes: bool = True) -> list[Any]:
        """``[function(item) for item in items]`` on ``workers`` forked processes, BLAS on one thread each.

        The fits are many small numpy calls, which threads would serialise on the GIL; forked
        workers see the protocol's data and designs without copying them. The results come back
        in order, so a run is the same with any number of workers.
        """
        items = list(items)
        with threadpool_limits(limits=1, user_api="blas"):
            if not processes or self.settings.workers == 1 or len(items) < 2:
                return [function(item) for item in items]
            key = id(function)
            _TASKS[key] = function  # the forked workers find it here: a closure cannot be pickled
            try:
                with multiprocessing.get_context("fork").Pool(min(self.settings.workers, len(items))) as pool:
                    return pool.starmap(_run_task, [(key, item) for item in items])
            finally:
                del _TASKS[key]

    def _inner_folds(self, i: int, fold: Fold) -> list[tuple[np.ndarray, np.ndarray]]:
        """Grouped, stratified folds inside outer fold ``i``'s training rows (positions into them)."""
        s = self.settings
        inner = grouped_folds(self.data.groups[fold.train], self.strata[fold.train], n_splits=s.inner_splits,
                              n_repeats=1, seed=s.seed + 1000 + i)
        return [(f.train, f.test) for f in inner]

    def run(self, spec: str, model: str = "l2", *, name: str | None = None) -> CrossFit:
        """Out-of-fold scores of feature set ``spec`` under ``model`` on every fold."""
        if model not in MODELS:
            raise ValueError(f"unknown probe model {model!r}; use one of {sorted(MODELS)}")
        prepared = self.prepared(spec)
        scores = self._map(lambda i: MODELS[model](prepared[i], self.y[self.folds[i].train],
                                                   seed=self.settings.seed + i), range(len(self.folds)),
                           processes=model != "neural")  # torch's thread pool does not survive a fork
        self._fitted(f"{name or spec} [{model}]")
        return CrossFit(name=name or spec, feature_set=spec, model=model, folds=self.folds, fold_scores=scores)

    def _fitted(self, what: str) -> None:
        """Count one finished cross-fit on the progress bar (with ``settings.progress``)."""
        if not self.settings.progress:
            return
        if self._bar is None:
            self._bar = tqdm(desc="probe protocol: cross-fits", unit="fit")
        self._bar.set_postfix_str(what, refresh=False)
        self._bar.update()

    def select(self, fits: list[CrossFit], name: str) -> CrossFit:
        """Per fold, the candidate with the best inner-CV AUROC (validation folds only, never the scores reported)."""
        chosen, scores = [], []
        for i in range(len(self.folds)):
            best = best_inner([f.fold_scores[i] for f in fits])
            chosen.append(fits[best].feature_set)
            scores.append(fits[best].fold_scores[i])
        return CrossFit(name=name, feature_set="|".join(f.feature_set for f in fits), model=fits[0].model,
                        folds=self.folds, fold_scores=scores, chosen=chosen)

    def permutation_test(self, fit: CrossFit, *, within_task: bool = True) -> PermutationTest:
        """Whether ``fit``'s pooled AUROC exceeds what shuffled labels reach (its whole cross-fit rerun each time).

        The B label vectors are drawn up front from the seed; the workers score them in batches and
        the results are read in order, so the test (and where it stops) is the same with any workers.
        """
        start = time.perf_counter()
        s = self.settings
        first = [i for i, f in enumerate(self.folds) if f.repeat == 0]
        observed = auroc(fit.repeat_scores(0), self.y)
        rng = np.random.default_rng(s.seed + 7919)
        strata = self.data.task if within_task else np.zeros(len(self.y))
        labels = [_permuted(self.y, strata, rng) for _ in range(s.permutations)]
        null, hits, stopped = [], 0, False
        batch = 20 * s.workers  # permutations per fork of the workers (a stop wastes at most this many)
        bar = tqdm(total=len(labels), desc=f"permutations of {fit.name}", unit="perm", disable=not s.progress,
                   leave=False)
        for lo in range(0, len(labels), batch):
            values = self._map(lambda y: auroc(self._oof(fit, y, first), y), labels[lo:lo + batch])
            bar.update(len(values))
            for value in values:
                null.append(value)
                hits += value >= observed
                if hits >= s.stop_after:
                    stopped = True
                    break
            if stopped:
                break
        bar.close()
        exact = hits / len(null) if stopped else (1 + hits) / (1 + len(null))
        method = "exact" if stopped or s.permutation_p == "exact" else "normal"
        p = exact if method == "exact" else prediction_p_value(observed, null, alternative="greater")
        return PermutationTest(name=fit.name, within_task=within_task, observed=observed, null=np.asarray(null),
                               p_value=float(p), stopped_early=stopped, seconds=time.perf_counter() - start,
                               p_exact=float(exact), method=method)

    def _oof(self, fit: CrossFit, y: np.ndarray, folds: list[int]) -> np.ndarray:
        """Out-of-fold probabilities under labels ``y`` on ``folds``, in this process (a selection reruns each
        candidate and keeps, per fold, the one with the best inner-CV AUROC, as :meth:`select` does)."""
        out = np.zeros(len(y))
        specs = fit.feature_set.split("|")
        for i in folds:
            train = y[self.folds[i].train]
            candidates = [MODELS[fit.model](self.prepared(spec)[i], train, seed=self.settings.seed + i)
                          for spec in specs]
            out[self.folds[i].test] = candidates[best_inner(candidates)].p
        return out


def best_inner(candidates: list[FoldScore]) -> int:
    """Index of the candidate with the best inner-CV AUROC (the first when none has one)."""
    inner = [c.inner_auroc for c in candidates]
    return int(np.nanargmax(inner)) if np.any(np.isfinite(inner)) else 0


_TASKS: dict[int, Callable[[Any], Any]] = {}


def _run_task(key: int, item: Any) -> Any:
    """A forked worker's call of the function :meth:`Protocol._map` registered before forking."""
    return _TASKS[key](item)


def _permuted(y: np.ndarray, strata: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``y`` shuffled within each stratum."""
    out = y.copy()
    for value in np.unique(strata):
        idx = np.flatnonzero(strata == value)
        out[idx] = y[rng.permutation(idx)]
    return out


__all__ = ["CrossFit", "PermutationTest", "Protocol", "ProtocolSettings"]
