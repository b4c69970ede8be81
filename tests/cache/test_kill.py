"""A real SIGKILL during extraction: the resumed cache equals an uninterrupted one (of every head or sampled)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from apmae.cache.settings import ExtractionSettings
from apmae.cache.store import AttentionCache, shard_path
from apmae.cache.extract import extract

_CHILD = """
import json
import sys
from apmae.cache.extract import extract
from apmae.mining.scenario_set import ScenarioSet
from apmae.target.access import load_target

target = load_target(sys.argv[1], device="cpu")
scenarios = ScenarioSet.load(sys.argv[2])
extract(target, scenarios, sys.argv[3], json.loads(sys.argv[4]), on_batch=lambda n: print(n, flush=True))
"""


@pytest.mark.slow
@pytest.mark.parametrize("kill_after, heads", [(7, "all"), (7, "layerwise:0.25")])
def test_sigkill_mid_run_then_resume(kill_after, heads, target, target_dir, scenarios, scenarios_path, tmp_path):
    path = shard_path(tmp_path, "killed", 0)
    settings = {"batch_size": 2, "progress": False, "heads": heads, "head_seed": 5}
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    child = subprocess.Popen([sys.executable, "-c", _CHILD, str(target_dir), str(scenarios_path), str(path),
                              json.dumps(settings)], stdout=subprocess.PIPE, text=True, env=env)
    for line in child.stdout:
        if int(line) >= kill_after:  # the child keeps writing while we read: the kill lands anywhere
            child.send_signal(signal.SIGKILL)
            break
    child.wait()
    assert child.returncode == -signal.SIGKILL
    resumed = extract(target, scenarios, path, ExtractionSettings(**settings))
    assert resumed.written < len(scenarios)
    full_path = shard_path(tmp_path, "full", 0)
    extract(target, scenarios, full_path, ExtractionSettings(**settings))
    got, want = AttentionCache(path), AttentionCache(full_path)
    for name in ("scenario_index", "input_ids", "prediction", "correct", "loss", "task", "source_id"):
        np.testing.assert_array_equal(getattr(got, name), getattr(want, name), err_msg=name)
    for i in range(len(want)):
        np.testing.assert_array_equal(got.stored_heads(i), want.stored_heads(i))
        for layer, stored in enumerate(want.stored_heads(i)):
            for head in stored:
                np.testing.assert_array_equal(got.pattern(i, layer, head), want.pattern(i, layer, head))
