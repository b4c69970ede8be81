"""The head atlas: joined columns equal their sources, missing stages stay missing, thumbnails, CLI and MLflow."""

from __future__ import annotations

import base64
import csv
import json
import re

import numpy as np
import pytest

from apmae.atlas.page import INTEGER
from apmae.atlas.run import build_atlas
from apmae.atlas.sources import read_table
from apmae.atlas.synthetic import SyntheticCache, write_synthetic_run
from apmae.atlas.thumbnails import block_means, family_thumbnails, thumbnail
from apmae.cli import cli_main
from apmae.common.head_tables import read_head_table, write_head_table
from apmae.interventions.report import RESULT_FIELDS


def _rows(path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _page_data(path) -> dict:
    text = path.read_text()
    return json.loads(re.search(r'<script type="application/json" id="atlas-data">(.*?)</script>', text, re.S)
                      .group(1).replace("<\\/", "</"))


def _results(path, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(RESULT_FIELDS), restval=0)
        writer.writeheader()
        writer.writerows(rows)


def test_columns_are_the_sources_values(tmp_path):
    root = write_synthetic_run(tmp_path / "run", n_layers=3, n_heads=4, target="target-a")
    table = read_table([root])
    assert (table.n_layers, table.n_heads, table.target) == (3, 4, "target-a")
    assert table.missing == {}
    hm = root / "head_metrics" / "target-a"
    expected = {"importance": (root / "head_importance/importance.csv", "importance"),
                "crossfit_importance": (root / "probe-protocol/crossfit_importance.csv", "importance"),
                "shap": (root / "head_importance/cluster_probe_importance.csv", "importance"),
                "families": (root / "clusters/summary.csv", "n_clusters"), "waad": (hm / "distance.csv", "mean_waad"),
                "sink_contribution": (hm / "contribution.csv", "sink_norm"),
                "maps_brackets": (hm / "maps_scores.csv", "brackets"), "induction_score": (hm / "types.csv", "induction")}
    for name, (path, column) in expected.items():
        assert np.array_equal(table.columns[name].values, read_head_table(path, column)), name
    types = {(int(r["layer"]), int(r["head"])): r["head_type"] for r in _rows(hm / "types.csv")}
    assert {k: table.columns["head_type"].values[k] for k in types} == types
    assert "maps_copying_suppression" not in table.columns


def test_accuracy_change_is_the_mean_over_the_zeroed_sets_that_held_the_head(tmp_path):
    write_head_table(tmp_path / "importance.csv", {"importance": np.zeros((2, 2))})
    _results(tmp_path / "interventions" / "test" / "results.csv", [
        {"scope": "all", "strategy": "positive", "k": 1, "seed": 0, "delta_accuracy": 0.1, "heads": "0.1"},
        {"scope": "all", "strategy": "random", "k": 2, "seed": 0, "delta_accuracy": -0.2, "heads": "0.1;1.0"},
        {"scope": "all", "strategy": "random", "k": 1, "seed": 1, "delta_accuracy": 0.05, "heads": "1.1"},
        {"scope": "java_identifier", "strategy": "positive", "k": 1, "seed": 0, "delta_accuracy": 0.9, "heads": "0.0"},
    ])
    table = read_table([tmp_path])
    delta = table.columns["zeroed_delta_accuracy"]
    assert np.array_equal(delta.values, [[np.nan, -0.05], [-0.2, 0.05]], equal_nan=True)  # L0H0: never zeroed
    assert np.array_equal(table.columns["zeroed_sets"].values, [[np.nan, 2], [1, 1]], equal_nan=True)
    assert delta.note.endswith("random sets: mean -0.075")


def test_a_missing_stage_is_a_missing_column_never_a_filled_one(tmp_path):
    root = write_synthetic_run(tmp_path / "run", n_layers=2, n_heads=3, stages=("probe",))
    report = build_atlas([root], tmp_path / "out")
    assert set(report.table.missing) == {"shap", "families", "waad", "fai_gini", "sink_attention",
                                         "sink_contribution", "maps", "head_type", "zeroed_delta_accuracy"}
    assert "apmae patterns" in report.table.missing["families"]
    header = _rows(report.files["atlas/heads.csv"])[0]
    assert list(header) == ["layer", "head", "crossfit_importance", "importance", "integrated_gradients"]
    data = _page_data(report.page)
    assert [c["name"] for c in data["columns"]] == ["crossfit_importance", "importance", "integrated_gradients"]
    assert data["missing"] == report.table.missing and data["thumbs"]["mean"] is None
    # the cross-fitted ranking colours the grid when a run has it
    assert report.colour == "crossfit_importance" and report.files["atlas/grid.svg"].read_text().startswith("<?xml")


def test_heads_csv_leaves_a_head_without_a_value_empty(tmp_path):
    write_head_table(tmp_path / "importance.csv", {"importance": np.array([[0.5, -0.25]])})
    _results(tmp_path / "interventions" / "results.csv",
             [{"scope": "all", "strategy": "positive", "k": 1, "seed": 0, "delta_accuracy": 0.125, "heads": "0.1"}])
    rows = _rows(build_atlas([tmp_path], tmp_path / "out").files["atlas/heads.csv"])
    assert [(r["importance"], r["zeroed_delta_accuracy"], r["zeroed_sets"]) for r in rows] == [
        ("0.5", "", ""), ("-0.25", "0.125", "1")]


def test_block_means_by_hand():
    x = np.arange(25, dtype=np.float64).reshape(5, 5)
    # S = 5, G = 2: blocks start at round(0) = 0 and round(2.5) = 2 -> rows/columns {0, 1} and {2, 3, 4}
    assert np.allclose(block_means(x, 2), [[x[:2, :2].mean(), x[:2, 2:].mean()], [x[2:, :2].mean(), x[2:, 2:].mean()]])
    sink = np.zeros((4, 4), dtype=np.float32)
    sink[:, 0] = 1.0
    # block means 0.5 (left column) and 0 elsewhere: the one positive value has no range -> 255
    assert thumbnail(sink, 2).tolist() == [[255, 0], [255, 0]]


def test_mean_and_medoid_thumbnails_come_from_the_right_rows(tmp_path):
    cache = SyntheticCache(n_layers=2, n_heads=3, seq_len=32, n_rows=6)
    root = write_synthetic_run(tmp_path / "run", n_layers=2, n_heads=3, n_rows=6)
    report = build_atlas([root], tmp_path / "out", cache=cache, n_pattern_rows=3)
    data = _page_data(report.page)["thumbs"]
    rows = [0, 2, 5]  # 3 rows spread over 6 (0, 2.5 -> 2, 5)
    mean = np.mean([cache.scenario(r) for r in rows], axis=0)
    got = np.frombuffer(base64.b64decode(data["mean"]), dtype=np.uint8).reshape(2, 3, 32, 32)
    assert np.array_equal(got, thumbnail(mean, 32)) and data["mean_rows"] == 3
    npz = np.load(root / "clusters" / "labels.npz")
    pictures, sizes = family_thumbnails(cache, root / "clusters" / "labels.npz", side=16)
    layer, head = 1, 2
    order = np.argsort(-npz["sizes"][layer, head], kind="stable")[: int((npz["medoids"][layer, head] >= 0).sum())]
    for picture, k in zip(pictures[(layer, head)], order):
        row = int(npz["scenario_index"][npz["medoids"][layer, head, k]]) // 3  # synthetic scenario ids are 3 x row
        assert np.array_equal(picture, thumbnail(cache.scenario(row)[layer, head], 16))
    assert sizes[(layer, head)] == sorted(sizes[(layer, head)], reverse=True)
    assert all(isinstance(v, int) for c in _page_data(report.page)["columns"] if c["name"] in INTEGER
               for v in c["values"] if v is not None)


def test_cli_reads_run_ids_and_logs_the_atlas_into_the_first(tmp_path, tracking_uri):
    import mlflow

    client = mlflow.MlflowClient(tracking_uri)
    experiment = client.create_experiment("atlas", artifact_location=(tmp_path / "store").as_uri())
    probe, apmae = (client.create_run(experiment).info.run_id for _ in range(2))
    root = write_synthetic_run(tmp_path / "run", n_layers=2, n_heads=2, target="t")
    client.log_artifacts(probe, str(root / "head_importance"), "head_importance")
    client.log_artifacts(apmae, str(root / "head_metrics"), "head_metrics")
    report = cli_main(["atlas", "--run-id", probe, "--run-id", apmae, "--tracking-uri", tracking_uri,
                       "--out", str(tmp_path / "out"), "--colour", "waad"])
    assert report.colour == "waad" and "waad" in report.table.columns and "families" in report.table.missing
    assert {a.path for a in client.list_artifacts(probe, "atlas")} == {
        "atlas/index.html", "atlas/heads.csv", "atlas/grid.png", "atlas/grid.svg"}
    assert not client.list_artifacts(apmae, "atlas")


def test_bad_requests_say_what_to_change(tmp_path):
    with pytest.raises(SystemExit, match="no per-head table"):
        cli_main(["atlas", "--artifacts", str(tmp_path), "--out", str(tmp_path / "out")])
    root = write_synthetic_run(tmp_path / "run", n_layers=2, n_heads=2, stages=("probe",))
    with pytest.raises(SystemExit, match="'waad' is not a numeric column"):
        cli_main(["atlas", "--artifacts", str(root), "--out", str(tmp_path / "out"), "--colour", "waad"])
    with pytest.raises(ValueError, match="give the cache of the run's own target"):
        build_atlas([root], tmp_path / "out", cache=SyntheticCache(n_layers=3, n_heads=2, seq_len=8, n_rows=2))


def test_links_given_to_the_atlas_are_shown_under_its_title(tmp_path):
    root = write_synthetic_run(tmp_path / "run", n_layers=2, n_heads=3, stages=("probe",))
    report = build_atlas([root], tmp_path / "out", links={"claims <report>": "../report/claims.html"})
    page = report.page.read_text()
    assert 'see also: <a href="../report/claims.html">claims &lt;report&gt;</a>' in page
    assert _page_data(report.page)["links"] == {"claims <report>": "../report/claims.html"}
    assert "see also" not in build_atlas([root], tmp_path / "plain").page.read_text()
