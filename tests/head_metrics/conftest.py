"""Fixtures: the cache tests' micro StarCoder2 targets and scenarios, and their attention caches."""

from __future__ import annotations

import pytest

from tests.cache.conftest import scenarios, scenarios_path, target, target_b_dir, target_dir  # noqa: F401
from tests.training.conftest import tracking_uri  # noqa: F401


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory, target_dir, target_b_dir, scenarios_path):  # noqa: F811
    """Caches of both micro targets over the same scenarios."""
    from apmae.datamodules.attention_cache import AttentionCacheDataModule
    from apmae.cache.settings import ExtractionSettings

    out = tmp_path_factory.mktemp("caches")
    AttentionCacheDataModule(target=str(target_dir), scenarios=str(scenarios_path), cache_dir=str(out),
                             extra_targets=[str(target_b_dir)],
                             extraction=ExtractionSettings(device="cpu", progress=False)).prepare_data()
    return out
