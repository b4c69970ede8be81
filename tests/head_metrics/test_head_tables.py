"""One head-table writer for every head-level result: floats, integers and labels, read back exactly."""

from __future__ import annotations

import numpy as np
import pytest

from apmae.common.head_tables import read_head_table, table_cell, write_head_table


def test_one_writer_keeps_numbers_and_labels(tmp_path):
    importance = np.array([[0.5, -1.25], [1 / 3, 2e-7]])
    path = write_head_table(tmp_path / "sub" / "heads.csv", {
        "importance": importance.astype(np.float32),  # a probe's ranking (float32 on the way out of torch)
        "count": np.array([[1, 2], [3, 1234567]]),
        "focus": np.where(importance > 0.4, "local", "global"),  # the distance table's labels
    })
    assert path.read_text().splitlines() == [
        "layer,head,importance,count,focus",
        "0,0,0.5,1,local",
        "0,1,-1.25,2,global",
        "1,0,0.333333,3,global",
        "1,1,2e-07,1234567,global",
    ]
    np.testing.assert_allclose(read_head_table(path, "importance"), importance, rtol=1e-6)
    np.testing.assert_array_equal(read_head_table(path, "count"), [[1, 2], [3, 1234567]])


def test_cells_and_bad_columns():
    assert [table_cell(v) for v in (np.float64(0.1234567), 2.0, np.int64(7), "x", 3)] == ["0.123457", "2", 7, "x", 3]
    with pytest.raises(ValueError, match=r"\(L, H\) arrays of one shape, got shapes \[\(2,\), \(2, 2\)\]"):
        write_head_table("unused.csv", {"a": np.zeros((2, 2)), "b": np.zeros(2)})
