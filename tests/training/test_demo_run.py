"""The demo runner: where it points the demo config, what it reports."""

from __future__ import annotations

from pathlib import Path

import pytest

from apmae.cli import APMAECLI
from apmae.demo.run import DEFAULT_CONFIG, DemoSummary, demo_overrides, disk_line, main

ROOT = Path(__file__).resolve().parents[2]


def test_overrides_point_every_demo_path_at_the_demo_dir(tmp_path):
    cli = APMAECLI(args=["--config", str(ROOT / DEFAULT_CONFIG), *demo_overrides(str(tmp_path)),
                         "--trainer.logger", "false"], run=False)
    data = cli.datamodule
    assert data.target == str(tmp_path / "smollm2") and data.extra_targets == [str(tmp_path / "target-a")]
    assert data.val_target_names == ["smollm2", "target-a"]
    assert Path(data.cache_dir) == tmp_path / "cache"
    assert data.scenarios.sources == [str(tmp_path / "eval-corpus")]
    assert data.scenarios.tokenizer == str(tmp_path / "smollm2") and data.scenarios.prompt_format == "auto"
    assert data.scenarios.cache_dir == tmp_path / "scenarios"
    assert cli.model.recipe.export_dir == str(tmp_path / "apmae")
    assert (cli.model.net.config.seq_len, cli.model.net.config.patch_size) == (128, 16)  # linked from the scenarios
    assert cli.model.net.config.num_patches == 36  # the paper's 8 x 8 grid


def test_summary_reports_baseline_and_cross_model_ratios():
    metrics = {"val/loss": 0.02}
    for name, mse, base in (("target-a", 0.02, 0.08), ("target-b", 0.03, 0.09)):
        metrics |= {f"val/{name}/mse": mse, f"val/{name}/baseline_mse": base,
                    f"val/{name}/mse_over_baseline": mse / base, f"val/{name}/mse_over_train": mse / 0.02}
    metrics |= {"val/target-b/neighbour_mse": 0.04, "val/target-b/mse_over_neighbour": 0.75}
    summary = DemoSummary(train_target="target-a", metrics=metrics, run_id="abc", experiment="demo-apmae",
                          tracking_uri="sqlite:///mlruns/mlflow.db", artifact_uri="file:///x", export_dir="out")
    text = "\n".join(summary.lines())
    assert ("training target target-a: AP-MAE 0.0200 | trivial mean pattern 0.0800 | AP-MAE/trivial 0.250"
            " | vs target-a x1.000") in text
    assert ("unseen target   target-b: AP-MAE 0.0300 | trivial mean pattern 0.0900 | AP-MAE/trivial 0.333"
            " | visible neighbours 0.0400 | AP-MAE/neighbours 0.750 | vs target-a x1.500") in text
    assert "vs target-a x1.500" in text and "make ui" in text and "abc" in text
    assert summary.ratio_to_baseline("target-a") == pytest.approx(0.25)
    assert "head metrics" not in text
    summary.head_metrics = ["WAAD/FAI [target-a, W=10]: 3 local / 29 global heads"]
    lines = summary.lines()
    assert lines[lines.index("  WAAD/FAI [target-a, W=10]: 3 local / 29 global heads") - 1].startswith(
        "Related-work head metrics")


def test_a_finished_fit_is_reused_only_for_the_same_config_and_arguments(tmp_path):
    from apmae.demo.run import FIT_RECORD, finished_fit, fit_key, save_finished_fit

    config = tmp_path / "apmae.yaml"
    config.write_text("trainer: {max_steps: 10}\n")
    args = ["fit", "--config", str(config), "--trainer.max_steps=5"]
    summary = DemoSummary(train_target="smollm2", metrics={"val/smollm2/mse": 0.01}, run_id="r1", experiment="e",
                          tracking_uri="sqlite:///x.db", artifact_uri="a", export_dir="apmae",
                          head_metrics=["MAPS: ..."])
    record = tmp_path / "apmae" / FIT_RECORD
    save_finished_fit(record, fit_key(args), summary)
    assert not record.exists()  # no export folder: the fit did not finish, nothing to reuse
    record.parent.mkdir()
    save_finished_fit(record, fit_key(args), summary)
    assert finished_fit(record, fit_key(args)) == summary
    assert finished_fit(record, fit_key([*args, "--model.init_args.recipe.lr=0.1"])) is None  # other arguments
    config.write_text("trainer: {max_steps: 20}\n")
    assert finished_fit(record, fit_key(args)) is None  # the same file name, another config
    record.write_text("{not json")
    assert finished_fit(record, fit_key(args)) is None


def test_missing_inputs_are_named(tmp_path):
    with pytest.raises(SystemExit, match="eval-corpus is missing"):
        main(["--demo-dir", str(tmp_path)])


def test_probe_summary_prints_the_protocol_table_the_interventions_and_where_the_files_are():
    from apmae.demo.probe_report import PROTOCOL_FOLDER, ProbeSummary

    summary = ProbeSummary(protocol=["Correctness probe, cross-fitted: ...", "  baselines:"], export_dir="out/pp",
                           run_id="r1", experiment="demo-probe", interventions=["interventions [all] ..."])
    lines = summary.lines()
    assert lines[1:3] == ["Correctness probe, cross-fitted: ...", "  baselines:"]
    assert f"out/pp (probe_table.csv, oof_scores.csv, crossfit_importance.csv and .png, probe_auroc.png; MLflow: " \
           f"{PROTOCOL_FOLDER}/)" in lines[3]
    assert lines[4].startswith("Interventions on test scenarios (heads zeroed by the cross-fitted ranking)")
    assert lines[-1] == "  MLflow run:       r1 (experiment 'demo-probe')"


def test_run_location_names_the_run_the_logger_writes_to(tmp_path, tracking_uri):
    from lightning.pytorch.loggers import CSVLogger, MLFlowLogger

    from apmae.common.tracking import run_location

    assert run_location(None) == (None, None, None, None)
    assert run_location(CSVLogger(tmp_path / "csv")) == (None, None, None, None)
    logger = MLFlowLogger(experiment_name="probe-elsewhere", tracking_uri=tracking_uri)
    run_id, experiment, uri, artifact_uri = run_location(logger)
    assert run_id == logger.run_id and experiment == "probe-elsewhere" and uri == tracking_uri
    assert artifact_uri == logger.experiment.get_run(run_id).info.artifact_uri


def test_summary_prints_the_ratio_intervals_over_scenarios():
    metrics = {"val/target-a/mse": 0.02, "val/target-a/baseline_mse": 0.08, "val/target-a/mse_over_baseline": 0.25,
               "val/target-a/mse_over_train": 1.0, "val/target-a/neighbour_mse": 0.04,
               "val/target-a/mse_over_neighbour": 0.5, "val/target-a/mse_over_baseline/ci_low": 0.231,
               "val/target-a/mse_over_baseline/ci_high": 0.2704, "val/target-a/mse_over_neighbour/ci_low": 0.45,
               "val/target-a/mse_over_neighbour/ci_high": 0.56}
    summary = DemoSummary(train_target="target-a", metrics=metrics, run_id=None, experiment=None, tracking_uri=None,
                          artifact_uri=None, export_dir="out")
    assert ("target-a: AP-MAE 0.0200 | trivial mean pattern 0.0800 | AP-MAE/trivial 0.250 [0.231, 0.270]"
            " | visible neighbours 0.0400 | AP-MAE/neighbours 0.500 [0.450, 0.560] | vs target-a x1.000"
            ) in summary.lines()[2]
    assert summary.lines()[3] == ("    -> AP-MAE beats the visible-neighbour baseline on target-a: 50 % less error "
                                  "(95 % interval of the ratio 0.450-0.560, below 1)")
    metrics |= {"val/target-a/mse_over_neighbour": 1.1, "val/target-a/mse_over_neighbour/ci_low": 1.05,
                "val/target-a/mse_over_neighbour/ci_high": 1.2}
    assert "does not beat the visible-neighbour baseline on target-a: 10 % more error" in summary.finding("target-a")
    metrics["val/target-a/mse_over_neighbour/ci_low"] = 0.95
    assert summary.finding("target-a").endswith("cannot be told apart on target-a (ratio interval 0.950-1.200 holds 1)")
    del metrics["val/target-a/neighbour_mse"], metrics["val/target-a/mse_over_neighbour"]
    assert "beats the trivial mean pattern on target-a: 75 % less error" in summary.finding("target-a")


def test_the_cost_of_the_intervals_is_printed_with_its_total():
    from apmae.demo.run import bootstrap_line

    assert bootstrap_line({"reconstruction": 0.125, "probe": 0.5, "interventions": 0.01}) == (
        "  of which intervals and tests (bootstraps, exact tests): reconstruction 0.12 s | probe 0.50 s | "
        "interventions 0.01 s | total 0.64 s")


def test_the_disk_line_totals_the_demo_folder_and_names_its_largest_parts(tmp_path):
    (tmp_path / "cache" / "deep").mkdir(parents=True)
    (tmp_path / "cache" / "deep" / "a.h5").write_bytes(b"x" * 3_000_000)
    (tmp_path / "cache" / "b.h5").write_bytes(b"x" * 1_000_000)
    (tmp_path / "smollm2").mkdir()
    (tmp_path / "smollm2" / "model.safetensors").write_bytes(b"x" * 2_000_000)
    (tmp_path / "record.json").write_bytes(b"x" * 500_000)
    (tmp_path / "empty").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "cache")  # counted as a link, not a second copy of the cache
    line = disk_line(tmp_path, largest=2)
    assert line.startswith(f"Disk: {tmp_path} takes 6.5 MB (largest: cache/ 4.0 MB, smollm2/ 2.0 MB)")

