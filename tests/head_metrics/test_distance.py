"""WAAD, FAI and the local/global rule on hand-made patterns with hand-computed answers."""

from __future__ import annotations

import numpy as np
import pytest

from apmae.head_metrics.distance import (anchor_positions, fai, gini, local_heads, scenario_distance, top_share,
                                         waad)

HAND = np.array([[1.0, 0.0, 0.0, 0.0],
                 [0.5, 0.5, 0.0, 0.0],
                 [0.2, 0.3, 0.5, 0.0],
                 [0.1, 0.2, 0.3, 0.4]])


def test_previous_token_pattern_has_waad_one():
    s = 12
    pattern = np.zeros((s, s))
    pattern[0, 0] = 1.0
    pattern[np.arange(1, s), np.arange(s - 1)] = 1.0
    assert waad(pattern, window=10).tolist() == [0.0] + [1.0] * (s - 1)


def test_first_token_sink_has_waad_min_t_w():
    s, w = 9, 3
    pattern = np.zeros((2, s, s))
    pattern[:, :, 0] = 1.0
    assert waad(pattern, window=w)[1].tolist() == [0, 1, 2, 3, 3, 3, 3, 3, 3]


def test_hand_pattern():
    # FAI_0 = (0.5 + 0.2 + 0.1) / 3, FAI_1 = (0.3 + 0.2) / 2, FAI_2 = 0.3 / 1; no FAI for the last key.
    assert fai(HAND) == pytest.approx([0.8 / 3, 0.25, 0.3])
    # W = 2: t=1 0.5*1; t=2 0.2*2 + 0.3*1; t=3 0.1*2 + 0.2*2 + 0.3*1.
    assert waad(HAND, window=2) == pytest.approx([0.0, 0.5, 0.7, 0.9])
    summary = scenario_distance(HAND[None, None], window=2)
    assert summary.mean_waad[0, 0] == pytest.approx((0.5 + 0.7 + 0.9) / 3)
    assert summary.fai.shape == (1, 1, 3)


def test_concentration_measures():
    assert gini(np.array([0.0, 0.0, 0.0, 1.0])) == pytest.approx(0.75)  # (n - 1) / n: one key takes all
    assert gini(np.full(5, 0.2)) == pytest.approx(0.0)
    assert gini(np.zeros(3)) == 0.0
    values = np.ones(40)
    values[[3, 7]] = 9.0
    assert top_share(values, 0.05) == pytest.approx(18 / 56)  # ceil(0.05 * 40) = 2 keys


def test_local_rule_is_half_the_window():
    mean = np.array([[1.0, 6.0], [5.0, 5.01]])
    assert local_heads(mean, window=10).tolist() == [[True, False], [True, False]]
    assert local_heads(mean, window=10, local_threshold=0.1).tolist() == [[True, False], [False, False]]


def test_anchor_positions_average_the_chosen_heads_and_skip_the_sink():
    f = np.array([[[0.9, 0.1, 0.4, 0.2], [0.9, 0.3, 0.2, 0.0]],
                  [[0.0, 0.8, 0.8, 0.8], [0.0, 0.0, 0.0, 0.0]]])  # (L=2, H=2, S-1=4)
    heads = np.array([[True, True], [False, False]])
    positions, scores = anchor_positions(f, heads, top_k=2)
    assert positions.tolist() == [2, 1]  # means over the two heads: 0.9 (key 0, skipped), 0.2, 0.3, 0.1
    assert scores == pytest.approx([0.3, 0.2])
    positions, _ = anchor_positions(f, np.array([[False, False], [True, False]]), top_k=3, first_position=0)
    assert positions.tolist() == [1, 2, 3]  # ties go to the earlier key


@pytest.mark.parametrize("window", [0, -3, 2.5])
def test_bad_window_is_refused(window):
    with pytest.raises(ValueError, match="window"):
        waad(HAND, window=window)
    with pytest.raises(ValueError, match="window"):
        local_heads(np.ones((1, 1)), window=window)


def test_no_heads_for_anchors_is_refused():
    with pytest.raises(ValueError, match="at least one head"):
        anchor_positions(np.ones((1, 2, 3)), np.zeros((1, 2), dtype=bool))
