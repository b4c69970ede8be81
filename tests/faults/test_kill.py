"""A real SIGKILL while encodings are computed from a cache: the resumed file equals an uninterrupted one.

(The other writers: the pattern cache in tests/cache/test_kill.py, streaming encodings in
tests/stream/test_processes.py, scenario mining in tests/mining/test_kill.py, a probe fit resumed
from last.ckpt in tests/probe/test_kill.py.)
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from apmae.cache.store import AttentionCache
from apmae.encodings.store import EncodingSet, ensure_encodings
from apmae.model.net import APMAE
from tests.killing import kill_when, start
from tests.probe.synthetic_cache import write_planted_cache

MICRO = dict(seq_len=32, patch_size=8, enc_dim=32, enc_depth=1, enc_heads=2, enc_mlp=64, dec_dim=32, dec_depth=1,
             dec_heads=2, dec_mlp=64)

_ENCODE = """
import sys
import torch
from apmae.cache.store import AttentionCache
from apmae.encodings import store
from apmae.encodings.store import ensure_encodings
from apmae.model.net import APMAE

append = store.EncodingsWriter.append
def append_and_report(self, *args, **kwargs):
    append(self, *args, **kwargs)
    print(self.committed, flush=True)
store.EncodingsWriter.append = append_and_report
torch.set_num_threads(1)
ensure_encodings(APMAE.load(sys.argv[1]), AttentionCache(sys.argv[2]), sys.argv[3], batch_size=2, progress=False)
"""


@pytest.mark.slow  # a child process: ~5 s on two cores
def test_sigkill_mid_encoding_then_resume_equals_an_uninterrupted_run(tmp_path):
    (cache_path,) = write_planted_cache(tmp_path / "cache", n=40)
    torch.manual_seed(0)
    net = APMAE.from_preset("tiny", **MICRO).eval()
    net.save(tmp_path / "encoder")
    path = tmp_path / "killed.h5"
    kill_when(start(_ENCODE, str(tmp_path / "encoder"), str(cache_path), str(path)), lambda line: int(line) >= 10)
    partial = EncodingSet(path, require_complete=False)
    assert 10 <= len(partial) < 40  # committed rows only; the kill landed mid-run
    cache = AttentionCache(cache_path)
    resumed = ensure_encodings(net, cache, path, batch_size=2, progress=False).load()
    whole = ensure_encodings(net, cache, tmp_path / "whole.h5", batch_size=2, progress=False).load()
    for name in ("cls", "mean", "stats"):
        np.testing.assert_array_equal(resumed.array(name), whole.array(name))
    for name in ("scenario_index", "correct", "task", "probability"):
        np.testing.assert_array_equal(resumed.columns[name], whole.columns[name])
