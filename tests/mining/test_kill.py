"""A real SIGKILL while scenarios are mined or written: no half set is left, and a rerun equals an uninterrupted one.

Mining has nothing to resume: a set is written under a temporary name and renamed into place, so
after a kill the set is either whole under its name or not there, and the next run mines again.
"""

from __future__ import annotations

import pytest

from apmae.mining.scenario_set import ScenarioSet
from apmae.datamodules.java_scenarios import JavaScenarioDataModule
from tests.killing import kill_when, start

_MINE = """
import sys
import time
import numpy as np
from apmae.datamodules.java_scenarios import JavaScenarioDataModule

if sys.argv[4] == "stall":  # the kill must land inside the write: write the start of a zip, then wait
    def stalled_savez(file, **arrays):
        with open(file, "wb") as f:
            f.write(b"PK\\\\x03\\\\x04" + bytes(1000))
            f.flush()
            print("writing", flush=True)
            time.sleep(60)
    np.savez = stalled_savez
print("mining", flush=True)
JavaScenarioDataModule(**eval(sys.argv[1]), tokenizer=sys.argv[2], cache_dir=sys.argv[3]).prepare_data()
"""


@pytest.fixture
def mining(java_dir, tokenizer_dir):
    return dict(sources=str(java_dir), mining=dict(seq_len=64, n_per_task=8, tasks=["identifiers", "eol", "noise"],
                                                   max_per_file=2, splits=(0.6, 0.2, 0.2), seed=0),
                progress=False), str(tokenizer_dir)


@pytest.mark.slow  # a child process: ~5 s on two cores
@pytest.mark.parametrize("when", ["mining", "writing"])
def test_sigkill_while_mining_or_writing_leaves_no_set_and_a_rerun_equals_an_uninterrupted_one(mining, tmp_path,
                                                                                               when):
    settings, tokenizer = mining
    killed = tmp_path / "killed"
    kill_when(start(_MINE, repr(settings), tokenizer, str(killed), "stall" if when == "writing" else "run"),
              lambda line: line == when)
    module = JavaScenarioDataModule(**settings, tokenizer=tokenizer, cache_dir=str(killed))
    assert not module.scenario_path.exists()  # a set is either whole under its name or not there
    if when == "writing":
        assert [p.name for p in killed.iterdir()] == [module.scenario_path.name + ".tmp.npz"]  # the cut-short write
    module.prepare_data()  # mines again; the leftover temporary file is overwritten
    whole = JavaScenarioDataModule(**settings, tokenizer=tokenizer, cache_dir=str(tmp_path / "whole"))
    whole.prepare_data()
    resumed, uninterrupted = ScenarioSet.load(module.scenario_path), ScenarioSet.load(whole.scenario_path)
    assert len(uninterrupted) > 0 and resumed.fingerprint() == uninterrupted.fingerprint()
