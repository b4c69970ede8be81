"""`apmae crossfit` on a real encodings file: the planted head is found, files land, bad input is named."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from apmae.cache.store import AttentionCache
from apmae.cli import cli_main
from apmae.common.head_tables import read_head_table
from apmae.encodings.store import EncodingsError, ensure_encodings
from apmae.probe.features import ProbeData
from tests.probe.synthetic_cache import write_planted_cache
from tests.probe.test_encodings import micro_net


@pytest.fixture(scope="module")
def encodings_path(tmp_path_factory):
    folder = tmp_path_factory.mktemp("enc")
    cache = AttentionCache(write_planted_cache(folder, n=120))  # head (1, 2) carries the label
    ensure_encodings(micro_net(), cache, folder / "e.h5", progress=False)
    return folder / "e.h5"


def test_crossfit_finds_the_planted_head_and_writes_its_files(encodings_path, tmp_path, capsys):
    out = tmp_path / "pp"
    report = cli_main(["crossfit", "--encodings", str(encodings_path), "--out", str(out), "--repeats", "2",
                       "--permutations", "30", "--bootstrap", "200", "--models", "l1"])
    row = report.row("row")
    assert row.auroc > 0.9 and row.permutation.p_value < 0.05
    ranking = read_head_table(out / "crossfit_importance.csv", "importance", n_layers=2, n_heads=4)
    assert np.unravel_index(np.argmax(np.abs(ranking)), ranking.shape) == (1, 2)
    printed = capsys.readouterr().out
    assert "Correctness probe, cross-fitted: every one of 120 scenarios" in printed and "row [l1]" in printed
    assert {p.name for p in out.iterdir()} >= {"probe_table.csv", "oof_scores.csv", "crossfit_importance.png"}


def test_bad_input_gets_a_message_not_a_traceback(encodings_path, tmp_path):
    with pytest.raises(SystemExit, match="n_splits >= 2"):
        cli_main(["crossfit", "--encodings", str(encodings_path), "--out", str(tmp_path), "--splits", "1"])
    with pytest.raises(SystemExit, match="comparisons name"):  # a comparison the plan no longer scores
        cli_main(["crossfit", "--encodings", str(encodings_path), "--out", str(tmp_path), "--readouts"])
    with pytest.raises(EncodingsError, match="compute them first"):
        cli_main(["crossfit", "--encodings", str(tmp_path / "missing.h5"), "--out", str(tmp_path)])
    old = tmp_path / "old.h5"
    old.write_bytes(encodings_path.read_bytes())
    with h5py.File(old, "r+") as f:
        f.attrs["schema_version"] = 2  # written before the row readouts existed
    with pytest.raises(EncodingsError, match="schema 2"):
        cli_main(["crossfit", "--encodings", str(old), "--out", str(tmp_path)])


def test_row_mass_needs_the_encoder_patch_size(encodings_path):
    from apmae.encodings.store import EncodingSet

    data = ProbeData.from_encodings(EncodingSet(encodings_path))
    assert data.patch_size == 8 and data.array("row_attention").shape == (120, 2, 4, 32)
    data.patch_size = 0
    from apmae.probe.features import blocks_of

    with pytest.raises(ValueError, match="row_mass needs the encoder's patch size"):
        blocks_of(data, "row_mass")
