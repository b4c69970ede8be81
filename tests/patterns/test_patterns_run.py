"""The recurring-patterns stage end to end on planted families: files, MLflow run, report lines, bad input."""

from __future__ import annotations

import csv

import mlflow
import numpy as np
import pytest

from apmae.common.head_tables import table_cell
from apmae.cli import cli_main
from apmae.patterns.cluster_probe import ClusterProbeConfig
from apmae.patterns.run import SUMMARY_COLUMNS, log_to_mlflow, main, run_recurring_patterns
from apmae.patterns.settings import PatternSettings
from tests.patterns.families import random_encoder_encodings, write_family_cache


@pytest.fixture(scope="module")
def stage(family_data, tmp_path_factory):
    """The stage run once on the planted families (PCA, a shorter CatBoost), and its output folder."""
    cache, enc, _ = family_data
    out = tmp_path_factory.mktemp("stage")
    report = run_recurring_patterns(enc, cache, out, PatternSettings(reduction="pca", montage_heads=1,
                                                                     probe=ClusterProbeConfig(iterations=200)))
    return report, out


def test_stage_writes_summary_labels_figures_and_ranking(stage) -> None:
    report, out = stage
    with (out / "clusters/summary.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == SUMMARY_COLUMNS
    assert [int(r["n_clusters"]) for r in rows] == report.clusters.n_clusters().ravel().tolist() == [3, 1, 1, 3]
    assert [float(r["noise_fraction"]) for r in rows] == [h.noise_fraction for h in report.clusters.heads]
    saved = np.load(out / "clusters/labels.npz")
    np.testing.assert_array_equal(saved["labels"], report.clusters.labels())
    assert saved["medoids"].shape == (2, 2, 3) and saved["sizes"][0, 0].sum() == (saved["labels"][:, 0, 0] >= 0).sum()
    assert saved["medoids"][0, 1, 1:].tolist() == [-1, -1]  # one cluster at head (0, 1): padding after it
    assert report.montage_heads == [(0, 0)] and (out / "clusters/montage_L0_H0.png").stat().st_size > 0
    with (out / "head_importance/cluster_probe_importance.csv").open() as f:
        ranking = [float(r["importance"]) for r in csv.DictReader(f)]
    # a head table: every value as the format writes it (6 significant digits, apmae.common.head_tables)
    assert ranking == [float(table_cell(v)) for v in report.probe.shap.mean.ravel()]


def test_stage_reports_the_probe_and_the_family_count(stage) -> None:
    report, _ = stage
    # correct == "diagonal family": head (0, 0) separates it, so the probe is perfect on test
    assert report.probe.scores["all"].balanced_accuracy == 1.0
    assert "2 of 4 heads show more than one recurring pattern" in report.lines()[0]
    assert "balanced accuracy 1.000" in report.lines()[1]


def test_stage_reports_the_probe_interval_and_each_heads_family_stability(stage) -> None:
    report, out = stage
    # a perfect probe stays perfect on every resample of its test rows
    assert "balanced accuracy 1.000 [1.00, 1.00], AUROC 1.000 [1.00, 1.00]" in report.lines()[1]
    assert report.metrics()["test/cluster_probe/all/balanced_accuracy/ci_low"] == 1.0
    # PCA's exact solver ignores the seed, so the second clustering repeats the first
    with (out / "clusters/summary.csv").open() as f:
        assert [float(r["stability_ari"]) for r in csv.DictReader(f)] == [1.0] * 4
    assert report.stability.shape == (2, 2) and report.metrics()["clusters/min_stability_ari"] == 1.0
    assert report.lines()[2].startswith("  family stability (adjusted Rand index against seed 1, per head): mean 1.00")


@pytest.mark.slow
def test_stage_logs_artifacts_and_metrics_into_the_run(stage) -> None:
    report, _ = stage
    client = mlflow.MlflowClient()
    run_id = client.create_run(client.create_experiment("patterns")).info.run_id
    log_to_mlflow(report, run_id=run_id)
    logged = {a.path for folder in ("clusters", "head_importance") for a in client.list_artifacts(run_id, folder)}
    assert logged == set(report.artifacts) and "head_importance/cluster_probe_importance.csv" in logged
    metrics = client.get_run(run_id).data.metrics
    assert metrics["test/cluster_probe/all/balanced_accuracy"] == 1.0 and metrics["clusters/multi_family_heads"] == 2
    assert metrics.keys() == report.metrics().keys()


def test_encodings_of_another_cache_are_refused(family_data, tmp_path) -> None:
    _, enc, _ = family_data
    other, _ = write_family_cache(tmp_path, n=90)
    with pytest.raises(ValueError, match="were not computed from this cache"):
        run_recurring_patterns(enc, other, tmp_path / "out")


def test_command_line_without_probe(tmp_path, capsys) -> None:
    cache, _ = write_family_cache(tmp_path, n=90)
    random_encoder_encodings(cache, tmp_path / "enc.h5")
    report = main(["--encodings", str(tmp_path / "enc.h5"), "--cache", str(cache.paths[0]), "--out",
                   str(tmp_path / "out"), "--no-probe", "--min-samples", "10", "--min-cluster-size", "15"])
    assert report.probe is None and not (tmp_path / "out/head_importance").exists()
    assert report.clusters.config.min_cluster_size == 15
    assert "heads show more than one recurring pattern" in capsys.readouterr().out


def _files(root) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def test_apmae_patterns_writes_what_the_stage_function_writes(family_data, tmp_path, capsys) -> None:
    cache, enc, _ = family_data
    function, command = tmp_path / "function", tmp_path / "command"
    expected = run_recurring_patterns(enc, cache, function, {"reduction": "pca", "min_samples": 10,
                                                             "min_cluster_size": 15, "seed": 3, "probe": None})
    report = cli_main(["patterns", "--encodings", str(enc.path), "--cache", *map(str, cache.paths), "--out",
                       str(command), "--reduction", "pca", "--min-samples", "10", "--min-cluster-size", "15",
                       "--seed", "3", "--no-probe"])
    assert _files(command) == _files(function) == sorted(expected.artifacts)
    assert (command / "clusters/summary.csv").read_bytes() == (function / "clusters/summary.csv").read_bytes()
    saved, reference = np.load(command / "clusters/labels.npz"), np.load(function / "clusters/labels.npz")
    assert sorted(saved) == sorted(reference)
    for key in reference:
        np.testing.assert_array_equal(saved[key], reference[key])
    assert report.montage_heads == expected.montage_heads and report.probe is None
    assert "heads show more than one recurring pattern" in capsys.readouterr().out


def test_a_family_made_only_of_the_noise_control_is_not_counted_as_a_second_pattern(stage) -> None:
    import copy
    from dataclasses import replace

    report, _ = stage
    control = report.control_task  # the planted data has the miner's tasks, the noise control among them
    assert control is not None and report.families_beyond_control().ravel().tolist() == [3, 1, 1, 3]
    assert replace(report, control_task=None).families_beyond_control().ravel().tolist() == [3, 1, 1, 3]
    pure = replace(report, clusters=copy.deepcopy(report.clusters))
    head = pure.clusters.head(0, 0)  # 3 families: the first only control rows, the second mostly
    head.cluster_task_purity = np.array([1.0, 0.9, 0.5])
    head.majority_task = np.array([control, control, control - 1])
    other = pure.clusters.head(1, 1)  # 3 families, none of the control task
    other.majority_task = np.array([control - 1] * 3)
    assert pure.families_beyond_control().ravel().tolist() == [2, 1, 1, 3]
    assert "not counting a family made only of the noise control: 2 of 4 heads" in "\n".join(pure.lines())
    assert pure.metrics()["clusters/multi_family_heads_beyond_control"] == 2.0
    assert report.clusters.head(0, 0).majority_task is not head.majority_task  # the fixture's report is untouched


def test_the_stage_takes_its_settings_whole_and_refuses_them_one_by_one(family_data, tmp_path) -> None:
    cache, enc, _ = family_data
    with pytest.raises(TypeError, match=r"moved into the patterns settings: pass settings=PatternSettings\("
                                        r"reduction='pca'\)"):
        run_recurring_patterns(enc, cache, tmp_path / "out", reduction="pca")
    with pytest.raises(ValueError, match="patterns.reduction='tsne'"):
        PatternSettings(reduction="tsne")
    with pytest.raises(ValueError, match="patterns.min_cluster_size=0"):
        PatternSettings.of({"min_cluster_size": 0})
    assert PatternSettings.of({"probe": {"iterations": 5}}).probe == ClusterProbeConfig(iterations=5)
    assert PatternSettings.of(None) == PatternSettings() and PatternSettings().probe == ClusterProbeConfig()
