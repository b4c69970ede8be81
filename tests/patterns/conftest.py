"""One planted-families cache and its encodings, shared by the pattern tests (read-only)."""

from __future__ import annotations

import pytest

from tests.patterns.families import random_encoder_encodings, write_family_cache


@pytest.fixture(scope="session")
def family_data(tmp_path_factory):
    """(cache, encodings, family) of 150 scenarios, 2 x 2 heads; (0, 0) and (1, 1) carry the families."""
    d = tmp_path_factory.mktemp("families")
    cache, family = write_family_cache(d)
    return cache, random_encoder_encodings(cache, d / "families.enc.h5"), family
