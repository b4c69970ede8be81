"""Fixtures: the MLflow store of the training tests."""

from __future__ import annotations

from tests.training.conftest import tracking_uri  # noqa: F401
