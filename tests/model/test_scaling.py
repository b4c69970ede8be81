"""Attention scalers on hand-made inputs, degenerate images and batches."""

from __future__ import annotations

import math

import pytest
import torch

from apmae.model.scaling import SCALERS, get_scaler, scale

# A 3-token causal pattern: rows sum to 1, upper triangle is structurally zero.
PATTERN = torch.tensor([
    [1.0, 0.0, 0.0],
    [0.5, 0.5, 0.0],
    [0.25, 0.25, 0.5],
])
LOG_HALF, LOG_QUARTER = math.log(0.5), math.log(0.25)


def test_log_on_a_hand_made_pattern() -> None:
    expected = torch.tensor([
        [0.0, 0.0, 0.0],
        [LOG_HALF, LOG_HALF, 0.0],
        [LOG_QUARTER, LOG_QUARTER, LOG_HALF],
    ])
    torch.testing.assert_close(scale(PATTERN, "log"), expected)


def test_log_normalize_on_a_hand_made_pattern() -> None:
    # logs span [log 1/4, log 1] = [-1.386, 0]: 1 -> 1, 1/2 -> 0.5, 1/4 -> 0, structural zeros -> 0
    expected = torch.tensor([
        [1.0, 0.0, 0.0],
        [0.5, 0.5, 0.0],
        [0.0, 0.0, 0.5],
    ])
    torch.testing.assert_close(scale(PATTERN, "log_normalize"), expected)


def test_log_standardize_on_a_hand_made_pattern() -> None:
    logs = torch.tensor([0.0, LOG_HALF, LOG_HALF, LOG_QUARTER, LOG_QUARTER, LOG_HALF])
    z = (logs - logs.mean()) / logs.std(unbiased=False)
    expected = torch.tensor([
        [z[0], 0.0, 0.0],
        [z[1], z[2], 0.0],
        [z[3], z[4], z[5]],
    ])
    out = scale(PATTERN, "log_standardize")
    torch.testing.assert_close(out, expected)
    positive = PATTERN > 0
    torch.testing.assert_close(out[positive].mean(), torch.tensor(0.0), atol=1e-6, rtol=0)
    torch.testing.assert_close(out[positive].std(unbiased=False), torch.tensor(1.0))


def test_none_is_identity_on_finite_input() -> None:
    assert torch.equal(scale(PATTERN, "none"), PATTERN)


DEGENERATE = {
    "all zeros": torch.zeros(4, 4),
    "one entry": torch.zeros(4, 4).index_put_((torch.tensor([2]), torch.tensor([1])), torch.tensor([0.3])),
    "zero row": torch.tensor([[1.0, 0, 0], [0, 0, 0], [0.2, 0.3, 0.5]]),
    "all equal": torch.ones(3, 3).tril(),
    "non-finite": torch.tensor([[1.0, 0, 0], [float("nan"), 0.5, 0], [float("inf"), -float("inf"), 1e-45]]),
    "tiny values": torch.tensor([[1.0, 0], [1e-38, 1.0]]),
}


@pytest.mark.parametrize("name", sorted(SCALERS))
@pytest.mark.parametrize("case", sorted(DEGENERATE))
def test_no_nan_or_inf_ever(name: str, case: str) -> None:
    out = scale(DEGENERATE[case], name)
    assert out.shape == DEGENERATE[case].shape
    assert bool(torch.isfinite(out).all())


def test_degenerate_log_normalize_values() -> None:
    assert torch.equal(scale(DEGENERATE["all zeros"], "log_normalize"), torch.zeros(4, 4))
    single = scale(DEGENERATE["one entry"], "log_normalize")
    assert single[2, 1] == 1.0 and single.sum() == 1.0  # the only entry is the maximum
    zero_row = scale(DEGENERATE["zero row"], "log_normalize")
    assert torch.equal(zero_row[1], torch.zeros(3))
    assert zero_row[0, 0] == 1.0 and zero_row[2, 0] == 0.0  # max 1 -> 1, min 0.2 -> 0
    assert torch.equal(scale(DEGENERATE["all equal"], "log_normalize"), torch.ones(3, 3).tril())
    nonfinite = scale(DEGENERATE["non-finite"], "log_normalize")
    assert nonfinite[1, 0] == 0 and nonfinite[2, 0] == 0 and nonfinite[2, 1] == 0
    assert nonfinite[0, 0] == 1.0 and nonfinite[2, 2] == 0.0 and 0 < nonfinite[1, 1] < 1


@pytest.mark.parametrize("name", sorted(SCALERS))
def test_batched_equals_one_image_at_a_time(name: str) -> None:
    gen = torch.Generator().manual_seed(0)
    scores = torch.randn(2, 3, 8, 8, generator=gen).masked_fill(~torch.ones(8, 8, dtype=torch.bool).tril(), -1e9)
    images = scores.softmax(-1).tril()
    images[1, 2] = 0.0  # one empty image inside the batch
    batched = scale(images, name)
    for i in range(2):
        for j in range(3):
            torch.testing.assert_close(batched[i, j], scale(images[i, j], name), rtol=0, atol=1e-6)


def test_log_normalize_range_and_structural_zeros() -> None:
    gen = torch.Generator().manual_seed(1)
    scores = torch.randn(5, 1, 16, 16, generator=gen).masked_fill(~torch.ones(16, 16, dtype=torch.bool).tril(), -1e9)
    out = scale(scores.softmax(-1).tril(), "log_normalize")
    assert float(out.min()) == 0.0 and float(out.max()) == 1.0
    assert torch.equal(out.triu(diagonal=1), torch.zeros_like(out))


def test_registry_errors_and_integer_input() -> None:
    assert get_scaler("log_normalize") is SCALERS["log_normalize"]
    with pytest.raises(ValueError, match="choose one of"):
        get_scaler("minmax")
    assert scale(torch.tensor([[1, 0], [1, 1]]), "log").dtype == torch.float32
    with pytest.raises(ValueError, match=r"\(\.\.\., S, S\)"):
        scale(torch.ones(3), "log")
