"""Stage records: a finished stage is reused under the same key; a killed one adds its time to the next attempt."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from apmae.study.stages import StageBook, stage_key


def test_a_finished_stage_is_reused_and_a_changed_input_reruns_it_and_the_next(tmp_path):
    calls = []
    book = StageBook(tmp_path)
    assert book.run("a", {"x": 1}, lambda: calls.append("a") or {"v": 1}) == {"v": 1}
    assert book.run("b", {}, lambda: calls.append("b") or {"w": [1, 2]}) == {"w": [1, 2]}
    again = StageBook(tmp_path)
    assert again.run("a", {"x": 1}, lambda: calls.append("a2") or {}) == {"v": 1}
    assert again.run("b", {}, lambda: calls.append("b2") or {}) == {"w": [1, 2]}
    assert calls == ["a", "b"] and again.reused == ["a", "b"]
    changed = StageBook(tmp_path)
    changed.run("a", {"x": 2}, lambda: calls.append("a3") or {"v": 2})
    changed.run("b", {}, lambda: calls.append("b3") or {"w": []})  # its predecessor's key changed
    assert calls[-2:] == ["a3", "b3"]
    assert stage_key("k", {"a": 1, "b": 2}) == stage_key("k", {"b": 2, "a": 1}) != stage_key("j", {"a": 1, "b": 2})


CHILD = """
import sys, time
from apmae.study import stages
stages.HEARTBEAT = 0.1
book = stages.StageBook(sys.argv[1])
book.run("slow", {}, lambda: time.sleep(float(sys.argv[2])) or {"done": True})
"""


def test_a_stage_killed_midway_adds_its_time_to_the_attempt_that_finishes(tmp_path):
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path), "60"], start_new_session=True)
    running = tmp_path / "stages" / "slow.running.json"
    deadline = time.time() + 60
    while time.time() < deadline and not (running.exists() and json.loads(running.read_text())["seconds"] > 1.0):
        time.sleep(0.1)
    os.killpg(child.pid, signal.SIGKILL)
    child.wait()
    killed = json.loads(running.read_text())["seconds"]
    assert killed > 1.0 and not (tmp_path / "stages" / "slow.json").exists()
    subprocess.run([sys.executable, "-c", CHILD, str(tmp_path), "0.5"], check=True)
    record = json.loads((tmp_path / "stages" / "slow.json").read_text())
    assert record["attempts"] == 2 and record["seconds_before_restart"] == pytest.approx(killed)
    assert record["seconds"] >= killed + 0.5 and not running.exists()
