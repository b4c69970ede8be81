"""The claims report's verdicts follow from the numbers by its written rules."""

from __future__ import annotations

import math

import pytest

from apmae.common.stats import holm, wilson_interval
from apmae.study.claims import (CONTRADICTED, INCONCLUSIVE, SUPPORTED, detectable, interval_verdict,
                                interventions_claim, patterns_claim, probe_claim, reconstruction_claims, to_html)


@pytest.mark.parametrize("low, high, claimed, verdict", [
    (0.5, 0.9, "below", SUPPORTED), (1.1, 1.3, "below", CONTRADICTED), (0.9, 1.1, "below", INCONCLUSIVE),
    (0.01, 0.05, "above", SUPPORTED), (-0.05, -0.01, "above", CONTRADICTED), (-0.01, 0.02, "above", INCONCLUSIVE),
    (float("nan"), 0.5, "below", INCONCLUSIVE)])
def test_interval_verdicts(low, high, claimed, verdict):
    null = 1.0 if claimed == "below" else 0.0
    assert interval_verdict(low, high, null, claimed=claimed) == verdict


def test_detectable_effect_is_2_8_standard_errors():
    assert detectable(-1.96, 1.96) == pytest.approx(2.8016, abs=1e-3)


def test_holm_and_wilson_by_hand():
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert math.isnan(holm([float("nan"), 0.01])[0]) and holm([float("nan"), 0.01])[1] == pytest.approx(0.01)
    share = wilson_interval(50, 100)
    assert share.low == pytest.approx(0.4038, abs=1e-3) and share.high == pytest.approx(0.5962, abs=1e-3)


def _apmae(metrics):
    return {"apmae": {"summary": {"train_target": "m", "metrics": metrics}}}


def test_reconstruction_needs_both_baselines_beaten_and_reads_the_second_model():
    metrics = {"val/m/mse": 1.0, "val/m/mse_over_baseline": 0.5, "val/m/mse_over_baseline/ci_low": 0.45,
               "val/m/mse_over_baseline/ci_high": 0.55, "val/m/mse_over_neighbour": 0.95,
               "val/m/mse_over_neighbour/ci_low": 0.9, "val/m/mse_over_neighbour/ci_high": 1.02,
               "val/x/mse": 1.0, "val/x/mse_over_baseline": 0.6, "val/x/mse_over_baseline/ci_low": 0.55,
               "val/x/mse_over_baseline/ci_high": 0.65, "val/x/mse_over_neighbour": 1.2,
               "val/x/mse_over_neighbour/ci_low": 1.1, "val/x/mse_over_neighbour/ci_high": 1.3}
    first, second = reconstruction_claims(_apmae(metrics))
    assert first.verdict == INCONCLUSIVE and second.verdict == CONTRADICTED
    assert "on x (never trained on)" in second.measured[0]
    metrics["val/m/mse_over_neighbour/ci_high"] = 0.99
    assert reconstruction_claims(_apmae(metrics))[0].verdict == SUPPORTED


def test_recurring_patterns_need_most_heads_and_stable_families():
    result = {"patterns": {"multi_beyond_control": 200, "heads": 270, "stability_mean": 0.7, "scenarios": 900,
                           "lines": []}}
    assert patterns_claim(result).verdict == SUPPORTED
    result["patterns"]["stability_mean"] = 0.3
    assert patterns_claim(result).verdict == INCONCLUSIVE
    result["patterns"]["multi_beyond_control"] = 60
    assert patterns_claim(result).verdict == CONTRADICTED


def _row(name, auroc, *, p_holm=float("nan"), p=None, delta=float("nan"), delta_ci=None):
    return {"name": name, "auroc": auroc, "ci": [auroc - 0.05, auroc + 0.05], "p_holm": p_holm, "p_permutation": p,
            "permutations": None if p is None else 40, "delta": delta, "delta_ci": delta_ci,
            "delta_p": 0.01 if delta_ci else float("nan"), "n_needed": float("nan")}


def _protocol(permutation_holm, delta_ci):
    rows = [_row("apmae*", 0.7, p_holm=permutation_holm, p=permutation_holm),
            _row("confidence+task+apmae*", 0.8, p_holm=0.01, delta=sum(delta_ci) / 2, delta_ci=delta_ci),
            _row("task", 0.75), _row("confidence+task", 0.78)]
    return {"protocol": {"numbers": {"rows": rows, "n": 1000, "n_correct": 300}}}


def test_the_probe_claim_needs_the_permutation_test_and_the_gain():
    assert probe_claim(_protocol(0.001, [0.01, 0.03])).verdict == SUPPORTED
    assert probe_claim(_protocol(0.2, [0.01, 0.03])).verdict == INCONCLUSIVE
    assert probe_claim(_protocol(0.001, [-0.01, 0.03])).verdict == INCONCLUSIVE
    assert probe_claim(_protocol(0.2, [-0.03, -0.01])).verdict == CONTRADICTED
    assert "beside it: task 0.750" in "\n".join(probe_claim(_protocol(0.001, [0.01, 0.03])).measured)


def _setting(strategy, k, accuracy, p_mcnemar, random_mean, p_vs_random):
    return {"strategy": strategy, "k": k, "accuracy": accuracy, "delta": accuracy - 0.5, "i2c": 1, "c2i": 20,
            "p_mcnemar": p_mcnemar, "p_bh": p_mcnemar, "p_rank": 0.33, "random_mean": random_mean,
            "random_sd": 0.01, "n_random": 5, "p_vs_random": p_vs_random}


def _interventions(*settings):
    return {"interventions": {"n": 600, "baseline_accuracy": 0.5, "random_sets": 5, "settings": list(settings),
                              "tasks_tested": ["a"], "tasks_too_small": []}}


def test_interventions_need_a_ranked_set_that_raises_accuracy_beyond_the_random_sets():
    raise_ = _setting("negative", 3, 0.60, 0.001, 0.49, 0.001)
    quiet = _setting("positive", 3, 0.49, 0.9, 0.49, 0.9)
    assert interventions_claim(_interventions(raise_, quiet)).verdict == SUPPORTED
    weak = _setting("negative", 3, 0.60, 0.001, 0.49, 0.03)  # Holm over the two ranked sets lifts 0.03 to 0.06
    assert interventions_claim(_interventions(weak, quiet)).verdict == INCONCLUSIVE
    within = _setting("negative", 3, 0.60, 0.001, 0.59, 0.5)  # raises it, but so do random heads
    assert interventions_claim(_interventions(within, quiet)).verdict == INCONCLUSIVE
    drops = [_setting(s, k, 0.40, 0.001, 0.49, 0.001) for s in ("negative", "positive") for k in (3, 14)]
    assert interventions_claim(_interventions(*drops, _setting("neutral", 3, 0.5, 1.0, 0.49, 0.9))).verdict \
        == CONTRADICTED
    lines = "\n".join(interventions_claim(_interventions(raise_, quiet)).measured)
    assert "negative k=3: accuracy 0.600 (+0.100" in lines


def test_the_html_page_renders_tables_lists_and_code():
    page = to_html("# T\n\n| a | b |\n|---|---|\n| **x** | `y` |\n\n- one\n\n```\nraw <b>\n```\n")
    assert "<h1>T</h1>" in page and "<td><b>x</b></td><td><code>y</code></td>" in page
    assert "<li>one</li>" in page and "raw &lt;b&gt;" in page
