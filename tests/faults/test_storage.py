"""A disk that fills during extraction, and two processes writing one cache: the store's own error, nothing lost.

The full disk is played by a file size limit (``RLIMIT_FSIZE``) in a child process: HDF5 then meets the
same refused ``write`` as on a full file system (errno 27 instead of 28) at the same places.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from apmae.cache.extract import extract
from apmae.cache.settings import ExtractionSettings
from apmae.cache.store import AttentionCache, CacheError
from apmae.common.h5shards import storage_refused
from apmae.target.access import wrap_model
from tests.cache.helpers import micro_starcoder2, random_scenarios

ROOT = Path(__file__).resolve().parents[2]
SETTINGS = ExtractionSettings(batch_size=2, workers=1, progress=False, compression="none")

# builds the same target and scenarios as `_inputs` in a child process, then extracts under a file size limit
CHILD = textwrap.dedent("""
    import resource, signal, sys
    from tests.faults.test_storage import SETTINGS, _inputs
    from apmae.cache.extract import extract
    from apmae.cli import reported_errors
    target, scenarios = _inputs()
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the refused write then fails with EFBIG instead of a signal
    resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[2]), resource.RLIM_INFINITY))
    with reported_errors():  # as `apmae fit` reports it
        extract(target, scenarios, sys.argv[1], SETTINGS)
""")


def _inputs():
    return wrap_model(micro_starcoder2(100), name="micro"), random_scenarios(24, 16, 100, 99)


def _rows(path: Path) -> dict[str, np.ndarray]:
    cache = AttentionCache(path)
    return {"patterns": np.stack([cache.packed(i) for i in range(len(cache))]), "correct": cache.correct,
            "probability": cache.probability, "scenario_index": cache.scenario_index}


def _child(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", *args], cwd=ROOT, env=env, text=True, **kwargs)


def test_the_refusals_of_a_full_disk_are_told_apart():
    assert storage_refused(OSError(28, "No space left on device")) == "no space left on the device"
    assert storage_refused(RuntimeError("Can't write data (file write failed: errno = 28, error message = 'No "
                                        "space left on device')")) == "no space left on the device"
    assert storage_refused(RuntimeError("file write failed: errno = 27, 'File too large'")) == \
        "the file size limit was reached"
    assert storage_refused(OSError(122, "Disk quota exceeded")) == "the disk quota was exceeded"
    assert storage_refused(OSError(5, "Input/output error")) is None


@pytest.mark.slow
def test_a_disk_full_during_extraction_keeps_the_committed_rows_and_resumes_exactly(tmp_path):
    target, scenarios = _inputs()
    whole = tmp_path / "whole.rank0.h5"
    extract(target, scenarios, whole, SETTINGS)
    full = tmp_path / "full.rank0.h5"
    out = _child([CHILD, str(full), str(int(whole.stat().st_size * 0.6))], capture_output=True)
    assert out.returncode == 1
    last = out.stderr.strip().split("\n")[-1]
    assert last.startswith("error: attention cache ") and str(full) in last
    assert "the file size limit was reached while writing rows" in last
    committed = int(last.split(". ")[1].split(" of ")[0])
    assert 0 < committed < len(scenarios)
    assert f"{committed} of 24 rows are committed and kept; free space under {tmp_path}" in last
    assert f"run the extraction again to resume it: it goes on at row {committed}" in last
    assert (tmp_path / "full.rank0.h5.refused").exists()  # the writer saw the refusal
    result = extract(target, scenarios, full, SETTINGS)  # room again: the run resumes
    assert not (tmp_path / "full.rank0.h5.refused").exists()
    assert result.written == len(scenarios) - committed
    expected, resumed = _rows(whole), _rows(full)
    for name in expected:
        np.testing.assert_array_equal(resumed[name], expected[name], err_msg=name)


HOLD = textwrap.dedent("""
    import sys, time, h5py
    f = h5py.File(sys.argv[1], "r+")  # what a running extraction holds
    print("open", flush=True)
    sys.stdin.readline()
""")


@pytest.mark.slow
def test_a_cache_another_process_is_writing_is_named_in_use(tmp_path):
    target, scenarios = _inputs()
    path = tmp_path / "busy.rank0.h5"
    extract(target, scenarios, path, SETTINGS)
    before = path.read_bytes()
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "open"
        message = r"attention cache .*busy.rank0.h5 is in use by another process .* wait for that run to finish"
        with pytest.raises(CacheError, match=message):
            extract(target, scenarios, path, SETTINGS)
        with pytest.raises(CacheError, match=message):
            AttentionCache(path)
    finally:
        holder.communicate("\n", timeout=30)
    assert path.read_bytes() == before
    assert len(AttentionCache(path)) == len(scenarios)  # once the other process is done, the file reads


def test_a_short_file_without_the_refusal_marker_stays_an_error(tmp_path):
    """Only a file the writer saw refused is padded on resume; one cut short otherwise says to delete it."""
    target, scenarios = _inputs()
    path = tmp_path / "cut.rank0.h5"
    extract(target, scenarios.subset(np.arange(12)), path, SETTINGS)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 4000])
    with pytest.raises(CacheError, match="is truncated or corrupt .*delete it to rebuild"):
        extract(target, scenarios.subset(np.arange(12)), path, SETTINGS)
