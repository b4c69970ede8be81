"""Scenario sets extraction cannot use are refused before the target runs, naming the rows."""

from __future__ import annotations

import numpy as np
import pytest

from apmae.cache.settings import ExtractionSettings
from apmae.cache.extract import extract
from apmae.target.access import wrap_model
from tests.cache.helpers import micro_starcoder2, random_scenarios


@pytest.fixture(scope="module")
def target():
    return wrap_model(micro_starcoder2(100), name="micro")


def test_an_empty_set_is_refused(target, tmp_path):
    scenarios = random_scenarios(6, 16, 100, 99).subset(np.arange(0))
    with pytest.raises(ValueError, match="the scenario set is empty; mine scenarios first"):
        extract(target, scenarios, tmp_path / "c.rank0.h5", ExtractionSettings(progress=False))
    assert not (tmp_path / "c.rank0.h5").exists()


def test_rows_without_a_label_are_named(target, tmp_path):
    scenarios = random_scenarios(6, 16, 100, 99)
    scenarios.label_len[[2, 4]] = 0
    with pytest.raises(ValueError, match=r"no label tokens \(label_len < 1\): rows \[2, 4\]; the first-token"):
        extract(target, scenarios, tmp_path / "c.rank0.h5", ExtractionSettings(progress=False))
    assert not (tmp_path / "c.rank0.h5").exists()


@pytest.mark.parametrize("position", [-1, 16, 99])
def test_a_scored_position_outside_the_prompt_is_named(target, tmp_path, position):
    scenarios = random_scenarios(6, 16, 100, 99)
    scenarios.middle_pos[3] = position
    with pytest.raises(ValueError, match=rf"middle_pos lies outside the prompts \(0..15\): rows \[3\] have "
                                         rf"\[{position}\]; the scenario set is inconsistent"):
        extract(target, scenarios, tmp_path / "c.rank0.h5", ExtractionSettings(progress=False))
