"""A damaged scenario set ends in ScenarioSetError naming the file and what to do, never a zip traceback."""

from __future__ import annotations

import json

import numpy as np
import pytest

from apmae.mining.scenario_set import ScenarioSet, ScenarioSetError, source_seq_len
from tests.cache.helpers import random_scenarios
from tests.faults.damage import flipped, truncated


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    scenarios = random_scenarios(12, 16, 100, 99)
    return scenarios, scenarios.save(tmp_path_factory.mktemp("s") / "scenarios.npz")


def test_a_saved_set_reads_back_equal(saved):
    scenarios, path = saved
    assert ScenarioSet.load(path).fingerprint() == scenarios.fingerprint()


@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.5, 0.99])
def test_a_truncated_set_is_refused_with_what_to_do(saved, tmp_path, fraction):
    cut = truncated(saved[1], tmp_path / "cut.npz", fraction)
    with pytest.raises(ScenarioSetError, match=rf"scenario set {cut}: truncated, damaged .*delete it and mine again"):
        ScenarioSet.load(cut)
    with pytest.raises(ScenarioSetError, match="delete it and mine again"):
        source_seq_len(cut)


def test_a_damaged_member_fails_its_crc(saved, tmp_path):
    """A flipped byte inside a column's data fails that zip member's CRC-32."""
    path = saved[1]
    damaged = flipped(path, tmp_path / "damaged.npz", at=path.stat().st_size // 4, n=8)
    with pytest.raises(ScenarioSetError, match=r"Bad CRC-32 .*delete it and mine again"):
        ScenarioSet.load(damaged)


def test_foreign_files_are_refused(saved, tmp_path):
    other = tmp_path / "other.npz"
    np.savez(other, weights=np.arange(3))
    with pytest.raises(ScenarioSetError, match=r"lacks \['header', 'input_ids'"):
        ScenarioSet.load(other)
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"x" * 500)  # numpy would call it pickled data: the message says what it is instead
    with pytest.raises(ScenarioSetError, match="not a zip archive of arrays"):
        ScenarioSet.load(garbage)
    single = tmp_path / "single.npz"
    with single.open("wb") as f:
        np.save(f, np.arange(3))
    with pytest.raises(ScenarioSetError, match="single .npy array"):
        ScenarioSet.load(single)
    with pytest.raises(ScenarioSetError, match="does not exist; mine the scenarios first"):
        ScenarioSet.load(tmp_path / "missing.npz")


def test_a_set_of_a_newer_format_names_both_versions(saved, tmp_path):
    scenarios = saved[0]
    future = tmp_path / "future.npz"
    header = json.dumps({"format_version": 2, "task_names": scenarios.task_names, "meta": scenarios.meta})
    columns = {k: getattr(scenarios, k) for k in ("input_ids", "label_ids", "label_len", "middle_pos", "task",
                                                    "source_id", "span_start", "span_end", "split")}
    np.savez(future, header=np.array(header), **columns)
    with pytest.raises(ScenarioSetError, match="has format 2, this apmae reads 1; it was written by a newer apmae: "
                                               "upgrade apmae"):
        ScenarioSet.load(future)
    broken = tmp_path / "broken_header.npz"
    np.savez(broken, header=np.array("{not json"), **columns)
    with pytest.raises(ScenarioSetError, match="broken_header.npz: truncated, damaged or not a scenario set"):
        ScenarioSet.load(broken)
