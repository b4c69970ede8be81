"""Head-set strategies, the k sweep and importance.csv: exact sets by hand, reproducible random sets, refused files."""

from __future__ import annotations

import numpy as np
import pytest

from apmae.interventions.head_sets import check_importance, check_ks, head_sets, read_importance_csv, sweep_head_sets, sweep_ks
from apmae.common.head_tables import write_head_table

# 2 layers x 3 heads; flat index = layer * 3 + head.
IMPORTANCE = np.array([[0.5, -2.0, 0.1],
                       [3.0, -0.05, 0.0]])


def _heads(strategy, k, importance=IMPORTANCE, seed=None):
    (head_set,) = head_sets(strategy, importance, [k], n_layers=2, n_heads=3, seed=seed)
    return head_set.heads


def test_ranked_strategies_pick_the_heads_by_hand():
    assert _heads("positive", 2) == ((0, 0), (1, 0))  # 3.0 and 0.5
    assert _heads("negative", 2) == ((0, 1), (1, 1))  # -2.0 and -0.05
    assert _heads("neutral", 2) == ((1, 1), (1, 2))  # |0.0| and |-0.05|
    assert _heads("neutral", 3) == ((0, 2), (1, 1), (1, 2))
    assert _heads("positive", 6) == _heads("negative", 6) == tuple((l, h) for l in range(2) for h in range(3))


def test_ties_go_to_the_lower_flat_index_and_sets_are_nested_in_k():
    flat = np.zeros((2, 3))
    assert _heads("positive", 2, flat) == _heads("negative", 2, flat) == _heads("neutral", 2, flat) == ((0, 0), (0, 1))
    for strategy in ("positive", "negative", "neutral", "random"):
        sets = head_sets(strategy, IMPORTANCE, [1, 2, 4, 6], n_layers=2, n_heads=3, seed=4)
        for small, large in zip(sets, sets[1:]):
            assert set(small.heads) < set(large.heads)


def test_random_sets_are_reproducible_from_their_seed():
    a = sweep_head_sets(None, [1, 3, 5], n_layers=4, n_heads=8, strategies=["random"], seeds=[0, 1, 2])
    b = sweep_head_sets(None, [1, 3, 5], n_layers=4, n_heads=8, strategies=["random"], seeds=[0, 1, 2])
    assert a == b and [h.seed for h in a] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert len({h.heads for h in a if h.k == 5}) == 3  # three seeds, three different sets
    perm = np.random.default_rng(1).permutation(32)[:3]
    assert a[4].heads == tuple(sorted(divmod(int(i), 8) for i in perm))
    assert all(len(set(h.heads)) == h.k for h in a)
    # written out: numpy's PCG64 permutation of 32 under seed 1 starts 26, 28, 7, 1, 3, and flat head i is
    # (i // 8, i % 8); seed 1's sets are the first 1, 3 and 5 of that order, so each holds the one before
    assert [h.heads for h in a[3:6]] == [((3, 2),), ((0, 7), (3, 2), (3, 4)),
                                         ((0, 1), (0, 3), (0, 7), (3, 2), (3, 4))]


def test_random_sets_draw_every_head_equally_often():
    """Over 800 seeds each of 32 heads lands in a 4-head set 100 times on average; a biased draw would not."""
    sets = sweep_head_sets(None, [4], n_layers=4, n_heads=8, strategies=["random"], seeds=range(800))
    counts = np.zeros((4, 8))
    for hs in sets:
        for layer, head in hs.heads:
            counts[layer, head] += 1
    assert counts.sum() == 3200
    assert counts.min() >= 65 and counts.max() <= 135  # binomial(800, 1/8): mean 100, sd 9.4; 3.7 sd either side


def test_head_set_forms():
    (hs,) = head_sets("positive", IMPORTANCE, [3], n_layers=2, n_heads=3)
    assert hs.label() == "0.0;0.2;1.0" and hs.as_mapping() == {0: [0, 2], 1: [0]} and hs.seed is None


def test_default_sweep_is_rounded_capped_and_deduplicated():
    assert sweep_ks(32) == [1, 2, 3, 6, 16, 32]  # demo target-a: 4 x 8
    assert sweep_ks(720) == [7, 14, 36, 72, 144, 360, 720]  # StarCoder2-3B: 30 x 24
    assert sweep_ks(8) == [1, 2, 4, 8]
    assert sweep_ks(1) == [1]
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        sweep_ks(32, fractions=[0.0, 0.5])
    assert check_ks([5, 1, 5], 8) == [1, 5]
    with pytest.raises(ValueError, match="1..8"):
        check_ks([9], 8)


def test_strategy_errors():
    with pytest.raises(ValueError, match="needs a head importance"):
        head_sets("positive", None, [1], n_layers=2, n_heads=3)
    with pytest.raises(ValueError, match="unknown strategy"):
        head_sets("top", IMPORTANCE, [1], n_layers=2, n_heads=3)
    with pytest.raises(ValueError, match="needs a seed"):
        head_sets("random", None, [1], n_layers=2, n_heads=3)


def test_the_probe_s_importance_csv_is_read_back(tmp_path):
    values = np.random.default_rng(0).normal(size=(4, 8))
    path = write_head_table(tmp_path / "importance.csv", {"importance": values, "other": -values})
    assert path.read_text().splitlines()[0] == "layer,head,importance,other"
    np.testing.assert_allclose(read_importance_csv(path, n_layers=4, n_heads=8), values, rtol=1e-5)


def _csv(tmp_path, rows, header="layer,head,importance"):
    path = tmp_path / "importance.csv"
    path.write_text("\n".join([header, *(",".join(map(str, r)) for r in rows)]) + "\n")
    return path


def test_importance_files_that_do_not_fit_are_refused(tmp_path):
    full = [(l, h, 0.1 * (l + h)) for l in range(2) for h in range(3)]
    with pytest.raises(ValueError, match=r"names 1 heads outside 2 layers x 3 heads \(2\.0\)"):
        read_importance_csv(_csv(tmp_path, [*full, (2, 0, 1.0)]), n_layers=2, n_heads=3)
    big = write_head_table(tmp_path / "big.csv", {"importance": np.zeros((4, 8))})  # a ranking of another model
    with pytest.raises(ValueError, match="2 layers x 3 heads .*: it was made for another model"):
        read_importance_csv(big, n_layers=2, n_heads=3)
    with pytest.raises(ValueError, match=r"no row for 1 of 6 heads \(\['1.2'\]\)"):
        read_importance_csv(_csv(tmp_path, full[:-1]), n_layers=2, n_heads=3)
    with pytest.raises(ValueError, match=r"lists heads \['0.1'\] more than once"):
        read_importance_csv(_csv(tmp_path, [*full, (0, 1, 5.0)]), n_layers=2, n_heads=3)
    with pytest.raises(ValueError, match="needs columns layer, head and importance"):
        read_importance_csv(_csv(tmp_path, [(0, 0, 1)], header="layer,head,score"), n_layers=2, n_heads=3)
    with pytest.raises(ValueError, match="non-numeric entry"):
        read_importance_csv(_csv(tmp_path, [(0, "x", 1)]), n_layers=2, n_heads=3)
    with pytest.raises(ValueError, match="non-finite"):
        read_importance_csv(_csv(tmp_path, [*full[:-1], (1, 2, "nan")]), n_layers=2, n_heads=3)
    with pytest.raises(ValueError, match="cannot read head table"):
        read_importance_csv(tmp_path / "none.csv", n_layers=2, n_heads=3)


def test_importance_arrays_of_the_wrong_shape_are_refused():
    import torch

    with pytest.raises(ValueError, match=r"shape \(3, 2\) but the target has 2 layers x 3 heads"):
        check_importance(np.zeros((3, 2)), n_layers=2, n_heads=3)
    found = check_importance(torch.tensor(IMPORTANCE, requires_grad=True), n_layers=2, n_heads=3)
    np.testing.assert_allclose(found, IMPORTANCE, rtol=1e-6)
