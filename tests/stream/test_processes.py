"""Streaming in real processes: a SIGKILL mid-run resumes to the same file; two ranks equal one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from apmae.cache.store import shard_path
from apmae.encodings.store import COLUMNS, EncodingSet
from apmae.encodings.stream import stream_encodings
from tests.stream.test_stream import assert_same_encodings

ROOT = Path(__file__).resolve().parents[2]
# argv: target dir, scenarios .npz, encoder dir, output path, rank, world size, batch size
_CHILD = """
import sys
from apmae.model.net import APMAE
from apmae.mining.scenario_set import ScenarioSet
from apmae.encodings.stream import stream_encodings
from apmae.target.access import load_target

target = load_target(sys.argv[1], device="cpu")
rank, world, batch = (int(a) for a in sys.argv[5:8])
stream_encodings(target, ScenarioSet.load(sys.argv[2]), APMAE.load(sys.argv[3]), sys.argv[4],
                 {"batch_size": batch, "progress": False}, rank=rank, world_size=world,
                 on_batch=lambda n: print(n, flush=True))
"""


def _child(target_dir, scenarios_path, encoder_dir, path, rank=0, world=1, batch=2) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    args = [str(a) for a in (target_dir, scenarios_path, encoder_dir, path, rank, world, batch)]
    return subprocess.Popen([sys.executable, "-c", _CHILD, *args], stdout=subprocess.PIPE, text=True, env=env)


@pytest.mark.slow
def test_sigkill_mid_stream_then_resume(target, target_dir, scenarios, scenarios_path, net, encoder_dir, tmp_path):
    path = shard_path(tmp_path, "killed", 0)
    child = _child(target_dir, scenarios_path, encoder_dir, path)
    for line in child.stdout:
        if int(line) >= 7:  # the child keeps computing and writing while we read: the kill lands anywhere
            child.send_signal(signal.SIGKILL)
            break
    child.wait()
    assert child.returncode == -signal.SIGKILL
    committed = EncodingSet(path, require_complete=False).committed
    assert 8 <= committed < len(scenarios) and committed % 2 == 0
    resumed = stream_encodings(target, scenarios, net, path, {"batch_size": 2, "progress": False})
    assert resumed.written == len(scenarios) - committed
    full = stream_encodings(target, scenarios, net, shard_path(tmp_path, "full", 0),
                            {"batch_size": 2, "progress": False})
    got, want = EncodingSet(path), EncodingSet(full.path)
    for name in COLUMNS:
        np.testing.assert_array_equal(got.columns[name], want.columns[name], err_msg=name)
    for kind in ("cls", "mean", "stats"):
        np.testing.assert_array_equal(got.array(kind), want.array(kind), err_msg=kind)


@pytest.mark.slow
def test_two_rank_processes_give_the_contents_of_one(target, scenarios, scenarios_path, net, target_dir,
                                                     encoder_dir, tmp_path):
    ranks = [_child(target_dir, scenarios_path, encoder_dir, shard_path(tmp_path / "two", "s", rank), rank, 2, 1)
             for rank in (0, 1)]  # side by side, like DDP ranks; batch 1: the same batches as one rank's
    for child in ranks:
        child.communicate()
        assert child.returncode == 0
    single = stream_encodings(target, scenarios, net, shard_path(tmp_path / "one", "s", 0),
                              {"batch_size": 1, "progress": False})
    merged = EncodingSet(sorted((tmp_path / "two").glob("s.rank*.h5")))
    assert [len(EncodingSet(p, require_complete=False)) for p in merged.paths] == [15, 15]
    assert_same_encodings(merged, EncodingSet(single.path))
    for kind in ("cls", "mean", "stats"):
        np.testing.assert_array_equal(merged.array(kind), EncodingSet(single.path).array(kind), err_msg=kind)
