"""Metrics reduced over three CPU processes (gloo, uneven shares of the scenarios) equal a single process's."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.killing import ROOT
from tests.probe import fit_run
from tests.training.ddp_validate import N_VAL, prepare, validate


@pytest.mark.slow  # three processes that import Lightning: ~20 s each kind on two cores
@pytest.mark.parametrize("kind", ["apmae", "probe"])
def test_three_rank_validation_equals_one_process(kind, tmp_path):
    prepare(kind, tmp_path)
    single = validate(kind, tmp_path, 1)
    out = tmp_path / "ddp.json"
    proc = subprocess.run([sys.executable, "-m", "tests.training.ddp_validate", kind, str(tmp_path), "3", str(out)],
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    reduced = json.loads(out.read_text())
    if kind == "apmae":
        assert N_VAL % 3 and {"val/loss", "val/synth-a/mse", "val/synth-a/baseline_mse",
                              "val/synth-b/neighbour_mse"} <= set(single)
    else:
        data = fit_run.data(tmp_path)
        data.setup("validate")
        n_val = len(data.dataset("synth", "val"))
        assert n_val % 3 and {"val/loss", "val/probe/all/balanced_accuracy", "val/probe/all/auroc",
                              "val/confidence/all/accuracy", "val/stats_probe/all/balanced_accuracy"} <= set(single)
    assert reduced.keys() == single.keys()
    for name, value in single.items():
        assert reduced[name] == pytest.approx(value, rel=1e-5, abs=1e-7), name
