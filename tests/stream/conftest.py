"""Fixtures: the cache tests' micro target and scenarios, and a micro AP-MAE for their S."""

from __future__ import annotations

import pytest

from tests.cache.conftest import SEQ_LEN, scenarios, scenarios_path, target, target_b_dir, target_dir  # noqa: F401

MICRO_APMAE = dict(seq_len=SEQ_LEN, patch_size=8, enc_dim=16, enc_depth=1, enc_heads=2, enc_mlp=32,
                   dec_dim=16, dec_depth=1, dec_heads=2, dec_mlp=32)


def micro_apmae(seed: int = 0):
    """A random-init AP-MAE on S = 24 images (3 x 3 grid of 8-pixel patches, 6 triangular tokens)."""
    import torch

    from apmae.model.net import APMAE, APMAEConfig

    torch.manual_seed(seed)
    return APMAE(APMAEConfig(**MICRO_APMAE)).eval()


@pytest.fixture(scope="session")
def net():
    return micro_apmae()


@pytest.fixture(scope="session")
def encoder_dir(net, tmp_path_factory):
    return net.save(tmp_path_factory.mktemp("apmae"))
