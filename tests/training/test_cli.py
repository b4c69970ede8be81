"""The CLI: MLflow run contents, checkpoint reload and resume, interpolation, linking, config errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from apmae.cli import APMAECLI, cli_main


def _fit(config: Path, tmp_path: Path, *extra: str):
    return cli_main(["fit", "--config", str(config), "--trainer.default_root_dir", str(tmp_path / "runs"), *extra])


def _artifacts(client, run_id: str, path: str | None = None) -> list[str]:
    found = []
    for item in client.list_artifacts(run_id, path):
        found += _artifacts(client, run_id, item.path) if item.is_dir else [item.path]
    return found


def _config_error(capsys, args: list[str]) -> str:
    with pytest.raises(SystemExit) as info:
        cli_main(args)
    assert info.value.code == 2
    return capsys.readouterr().err


def test_fit_logs_a_complete_mlflow_run_and_validate_reloads_the_checkpoint(synth_config, tmp_path, tracking_uri):
    from mlflow import MlflowClient

    cli = _fit(synth_config, tmp_path, "--run_name", "micro")
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name("synthetic-tests")
    assert experiment.artifact_location == (tmp_path / "synthetic-tests").as_uri()
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == "micro" and run.info.status == "FINISHED"
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"  # the UI's training view
    assert run.data.tags["apmae.variant"] == "micro" and run.data.tags["apmae.module"] == "LitAPMAE"
    headline = {k for k in run.data.metrics if k.startswith("headline/")}
    assert headline == {"headline/val_mse", "headline/recon_over_trivial", "headline/recon_over_neighbours",
                        "headline/cross_model_over_trivial"}
    assert run.data.metrics["headline/recon_over_trivial"] == pytest.approx(
        run.data.metrics["val/synth-a/mse_over_baseline"], rel=1e-6)
    assert run.data.metrics["headline/cross_model_over_trivial"] == pytest.approx(
        run.data.metrics["val/synth-b/mse_over_baseline"], rel=1e-6)

    params = run.data.params
    assert params["model.class_path"] == "apmae.lit_models.apmae_module.LitAPMAE"
    assert params["data.init_args.seq_len"] == "32" and params["experiment"] == "synthetic-tests"
    metrics = run.data.metrics
    for name in ("synth-a", "synth-b"):
        for key in ("mse", "baseline_mse", "mse_over_baseline", "neighbour_mse", "mse_over_neighbour",
                    "mse_over_train"):
            assert f"val/{name}/{key}" in metrics
    assert metrics["val/loss"] == metrics["val/synth-a/mse"]
    assert metrics["val/synth-b/mse_over_train"] == pytest.approx(
        metrics["val/synth-b/mse"] / metrics["val/synth-a/mse"], rel=1e-5)
    assert "train/loss_step" in metrics

    artifacts = _artifacts(client, run.info.run_id)
    assert "config.yaml" in artifacts
    assert {"figures/epoch_0000/grid.png", "figures/epoch_0001/grid.png"} <= set(artifacts)
    assert {"apmae_net/config.json", "apmae_net/model.safetensors"} <= set(artifacts)
    logged_config = yaml.safe_load(Path(client.download_artifacts(run.info.run_id, "config.yaml")).read_text())
    assert logged_config["model"]["init_args"]["seq_len"] == 32  # the linked value is recorded too
    assert logged_config["data"]["init_args"]["extra_targets"] == ["synth-b"]

    ckpt = cli.trainer.checkpoint_callback.last_model_path
    assert Path(ckpt).is_file()
    again = cli_main(["validate", "--config", str(synth_config), "--ckpt_path", ckpt,
                      "--trainer.default_root_dir", str(tmp_path / "runs")])
    assert float(again.trainer.callback_metrics["val/loss"]) == pytest.approx(metrics["val/loss"], rel=1e-6)
    assert len(client.search_runs([experiment.experiment_id])) == 2  # validate is a run of its own


def test_resume_from_checkpoint_continues_the_step_count(synth_config, tmp_path):
    first = _fit(synth_config, tmp_path, "--trainer.max_epochs", "1")
    assert first.trainer.global_step == 4  # 32 images / batch 8
    ckpt = first.trainer.checkpoint_callback.last_model_path
    second = _fit(synth_config, tmp_path, "--trainer.max_epochs", "2", "--ckpt_path", ckpt)
    assert second.trainer.global_step == 8
    assert second.trainer.current_epoch == 2


def test_interpolation_resolves_after_overrides_and_seq_len_is_linked(synth_config, tmp_path):
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text(
        "model:\n  init_args:\n    recipe:\n      lr_reference_batch: ${....data.init_args.batch_size}\n"
        "    baseline_batches: ${.recipe.lr_reference_batch}\n"
        "data:\n  init_args:\n    n_val: ${.batch_size}\n    seq_len: 16\n"
    )
    cli = APMAECLI(args=["--config", str(synth_config), "--config", str(overlay),
                         "--data.init_args.batch_size", "4"], run=False)
    assert cli.model.recipe.lr_reference_batch == 4 and cli.model.hparams.baseline_batches == 4
    assert cli.datamodule.n_val == 4
    assert cli.model.net.config.seq_len == 16 == cli.datamodule.seq_len


def test_print_config_shows_the_resolved_config(synth_config, capsys):
    with pytest.raises(SystemExit) as info:
        cli_main(["fit", "--config", str(synth_config), "--data.init_args.batch_size", "4", "--print_config"])
    assert info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["data"]["init_args"]["batch_size"] == 4
    assert printed["model"]["init_args"]["net_overrides"]["enc_depth"] == 1


def test_setting_model_seq_len_is_refused_clearly(synth_config, tmp_path, capsys):
    err = _config_error(capsys, ["fit", "--config", str(synth_config), "--model.init_args.seq_len", "64"])
    assert "linked from data.seq_len" in err
    overlay = tmp_path / "bad.yaml"
    overlay.write_text("model:\n  init_args:\n    seq_len: 64\n")
    err = _config_error(capsys, ["fit", "--config", str(synth_config), "--config", str(overlay)])
    assert f"config file {overlay}" in err and "linked from data.seq_len" in err


def test_net_built_for_another_seq_len_is_a_clear_error(synth_config, tmp_path, capsys):
    overlay = tmp_path / "net.yaml"
    overlay.write_text(
        "model:\n  init_args:\n    net_overrides: null\n    net:\n      class_path: apmae.model.APMAE\n"
        "      init_args:\n        config: {seq_len: 64, patch_size: 8, enc_dim: 32, enc_depth: 1, enc_heads: 2,\n"
        "                 enc_mlp: 64, dec_dim: 32, dec_depth: 1, dec_heads: 2, dec_mlp: 64}\n"
    )
    err = _config_error(capsys, ["fit", "--config", str(synth_config), "--config", str(overlay)])
    assert err.strip().splitlines()[-1] == (
        "error: invalid configuration: the net is configured for seq_len 64 but the data has seq_len 32: "
        "set the net's seq_len to 32 (or leave `net` out and use `preset`)"
    )


def test_unknown_keys_are_named_in_the_error(synth_config, tmp_path, capsys):
    overlay = tmp_path / "typo.yaml"
    overlay.write_text("model:\n  init_args:\n    warmup_fractoin: 0.2\n")
    err = _config_error(capsys, ["fit", "--config", str(synth_config), "--config", str(overlay)])
    assert "warmup_fractoin" in err and "not accepted" in err
    err = _config_error(capsys, ["fit", "--config", str(synth_config),
                                 "--model.init_args.net_overrides", "{enc_dept: 2}"])
    assert "unknown APMAEConfig fields ['enc_dept']" in err


def test_help_lists_the_post_hoc_stages_and_each_answers_its_own_help(capsys):
    with pytest.raises(SystemExit) as info:
        cli_main(["--help"])
    assert info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # the help formatter wraps lines
    assert "{fit,validate,test,predict}" in text
    assert "apmae <stage> --help" in text and "patterns: cluster every head's encodings" in text
    with pytest.raises(SystemExit) as info:
        cli_main(["patterns", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: apmae patterns") and "--encodings" in out and "--no-probe" in out


def test_the_former_probe_stage_names_the_probe_module(synth_config, tmp_path, capsys):
    overlay = tmp_path / "old_probe.yaml"
    overlay.write_text("model:\n  init_args:\n    stage: probe\n    encoder: artifacts/demo/apmae\n"
                       "    net_overrides: null\n    probe_hidden: 64\n")
    err = _config_error(capsys, ["fit", "--config", str(synth_config), "--config", str(overlay)])
    assert f"model.init_args.stage is set in config file {overlay}" in err
    assert "Set `model.class_path: apmae.lit_models.probe_module.LitProbe`" in err and "remove stage" in err
    err = _config_error(capsys, ["fit", "--config", str(synth_config), "--model.init_args.stage", "probe"])
    assert "command line `--model.init_args.stage`" in err and "apmae.lit_models.probe_module.LitProbe" in err


def test_flat_mining_keys_name_their_nested_key_and_the_nested_override_works(tmp_path, capsys):
    smoke = Path(__file__).resolve().parents[2] / "configs" / "smoke.yaml"
    flat = tmp_path / "flat.yaml"
    flat.write_text(
        "data:\n  init_args:\n    scenarios:\n      class_path: apmae.datamodules.java_scenarios.JavaScenarioDataModule\n"
        "      init_args: {sources: s, tokenizer: t, seq_len: 64, n_per_task: 3}\n"
    )
    err = _config_error(capsys, ["fit", "--config", str(smoke), "--config", str(flat)])
    assert (f"config file {flat}: `data.init_args.scenarios.init_args.seq_len` -> "
            "`data.init_args.scenarios.init_args.mining.seq_len`") in err and "n_per_task" in err
    overlay = tmp_path / "overlay.yaml"  # an overlay's block names no class
    overlay.write_text("data:\n  init_args:\n    scenarios:\n      init_args:\n        n_per_task: 750\n")
    err = _config_error(capsys, ["fit", "--config", str(smoke), "--config", str(overlay)])
    assert f"config file {overlay}: `data.init_args.scenarios.init_args.n_per_task` -> " in err
    err = _config_error(capsys, ["fit", "--config", str(smoke), "--data.init_args.scenarios.init_args.seed=3"])
    assert "`--data.init_args.scenarios.init_args.seed` -> `--data.init_args.scenarios.init_args.mining.seed`" in err
    with pytest.raises(SystemExit):
        cli_main(["fit", "--config", str(smoke), "--data.init_args.scenarios.init_args.mining.seed", "3",
                  "--print_config"])
    printed = yaml.safe_load(capsys.readouterr().out)
    mining = printed["data"]["init_args"]["scenarios"]["init_args"]["mining"]
    assert mining["seed"] == 3 and mining["seq_len"] == 32  # the override lands; smoke.yaml's own value stays


def test_a_flat_recipe_key_names_the_recipe_block(synth_config, tmp_path, capsys):
    flat = tmp_path / "flat.yaml"
    flat.write_text("model:\n  class_path: apmae.lit_models.apmae_module.LitAPMAE\n  init_args:\n    lr: 1.0e-3\n")
    for given, named in ((["--model.init_args.lr", "1e-3"], "command line `--model.init_args.lr` -> "
                                                           "`--model.init_args.recipe.lr`"),
                         (["--config", str(flat)], f"config file {flat}: `model.init_args.lr` -> "
                                                   "`model.init_args.recipe.lr`")):
        assert named in _config_error(capsys, ["fit", "--config", str(synth_config), *given])


def test_the_targets_flat_schedule_keys_name_where_they_went(tmp_path, capsys):
    """TargetLM takes its optimiser as a ``recipe:`` block; its step counts went to the recipe and the trainer."""
    target = Path(__file__).resolve().parents[2] / "configs" / "demo" / "target_lm.yaml"
    flat = tmp_path / "flat_target.yaml"
    flat.write_text("model:\n  class_path: apmae.lit_models.target_lm.TargetLM\n  init_args:\n"
                    "    lr: 1.0e-3\n    warmup_steps: 30\n    total_steps: 600\n")
    err = _config_error(capsys, ["fit", "--config", str(target), "--config", str(flat)])
    assert f"config file {flat}: `model.init_args.lr` -> `model.init_args.recipe.lr`" in err
    assert "`model.init_args.warmup_steps` -> `recipe.warmup_fraction (a share of the trainer's steps)`" in err
    assert "`model.init_args.total_steps` -> `trainer.max_steps" in err
    err = _config_error(capsys, ["fit", "--config", str(target), "--model.init_args.num_threads=1",
                                 "--model.init_args.warmup_steps=3"])
    assert "command line `--model.init_args.num_threads` -> `--model.init_args.recipe.num_threads`" in err
    assert "command line `--model.init_args.warmup_steps` -> `recipe.warmup_fraction" in err


def test_a_former_top_level_class_path_names_its_apmae_path(synth_config, tmp_path, capsys):
    """The glue is apmae.datamodules / apmae.lit_models / apmae.callbacks: an old path gets the new one."""
    overlay = tmp_path / "old_paths.yaml"
    overlay.write_text("model:\n  class_path: lit_models.apmae_module.LitAPMAE\n")
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["fit", "--config", str(synth_config), "--config", str(overlay), "--trainer.max_steps=1",
                  "--trainer.callbacks+=callbacks.resumable_rng.ResumableRNG"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"config file {overlay}: lit_models.apmae_module.LitAPMAE -> apmae.lit_models.apmae_module.LitAPMAE" in err
    assert "callbacks.resumable_rng.ResumableRNG -> apmae.callbacks.resumable_rng.ResumableRNG" in err


def test_a_projects_own_callbacks_package_keeps_its_class_paths(tmp_path, monkeypatch):
    """A user's ``callbacks/interventions.py`` is theirs: its path is not taken for apmae's former one."""
    from apmae.cli import _former_glue_path

    (tmp_path / "callbacks").mkdir()
    (tmp_path / "callbacks" / "__init__.py").write_text("")
    (tmp_path / "callbacks" / "interventions.py").write_text("class Interventions:\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    assert not _former_glue_path("callbacks.interventions.Interventions")  # theirs
    assert _former_glue_path("callbacks.pattern_figures.PatternFigures")  # not in their package: apmae's
    assert not _former_glue_path("callbacks.mine.Mine")  # not apmae's module at all


def test_a_run_is_named_by_its_target_and_variant():
    """A config written for one target and run on another says both; the run name is never the config's alone."""
    from jsonargparse import Namespace

    from apmae.cli import _name_mlflow_run, default_trainer_settings

    def named(**config):
        logger = Namespace(default_trainer_settings()["logger"])
        logger.init_args = Namespace(logger.init_args)
        tree = Namespace(trainer=Namespace(logger=logger), **config)
        _name_mlflow_run(tree)
        return logger.init_args.run_name, logger.init_args.tags

    data = Namespace(init_args=Namespace(target="models/starcoder2-7b"))
    model = Namespace(class_path="apmae.lit_models.apmae_module.LitAPMAE")
    name, tags = named(config=["configs/paper/starcoder2_3b.yaml"], data=data, model=model, run_name="starcoder2-3b")
    assert name == "starcoder2-7b/starcoder2-3b"
    assert tags == {"apmae.target": "starcoder2-7b", "apmae.variant": "starcoder2-3b", "apmae.module": "LitAPMAE"}
    name, _ = named(config=["a.yaml", "row_emphasis.yaml"], data=data, model=model)
    assert name == "starcoder2-7b/row_emphasis"
    same = Namespace(init_args=Namespace(target="bigcode/starcoder2-3b"))
    assert named(config=["x.yaml"], data=same, model=model, run_name="starcoder2-3b")[0] == "starcoder2-3b"


def test_without_mlflow_the_cli_logs_to_csv_and_says_so(synth_config, tmp_path, monkeypatch, capsys):
    """mlflow is an extra: a fit without it logs to CSV files instead of failing to build its logger."""
    import importlib.util

    from lightning.pytorch.loggers import CSVLogger

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    cli = _fit(synth_config, tmp_path, "--trainer.max_epochs=1", "--trainer.logger.init_args.save_dir",
               str(tmp_path / "csv"))
    assert isinstance(cli.trainer.logger, CSVLogger)
    assert list((tmp_path / "csv").rglob("metrics.csv"))
    assert "mlflow is not installed, so runs log to CSV files" in capsys.readouterr().err
