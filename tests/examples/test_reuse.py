"""examples/reuse runs as another project would: copied out of the repository, apmae imported as a library."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cache.helpers import save_target
from tests.conftest import _causal_tokenizer
from tests.mining.conftest import write_corpus
from tests.target.tiny_models import tiny_llama

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_the_reuse_example_runs_from_a_folder_outside_the_repository(tmp_path):
    project = tmp_path / "elsewhere" / "reuse"
    shutil.copytree(ROOT / "examples" / "reuse", project)
    assert not project.resolve().is_relative_to(ROOT)
    tokenizer = _causal_tokenizer(adds_bos=True)
    model_dir = save_target(tiny_llama(tokenizer), tokenizer, tmp_path / "tiny-llama")
    write_corpus(tmp_path / "java", n_copies=4)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # apmae comes from the installed package
    args = [sys.executable, "entropy_probe.py", "--target", str(model_dir), "--sources", str(tmp_path / "java"),
            "--seq-len", "64", "--n-per-task", "6", "--max-per-file", "2", "--epochs", "2"]
    out = subprocess.run(args, cwd=project, env={**env, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    line = out.stdout.strip().split("\n")[-1]
    found = re.fullmatch(r"validation scenarios: (\d+); AUROC of scored-row entropy \(L x H = 2 x 4 heads\): "
                         r"(\S+); of the target's own confidence: (\S+)", line)
    assert found, line
    assert int(found.group(1)) > 0
    assert list((project / "work" / "cache").glob("*.rank0.h5")) and list((project / "work" / "scenarios").iterdir())
    again = subprocess.run(args, cwd=project, env={**env, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True)
    assert again.returncode == 0 and again.stdout.strip().split("\n")[-1] == line  # reused files, same numbers
