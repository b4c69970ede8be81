"""The cross-fitted probe protocol: exact fits, folds that keep files whole, planted signals found, nulls calibrated."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from apmae.common.head_tables import read_head_table
from apmae.common.stats import grouped_auroc_bootstrap, holm
from apmae.probe.crossfit import Protocol, ProtocolSettings
from apmae.probe.features import FEATURE_SETS, FeatureBlock, ProbeData, register_feature_set
from apmae.probe.folds import check_grouped, grouped_folds, strata_of
from apmae.probe.importance import head_importance
from apmae.probe.linear import Basis, fit_l2
from apmae.probe.metrics import auroc
from apmae.probe.report import ProbePlan, run_protocol
from apmae.probe.summary import protocol_metrics, report_lines, write_report

FAST = dict(n_repeats=2, bootstrap_resamples=200, workers=2)


def planted(n: int = 400, *, layers: int = 3, heads: int = 4, signal: float = 4.0, seed: int = 0,
            files: int = 50, tasks: int = 4) -> ProbeData:
    """Row scalars of L x H heads; head (1, 2)'s entropy decides the label (none when ``signal`` is 0)."""
    rng = np.random.default_rng(seed)
    row = rng.standard_normal((n, layers, heads, 5)).astype(np.float32)
    task = rng.integers(0, tasks, n)
    logit = signal * row[:, 1, 2, 0] + 0.5 * (task - tasks / 2)  # tasks differ in how often they are correct
    correct = rng.random(n) < 1 / (1 + np.exp(-logit))
    wide = {k: rng.standard_normal((n, layers, heads, 6)).astype(np.float32)
            for k in ("cls", "mean", "row_mean", "row_attn")}
    wide["row_attention"] = rng.dirichlet(np.ones(8), (n, layers, heads)).astype(np.float32)
    return ProbeData(task=task, correct=correct, groups=np.array([f"F{i}.java" for i in rng.integers(0, files, n)]),
                     probability=rng.random(n).astype(np.float32), task_names=[f"t{i}" for i in range(tasks)],
                     n_layers=layers, n_heads=heads, patch_size=4,
                     arrays={"row": row, "stats": rng.standard_normal((n, layers, heads, 4)).astype(np.float32),
                             **wide})


@pytest.mark.parametrize("n_features", [6, 300])
def test_the_l2_fit_equals_scikit_learn_s_class_weighted_logistic_regression(n_features):
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(1)
    x = rng.standard_normal((80, n_features))
    y = rng.random(80) < 0.3
    x[:, 0] += 1.5 * y
    for c in (1e-3, 0.1, 1.0):
        fit, _ = fit_l2(Basis.of(x), y, c)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            want = LogisticRegression(C=c, class_weight="balanced", tol=1e-10, max_iter=10_000).fit(x, y)
        np.testing.assert_allclose(fit.beta, want.coef_[0], atol=1e-4 * np.abs(want.coef_).max())
        assert fit.intercept == pytest.approx(want.intercept_[0], abs=1e-4)


def test_folds_never_split_a_file_and_score_every_scenario_once_per_repeat():
    data = planted(files=23)
    folds = grouped_folds(data.groups, strata_of(data.task, data.correct), n_splits=5, n_repeats=3, seed=4)
    check_grouped(folds, data.groups)
    assert len(folds) == 15 and len({tuple(f.test[:5]) for f in folds}) > 5  # repeats shuffle differently
    with pytest.raises(ValueError, match="3 source files cannot fill 5 folds"):
        grouped_folds(np.array(["a", "b", "c"] * 4), np.zeros(12), n_splits=5)
    broken = [folds[0].__class__(repeat=0, index=0, train=np.arange(0, 200), test=np.arange(150, 400))]
    with pytest.raises(AssertionError, match="splits files"):
        check_grouped(broken, data.groups)


def test_a_planted_head_is_found_significant_and_ranked_first():
    data = planted()
    protocol = Protocol(data, ProtocolSettings(permutations=100, **FAST))
    fit = protocol.run("row")
    assert auroc(fit.scores, data.correct) > 0.9
    test = protocol.permutation_test(fit)
    assert test.p_value < 0.01 and not test.stopped_early and len(test.null) == 100
    importance = head_importance(protocol, fit)
    assert np.unravel_index(np.argmax(np.abs(importance.importance)), (3, 4)) == (1, 2)
    assert importance.direction[1, 2] == 1  # a higher value of the planted scalar means "correct" more often
    assert importance.stability > 0.2 and importance.source == "row (l2)"


def test_shuffled_labels_are_rejected_no_more_often_than_chance():
    """20 seeds of data without signal: at alpha 0.05 at most 3 rejections (P(>= 4 | chance) = 0.016)."""
    rejections = 0
    for seed in range(20):
        data = planted(n=160, layers=2, heads=3, signal=0.0, seed=seed, files=30)
        protocol = Protocol(data, ProtocolSettings(n_repeats=1, permutations=39, stop_after=5, workers=1,
                                                   bootstrap_resamples=200, seed=seed))
        rejections += protocol.permutation_test(protocol.run("row")).p_value < 0.05
    assert rejections <= 3


def test_within_task_permutations_keep_task_identity_from_passing_as_a_finding():
    """Labels that depend on the task only: task identity scores high, yet it is no finding within task."""
    data = planted(signal=0.0, seed=5)
    data.correct = np.isin(data.task, [0, 1]) & (np.random.default_rng(0).random(len(data.task)) < 0.8)
    register_feature_set("task_copy", FEATURE_SETS["task"], replace=True)
    protocol = Protocol(data, ProtocolSettings(permutations=60, **{**FAST, "n_repeats": 1}))
    fit = protocol.run("task_copy")
    assert auroc(fit.scores, data.correct) > 0.75
    within = protocol.permutation_test(fit, within_task=True)
    globally = protocol.permutation_test(fit, within_task=False)
    assert within.p_value >= 0.05 and within.null.mean() > 0.8  # shuffles inside tasks keep what the task says
    assert globally.p_value < 0.05 and globally.null.mean() < 0.6


def test_the_readout_is_chosen_per_fold_by_inner_cv_only():
    data = planted()
    data.arrays["row_attn"][:, 1, 2, :] = data.arrays["row"][:, 1, 2, :1] + 0.1  # this readout carries the signal
    protocol = Protocol(data, ProtocolSettings(**FAST))
    fits = [protocol.run(spec) for spec in ("apmae", "apmae_row", "apmae_rowattn")]
    chosen = protocol.select(fits, "apmae*")
    assert chosen.chosen.count("apmae_rowattn") == len(protocol.folds)
    for i, score in enumerate(chosen.fold_scores):
        inner = [f.fold_scores[i].inner_auroc for f in fits]
        assert score is fits[int(np.argmax(inner))].fold_scores[i]


def test_the_report_sets_every_attention_claim_beside_the_baselines(tmp_path):
    data = planted()
    plan = ProbePlan(other_models=("l1",))
    report = run_protocol(data, settings=ProtocolSettings(permutations=30, **FAST), plan=plan, noise="0 of 8")
    names = [r.name for r in report.rows]
    for name in ("majority", "task", "confidence", "confidence+task", "stats", "row", "row_mass", "apmae", "apmae_row",
                 "apmae_rowattn", "apmae*", "confidence+task+row", "confidence+task+apmae*", "row [l1]"):
        assert name in names, name
    majority, row = report.row("majority"), report.row("row")
    assert majority.auroc == pytest.approx(0.5, abs=0.1)
    assert row.permutation is not None and row.p_holm >= row.permutation.p_value
    on_top = report.row("confidence+task+row")
    assert on_top.delta == pytest.approx(on_top.auroc - report.row("confidence+task").auroc)
    assert on_top.delta_interval.low < on_top.delta < on_top.delta_interval.high and on_top.p_holm >= on_top.delta_p
    text = "\n".join(report_lines(report))
    assert "noise control (reported apart, not in the folds): 0 of 8" in text and "baselines:" in text
    assert "on top of confidence + task:" in text and "stability across repeats" in text
    files = {p.name for p in write_report(report, tmp_path)}
    assert files == {"probe_table.csv", "probe_per_task.csv", "oof_scores.csv", "crossfit_importance.csv",
                     "crossfit_importance.png", "probe_auroc.png", "probe_comparisons.csv"}
    versus_row = next(c for c in report.comparisons if (c.first, c.second) == ("apmae*", "row"))
    assert versus_row.delta == pytest.approx(report.row("apmae*").auroc - row.auroc)
    assert versus_row.p_holm >= versus_row.p_value
    ranking = read_head_table(tmp_path / "crossfit_importance.csv", "importance", n_layers=3, n_heads=4)
    np.testing.assert_allclose(ranking, report.importance.importance, rtol=1e-5, atol=1e-7)
    metrics = protocol_metrics(report)  # what MLflow gets: the headline few beside every row's numbers
    assert {k for k in metrics if k.startswith("headline/")} == {
        "headline/auroc_apmae", "headline/auroc_row", "headline/auroc_task", "headline/auroc_confidence_task",
        "headline/auroc_confidence_task_row", "headline/p_perm_apmae"}
    assert metrics["headline/auroc_row"] == metrics["probe_cv/row/auroc"] == pytest.approx(row.auroc)
    assert metrics["headline/p_perm_apmae"] == pytest.approx(report.row("apmae*").permutation.p_value)


def test_file_bootstrap_auroc_and_holm():
    rng = np.random.default_rng(0)
    y = rng.random(200) < 0.3
    score = np.round(rng.random(200) + 0.4 * y, 1)  # ties on purpose
    result = grouped_auroc_bootstrap(np.stack([score, -score]), y, rng.integers(0, 30, 200), n_resamples=300)
    assert result.estimate[0] == pytest.approx(auroc(score, y))
    assert result.estimate[1] == pytest.approx(1 - auroc(score, y))
    assert result.low[0] < result.estimate[0] < result.high[0] and result.distribution.shape == (2, 300)
    np.testing.assert_allclose(holm([0.01, 0.04, 0.03, np.nan]), [0.03, 0.06, 0.06, np.nan])


def test_bad_settings_and_feature_sets_say_what_to_change():
    with pytest.raises(ValueError, match="n_splits >= 2"):
        ProtocolSettings(n_splits=1)
    with pytest.raises(ValueError, match="unknown feature set"):
        Protocol(planted(), ProtocolSettings(**FAST)).prepared("row+entropy")
    with pytest.raises(ValueError, match="without '\\+'"):
        register_feature_set("a+b", FEATURE_SETS["row"])
    with pytest.raises(ValueError, match="rank_heads_by"):
        ProbePlan(rank_heads_by="task")
    with pytest.raises(ValueError, match="needs \(N, F\) values and \(F,\) head ids"):
        FeatureBlock(values=np.zeros((3, 4)), head=np.zeros(3, dtype=np.int64))


def test_the_normal_tail_reaches_below_one_over_b_plus_one_and_keeps_the_count_p():
    data = planted()
    protocol = Protocol(data, ProtocolSettings(permutations=20, permutation_p="normal", **FAST))
    test = protocol.permutation_test(protocol.run("row"))
    assert test.method == "normal" and test.p_exact == pytest.approx(1 / 21)
    assert test.p_value < 1e-4 < test.p_exact


def test_the_normal_tail_rejects_shuffled_labels_no_more_often_than_chance():
    """As the count-based test above: 20 seeds without signal, at most 3 rejections at alpha 0.05."""
    rejections = 0
    for seed in range(20):
        data = planted(n=160, layers=2, heads=3, signal=0.0, seed=seed, files=30)
        protocol = Protocol(data, ProtocolSettings(n_repeats=1, permutations=20, stop_after=5, workers=1,
                                                   bootstrap_resamples=200, seed=seed, permutation_p="normal"))
        rejections += protocol.permutation_test(protocol.run("row")).p_value < 0.05
    assert rejections <= 3


def test_the_normal_tail_by_hand():
    from scipy import stats

    from apmae.common.stats import prediction_p_value

    def normal_tail(observed, null):
        return prediction_p_value(observed, null, alternative="greater")

    null = np.array([0.48, 0.50, 0.52, 0.50])
    sd = np.std(null, ddof=1)
    assert normal_tail(0.5 + 2 * sd * np.sqrt(1.25), null) == pytest.approx(stats.t.sf(2, 3))
    assert normal_tail(0.4, np.full(5, 0.5)) == 1.0 and normal_tail(0.6, np.full(5, 0.5)) == 0.0
    two_sided = prediction_p_value(0.5 - 2 * sd * np.sqrt(1.25), null)
    assert two_sided == pytest.approx(2 * stats.t.sf(2, 3))
    assert prediction_p_value(0.5, np.full(5, 0.5)) == 1.0 and prediction_p_value(0.4, np.full(5, 0.5)) == 0.0
    assert np.isnan(prediction_p_value(0.5, [0.5]))
    with pytest.raises(ValueError, match="permutation_p"):
        ProtocolSettings(permutation_p="bogus")
    with pytest.raises(ValueError, match="permutations >= 10"):
        ProtocolSettings(permutation_p="normal", permutations=5)


def test_progress_bars_count_the_cross_fits_and_the_permutations(capsys):
    data = planted(n=160, layers=2, heads=3, files=30)
    quiet = Protocol(data, ProtocolSettings(n_repeats=1, permutations=10, workers=1, bootstrap_resamples=200))
    shown = Protocol(data, ProtocolSettings(n_repeats=1, permutations=10, workers=1, bootstrap_resamples=200,
                                            progress=True))
    assert capsys.readouterr().err == ""
    fit = shown.run("row")
    np.testing.assert_array_equal(fit.scores, quiet.run("row").scores)
    assert shown.permutation_test(fit).p_value == quiet.permutation_test(quiet.run("row")).p_value
    err = capsys.readouterr().err
    assert "probe protocol: cross-fits" in err and "permutations of row" in err
