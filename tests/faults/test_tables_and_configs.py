"""Head tables and config files: truncated, binary or foreign files end in an error naming them."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from apmae.cli import cli_main
from apmae.common.head_tables import HeadTableError, read_head_table, write_head_table
from tests.faults.damage import truncated

SMOKE = Path(__file__).resolve().parents[2] / "configs" / "smoke.yaml"


@pytest.fixture
def table(tmp_path):
    return write_head_table(tmp_path / "importance.csv", {"importance": np.arange(6.0).reshape(2, 3)})


def test_a_table_reads_back(table):
    np.testing.assert_array_equal(read_head_table(table, "importance"), np.arange(6.0).reshape(2, 3))


def test_a_truncated_table_is_named(table, tmp_path):
    text = table.read_text()
    mid_row = tmp_path / "mid_row.csv"
    mid_row.write_text(text[: text.index("1,1,") + 2])  # the last row cut after its layer
    with pytest.raises(HeadTableError, match="non-numeric entry or a missing one .*truncated or damaged: write it"):
        read_head_table(mid_row, "importance")
    whole_rows = tmp_path / "whole_rows.csv"
    whole_rows.write_text(text[: text.index("1,1,")])
    with pytest.raises(HeadTableError, match=r"has no row for 2 of 6 heads \(\['1.1', '1.2'\]\)"):
        read_head_table(whole_rows, "importance", n_layers=2, n_heads=3)


def test_binary_or_foreign_tables_are_named(table, tmp_path):
    damaged = tmp_path / "damaged.csv"
    damaged.write_bytes(b"\x93\xff" + table.read_bytes()[2:])
    with pytest.raises(HeadTableError, match=r"damaged.csv: it is not a CSV text file"):
        read_head_table(damaged, "importance")
    other = tmp_path / "other.csv"
    other.write_text("name,value\na,1\n")
    with pytest.raises(HeadTableError, match=r"needs columns layer, head and importance; it has \['name', 'value'\]"):
        read_head_table(other, "importance")
    bigger = write_head_table(tmp_path / "bigger.csv", {"importance": np.zeros((3, 3))})
    with pytest.raises(HeadTableError, match="made for another model"):
        read_head_table(bigger, "importance", n_layers=2, n_heads=3)


@pytest.fixture
def run_cli(capsys, monkeypatch):
    """``apmae <args>`` in-process: its exit code must be 2, and it returns stderr."""
    def run(args) -> str:
        monkeypatch.setattr(sys, "argv", ["apmae", *args])
        with pytest.raises(SystemExit) as exit_info:
            cli_main(args)
        assert exit_info.value.code == 2
        return capsys.readouterr().err
    return run


def test_binary_truncated_unknown_or_missing_configs_are_named(tmp_path, run_cli):
    config = tmp_path / "binary.yaml"
    config.write_bytes(bytes(range(256)))
    assert f"config file {config} is not readable UTF-8 text" in run_cli(["fit", "--config", str(config)])
    cut = truncated(SMOKE, tmp_path / "cut.yaml", 0.5)
    cut.write_text(cut.read_text() + "  init_args: {broken")
    assert "Problems parsing config" in run_cli(["fit", "--config", str(cut), "--print_config"])
    newer = tmp_path / "newer.yaml"
    newer.write_text("schema: 9\n" + SMOKE.read_text())
    assert "'schema' is not accepted" in run_cli(["fit", "--config", str(newer), "--print_config"])
    assert "does not exist" in run_cli(["fit", "--config", str(tmp_path / "missing.yaml")])


def test_a_damaged_or_missing_ckpt_path_is_refused_before_anything_runs(tmp_path, run_cli):
    bad = tmp_path / "last.ckpt"
    bad.write_bytes(b"PK\x03\x04 cut short")
    args = ["fit", "--config", str(SMOKE), "--trainer.logger", "false"]
    err = run_cli([*args, "--ckpt_path", str(bad)])
    assert f"--ckpt_path: checkpoint {bad} is not a readable torch checkpoint" in err
    err = run_cli([*args, "--ckpt_path", str(tmp_path / "none.ckpt")])
    assert "does not exist; give the .ckpt file a run wrote" in err
