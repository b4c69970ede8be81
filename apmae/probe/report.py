"""The probe protocol end to end: which predictors run, which claims are tested, and the table they make.

Glossary: N scenarios (the noise control left out), B bootstrap resamples.

:func:`run_protocol` scores, on one set of folds (:class:`apmae.probe.crossfit.Protocol`):

- the baselines: majority (each fold's training share of correct scenarios), task identity
  alone, confidence alone, confidence + task, the whole-pattern statistics;
- every attention feature set of the plan alone and on top of confidence + task;
- every AP-MAE readout alone and on top of confidence + task, and ``apmae*``: per fold the
  readout with the best inner-CV AUROC (chosen on validation folds, never on the scores reported);
- the attention set of ``model_features`` under the other models (L1, CatBoost, the neural head probe).

Claims, Holm-corrected together: each attention set alone beats shuffled labels within task
(a permutation test with the whole cross-fit inside), and each "X on top of confidence +
task" beats confidence + task (a paired file bootstrap of the AUROC difference). Intervals
come from resampling source files. Head importance is cross-fitted too
(:mod:`apmae.probe.importance`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
from scipy import stats as scipy_stats

from apmae.common.stats import Interval, grouped_auroc_bootstrap, holm, paired_p_value, percentile_interval
from apmae.probe.crossfit import CrossFit, PermutationTest, Protocol, ProtocolSettings
from apmae.probe.features import ProbeData
from apmae.probe.importance import HeadImportance, head_importance
from apmae.probe.metrics import auroc
from apmae.probe.models import FoldScore

MAJORITY = "majority"
SELECTED = "apmae*"
KIND_ORDER = ("baseline", "attention", "control", "readout", "on top", "model")


@dataclass(frozen=True)
class ProbePlan:
    """Which predictors the protocol scores and which claims it tests."""

    baselines: tuple[str, ...] = ("task", "confidence", "confidence+task", "stats")
    attention: tuple[str, ...] = ("row",)  # attention feature sets: alone (permutation-tested) and on top
    # attention controls: alone and on top, not permutation-tested; row_mass is what the row-conditioned
    # AP-MAE readout weights its tokens by, so it is what that readout must beat (a paired comparison)
    controls: tuple[str, ...] = ("row_mass",)
    readouts: tuple[str, ...] = ("apmae", "apmae_row", "apmae_rowattn")  # AP-MAE readouts; apmae* picks per fold
    control: str = "confidence+task"  # what every attention set is added to
    other_models: tuple[str, ...] = ("l1", "catboost", "neural")
    model_features: str = "row"  # the feature set the other models run on
    rank_heads_by: str = "row"  # the cross-fitted l2 probe whose head importance ranks heads
    within_task: bool = True  # permutation tests shuffle labels within task (False: globally)
    # paired claims between two predictors (file bootstrap of the AUROC difference), e.g. the AP-MAE readout
    # against the row scalars and against the attention masses it weights its tokens by
    comparisons: tuple[tuple[str, str], ...] = ((SELECTED, "row"), (SELECTED, "row_mass"))

    def __post_init__(self) -> None:
        known = {*self.baselines, *self.attention, *self.controls, *self.readouts, MAJORITY,
                 *([SELECTED] if self.readouts else [])}
        unknown = sorted({name for pair in self.comparisons for name in pair} - known)
        if unknown:
            raise ValueError(f"comparisons name {unknown}, which the plan does not score; use {sorted(known)}")
        rankable = [*self.attention, *self.controls, *self.readouts, SELECTED]
        if self.rank_heads_by not in rankable:
            raise ValueError(f"rank_heads_by={self.rank_heads_by!r} must be one of the plan's attention sets, "
                             f"controls or readouts {rankable}")


@dataclass(frozen=True)
class Row:
    """One predictor's line of the table."""

    name: str
    model: str
    auroc: float
    interval: Interval
    kind: str  # "baseline", "attention", "control", "readout", "on top", "model"
    permutation: PermutationTest | None = None
    p_holm: float = float("nan")  # of this row's claim (permutation, or the paired test for "on top")
    delta: float = float("nan")  # on top: AUROC minus the control's
    delta_interval: Interval | None = None
    delta_p: float = float("nan")
    n_needed: float = float("nan")  # on top, not significant: scenarios a paired test would need (80 % power)
    chosen: dict[str, int] = field(default_factory=dict)  # apmae*: folds that chose each readout


@dataclass(frozen=True)
class Comparison:
    """A paired claim: ``first`` against ``second`` on the same out-of-fold scores."""

    first: str
    second: str
    delta: float  # AUROC of first minus second
    interval: Interval
    p_value: float
    p_holm: float


@dataclass
class ProbeReport:
    """Everything the protocol measured."""

    rows: list[Row]
    scores: dict[str, np.ndarray]  # predictor -> (N,) out-of-fold P(correct)
    per_task: dict[str, dict[str, float]]  # task -> predictor -> AUROC (tasks with both classes >= min_per_class)
    unscored: dict[str, str]  # task -> why it was not scored alone
    importance: HeadImportance
    data: ProbeData
    comparisons: list[Comparison]
    settings: ProtocolSettings
    noise: str = ""
    seconds: dict[str, float] = field(default_factory=dict)

    def row(self, name: str) -> Row:
        return next(r for r in self.rows if r.name == name)


def _majority(protocol: Protocol) -> CrossFit:
    """Each fold's training share of correct scenarios, the same for every test scenario: AUROC 0.5."""
    scores = [FoldScore(p=np.full(len(f.test), protocol.y[f.train].mean()), inner_auroc=float("nan"))
              for f in protocol.folds]
    return CrossFit(name=MAJORITY, feature_set="", model="constant", folds=protocol.folds, fold_scores=scores)


def _fits(protocol: Protocol, plan: ProbePlan) -> tuple[dict[str, CrossFit], dict[str, str]]:
    """Every predictor's cross-fit, and its kind."""
    fits, kinds = {MAJORITY: _majority(protocol)}, {MAJORITY: "baseline"}
    for spec in plan.baselines:
        fits[spec], kinds[spec] = protocol.run(spec), "baseline"
    for spec in plan.attention:
        fits[spec], kinds[spec] = protocol.run(spec), "attention"
    for spec in plan.controls:
        fits[spec], kinds[spec] = protocol.run(spec), "control"
    for spec in plan.readouts:
        fits[spec], kinds[spec] = protocol.run(spec), "readout"
    if plan.readouts:
        fits[SELECTED] = protocol.select([fits[s] for s in plan.readouts], SELECTED)
        kinds[SELECTED] = "attention"
    for spec in (*plan.attention, *plan.controls):
        on_top = f"{plan.control}+{spec}"
        fits[on_top], kinds[on_top] = protocol.run(on_top), "on top"
    if plan.readouts:
        on_top = [protocol.run(f"{plan.control}+{s}") for s in plan.readouts]
        fits[f"{plan.control}+{SELECTED}"] = protocol.select(on_top, f"{plan.control}+{SELECTED}")
        kinds[f"{plan.control}+{SELECTED}"] = "on top"
    for model in plan.other_models:
        name = f"{plan.model_features} [{model}]"
        fits[name], kinds[name] = protocol.run(plan.model_features, model, name=name), "model"
    return fits, kinds


External = Callable[[Protocol], dict[str, CrossFit]]


def run_protocol(data: ProbeData, *, settings: ProtocolSettings | None = None, plan: ProbePlan | None = None,
                 noise: str = "", external: Sequence[External] = ()) -> ProbeReport:
    """Cross-fit every predictor of ``plan`` on ``data``, test the claims, rank the heads.

    ``external``: functions that cross-fit predictors of their own on the protocol's very folds
    (e.g. :func:`apmae.lit_models.probe_folds.litprobe_fits`, LitProbe under a Lightning Trainer);
    their fits are reported as ``model`` rows, with intervals, and make no claims.
    """
    plan = plan or ProbePlan()
    seconds = {}
    start = time.perf_counter()
    protocol = Protocol(data, settings)
    s = protocol.settings
    fits, kinds = _fits(protocol, plan)
    for fit_external in external:
        for name, fit in fit_external(protocol).items():
            if name in fits:
                raise ValueError(f"an external predictor is named {name!r}, as one of the plan's is: rename it")
            fits[name], kinds[name] = fit, "model"
    seconds["cross-fits"] = time.perf_counter() - start
    names = list(fits)
    scores = {name: fits[name].scores for name in names}
    boot = grouped_auroc_bootstrap(np.stack([scores[n] for n in names]), protocol.y, data.groups,
                                   n_resamples=s.bootstrap_resamples, seed=s.seed)
    start = time.perf_counter()
    tests = {name: protocol.permutation_test(fits[name], within_task=plan.within_task)
             for name in names if kinds[name] == "attention"}
    seconds["permutation tests"] = time.perf_counter() - start
    control = names.index(plan.control)
    claims: dict[str, float] = {name: t.p_value for name, t in tests.items()}
    paired = {}
    for i, name in enumerate(names):
        if kinds[name] == "on top":
            d = boot.distribution[i] - boot.distribution[control]
            paired[name] = (float(boot.estimate[i] - boot.estimate[control]), d)
            claims[name] = paired_p_value(d)
    for first, second in plan.comparisons:
        d = boot.distribution[names.index(first)] - boot.distribution[names.index(second)]
        paired[(first, second)] = (float(boot.estimate[names.index(first)] - boot.estimate[names.index(second)]), d)
        claims[(first, second)] = paired_p_value(d)
    adjusted = dict(zip(claims, holm(list(claims.values()))))
    comparisons = [Comparison(first=a, second=b, delta=paired[(a, b)][0],
                              interval=percentile_interval(paired[(a, b)][1]),
                              p_value=claims[(a, b)], p_holm=adjusted[(a, b)]) for a, b in plan.comparisons]
    rows = []
    for i, name in enumerate(names):
        extra = {}
        if name in paired:
            delta, d = paired[name]
            extra = dict(delta=delta, delta_interval=percentile_interval(d),
                         delta_p=claims[name], n_needed=_n_needed(delta, d, len(protocol.y), s.alpha))
        chosen = {}
        if fits[name].chosen:
            chosen = {spec.split("+")[-1]: fits[name].chosen.count(spec) for spec in dict.fromkeys(fits[name].chosen)}
        rows.append(Row(name=name, model=fits[name].model, auroc=float(boot.estimate[i]), interval=boot.interval(i),
                        kind=kinds[name], permutation=tests.get(name), p_holm=adjusted.get(name, float("nan")),
                        chosen=chosen, **extra))
    rows.sort(key=lambda r: KIND_ORDER.index(r.kind))  # stable: the plan's order within a kind
    start = time.perf_counter()
    importance = head_importance(protocol, fits[plan.rank_heads_by])
    seconds["head importance"] = time.perf_counter() - start
    per_task, unscored = _per_task(data, scores, s.min_per_class)
    return ProbeReport(rows=rows, scores=scores, per_task=per_task, unscored=unscored, importance=importance,
                       data=data, comparisons=comparisons, settings=s, noise=noise, seconds=seconds)


def _n_needed(delta: float, distribution: np.ndarray, n: int, alpha: float) -> float:
    """Scenarios a paired test at ``alpha`` would need for 80 % power, if the difference is what was seen."""
    sd = float(np.nanstd(distribution))
    if delta <= 0 or sd <= 0:
        return float("nan")
    z = scipy_stats.norm.ppf(1 - alpha / 2) + scipy_stats.norm.ppf(0.8)
    return float(n * (z * sd / delta) ** 2)


def _per_task(data: ProbeData, scores: dict[str, np.ndarray], min_per_class: int) -> tuple[dict, dict]:
    """AUROC of every predictor within each task with both classes >= ``min_per_class``; why the others are not."""
    per_task, unscored = {}, {}
    for t in np.unique(data.task):
        keep = data.task == t
        name = data.task_names[int(t)]
        n_pos, n_neg = int(data.correct[keep].sum()), int((~data.correct[keep]).sum())
        if min(n_pos, n_neg) < min_per_class:
            unscored[name] = f"{n_pos} correct / {n_neg} incorrect"
            continue
        per_task[name] = {k: auroc(v[keep], data.correct[keep]) for k, v in scores.items()}
    return per_task, unscored


__all__ = ["Comparison", "External", "MAJORITY", "ProbePlan", "ProbeReport", "Row", "SELECTED", "run_protocol"]
