"""A probe fit SIGKILLed mid-run and resumed from last.ckpt ends at the weights of an uninterrupted fit."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch

from apmae.callbacks.resumable_rng import ResumableRNG
from tests.probe.fit_run import fit, prepare

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow  # a child process that imports Lightning: ~15 s on two cores
def test_sigkill_mid_fit_then_resume_from_last_ckpt_equals_an_uninterrupted_fit(tmp_path):
    prepare(tmp_path)
    child = subprocess.Popen([sys.executable, "-m", "tests.probe.fit_run", str(tmp_path), str(tmp_path / "killed")],
                             stdout=subprocess.PIPE, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    for line in child.stdout:
        if int(line) >= 1:  # two epochs done; the kill lands while later epochs train, validate or checkpoint
            child.send_signal(signal.SIGKILL)
            break
    child.wait()
    assert child.returncode == -signal.SIGKILL
    last = tmp_path / "killed" / "last.ckpt"
    resumed_from = torch.load(last, map_location="cpu", weights_only=False)["epoch"]
    assert resumed_from < 5  # the fit really was cut short
    resumed = fit(tmp_path, tmp_path / "killed", ckpt_path=str(last))
    uninterrupted = fit(tmp_path, tmp_path / "whole")
    a, b = resumed.state_dict(), uninterrupted.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[name], b[name]) for name in a), [n for n in a if not torch.equal(a[n], b[n])][:3]


class Interrupted(Exception):
    pass


class CrashAtEpoch2(L.Callback):
    """An in-process interruption at the start of the third epoch, after last.ckpt of the second."""

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch == 2:
            raise Interrupted


def test_without_the_generator_states_a_resumed_fit_ends_elsewhere(tmp_path, monkeypatch):
    """The control: the same interruption with ResumableRNG's states not restored gives other weights."""
    prepare(tmp_path)
    with pytest.raises(Interrupted):
        fit(tmp_path, tmp_path / "cut", callbacks=(CrashAtEpoch2(),))
    last = str(tmp_path / "cut" / "last.ckpt")
    uninterrupted = fit(tmp_path, tmp_path / "whole").state_dict()
    # each resumed fit writes its own checkpoints, so both start from the same last.ckpt
    restored = fit(tmp_path, tmp_path / "restored", ckpt_path=last).state_dict()
    assert all(torch.equal(restored[name], uninterrupted[name]) for name in restored)
    monkeypatch.setattr(ResumableRNG, "load_state_dict", lambda self, state: None)
    forgetful = fit(tmp_path, tmp_path / "forgetful", ckpt_path=last).state_dict()
    assert not all(torch.equal(forgetful[name], uninterrupted[name]) for name in forgetful)
