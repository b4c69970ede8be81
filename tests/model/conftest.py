"""Fixtures for the AP-MAE model tests: small configs and synthetic causal attention images."""

from __future__ import annotations

import pytest
import torch

from apmae.model.net import APMAE, APMAEConfig


def causal_patterns(batch: int, seq_len: int, *, seed: int = 0) -> torch.Tensor:
    """(B, 1, S, S) row-stochastic causal attention patterns, upper triangle exactly 0."""
    gen = torch.Generator().manual_seed(seed)
    scores = torch.randn(batch, 1, seq_len, seq_len, generator=gen) * 2.0
    # a recency bias, so the images have structure a model can learn
    pos = torch.arange(seq_len)
    scores = scores - 0.3 * (pos[:, None] - pos[None, :]).clamp_min(0).float()
    causal = torch.ones(seq_len, seq_len, dtype=torch.bool).tril()
    return scores.masked_fill(~causal, float("-inf")).softmax(dim=-1)


def small_config(**overrides) -> APMAEConfig:
    """S = 64, P = 8: 36 triangular patches of 64 pixels, a few thousand parameters per block."""
    base = dict(seq_len=64, patch_size=8, enc_dim=32, enc_depth=2, enc_heads=4, enc_mlp=64,
                dec_dim=32, dec_depth=1, dec_heads=4, dec_mlp=64)
    return APMAEConfig.preset("tiny", **{**base, **overrides})


@pytest.fixture(autouse=True)
def one_thread():
    """These models are tiny: a second intra-op thread only adds synchronisation, and on a
    busy machine its spin-waiting makes a step 10-30x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def small_model() -> APMAE:
    torch.manual_seed(0)
    return APMAE(small_config()).eval()
