"""The Interventions callback in a tiny Lightning fit over a micro target's attention cache, logged to MLflow."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.pytorch import Trainer

from apmae.lit_models.training import TrainingRecipe
from apmae.common.head_tables import write_head_table
from apmae.mining.scenario_set import SPLITS, ScenarioSet
from apmae.target.access import run_batch, zero_heads
from apmae.interventions.settings import InterventionSettings
from apmae.callbacks.interventions import Interventions
from apmae.datamodules.attention_cache import AttentionCacheDataModule
from apmae.cache.settings import ExtractionSettings
from apmae.lit_models.apmae_module import LitAPMAE
from tests.interventions.conftest import HEADS, LAYERS
from tests.training.conftest import MICRO_NET

IMPORTANCE = np.random.default_rng(11).normal(size=(LAYERS, HEADS))
TASK_IMPORTANCE = {"identifiers": -IMPORTANCE}


class RankedLitAPMAE(LitAPMAE):
    """LitAPMAE that, like a probe, has a head importance only from its second validation on."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.ranked = False

    @property
    def head_importance(self):
        return torch.tensor(IMPORTANCE) if self.ranked else None

    @property
    def head_importance_by_task(self):
        return {k: torch.tensor(v) for k, v in TASK_IMPORTANCE.items()} if self.ranked else None

    def on_validation_epoch_end(self) -> None:
        super().on_validation_epoch_end()
        self.ranked = self.current_epoch >= 1


def _mlflow_logger(tmp_path: Path):
    from lightning.pytorch.loggers import MLFlowLogger

    from apmae.common.tracking import artifact_location

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    return MLFlowLogger(experiment_name="interventions", tracking_uri=uri,
                        artifact_location=artifact_location(uri, "interventions"))


def _data(tmp_path, target_dir, scenarios_path) -> AttentionCacheDataModule:
    return AttentionCacheDataModule(target=str(target_dir), scenarios=str(scenarios_path),
                                    cache_dir=str(tmp_path / "cache"),
                                    extraction=ExtractionSettings(device="cpu", progress=False), batch_size=8)


def _rows(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(Path(path).open()))


def _fit(tmp_path: Path, target_dir: Path, scenarios_path: Path, logger) -> tuple[Interventions, Trainer]:
    """Two epochs of a micro AP-MAE with the callback: no ranking at validation 0, one at validation 1."""
    settings = InterventionSettings(n_scenarios=100, exclude_tasks=[], random_seeds=[0, 1], batch_size=4)
    callback = Interventions(settings=settings, per_task=True, output_dir=str(tmp_path / "out"), verbose=False)
    trainer = Trainer(accelerator="cpu", devices=1, max_epochs=2, limit_train_batches=2, limit_val_batches=2,
                      num_sanity_val_steps=0, logger=logger, callbacks=[callback], enable_progress_bar=False,
                      enable_checkpointing=False, enable_model_summary=False, default_root_dir=tmp_path)
    module = RankedLitAPMAE(
        seq_len=16, net_overrides=dict(MICRO_NET), recipe=TrainingRecipe(lr=1e-3, export_dir=str(tmp_path / "net"))
    )
    with pytest.warns(UserWarning, match="no head importance yet"):
        trainer.fit(module, datamodule=_data(tmp_path, target_dir, scenarios_path))
    return callback, trainer


@pytest.fixture(scope="module")
def fitted(tmp_path_factory, micro_target_dir, scenario_set_path) -> tuple[Interventions, Trainer]:
    return _fit(tmp_path_factory.mktemp("fit"), micro_target_dir, scenario_set_path, logger=False)


@pytest.mark.slow
def test_a_fit_logs_the_sweep_and_its_tables_to_mlflow(tmp_path, micro_target_dir, scenario_set_path,
                                                        scenario_set: ScenarioSet):
    from mlflow import MlflowClient

    logger = _mlflow_logger(tmp_path)
    callback, trainer = _fit(tmp_path, micro_target_dir, scenario_set_path, logger)
    # Validation 0 had no ranking (skipped), validation 1 evaluated; the fit's end saw the same ranking.
    assert callback.last.stage == "val" and callback.last.step == trainer.global_step
    client = MlflowClient(logger.experiment.tracking_uri)
    metrics = client.get_run(logger.run_id).data.metrics
    for strategy in ("positive", "negative", "neutral", "random"):
        for k in (1, 2, 4, 8):
            for name in ("accuracy", "delta_accuracy", "i2c", "c2i", "label_loss", "exact_match", "token_accuracy"):
                assert f"interventions/{strategy}/k{k}/{name}" in metrics
                assert f"interventions/per_task/identifiers/{strategy}/k{k}/{name}" in metrics
    assert "interventions/random/k2/accuracy_std" in metrics
    assert len(client.get_metric_history(logger.run_id, "interventions/positive/k1/accuracy")) == 1
    logged = {a.path for a in client.list_artifacts(logger.run_id, "interventions")}
    assert logged == {f"interventions/{n}" for n in ("results.csv", "scenarios.csv", "by_task.csv", "curve.png")}
    assert callback.summary_lines()[-1] == f"  collapse curve: {callback.last.curve_location}"
    assert Path(callback.last.curve_location).stat().st_size > 10_000

    scen = _rows(client.download_artifacts(logger.run_id, "interventions/scenarios.csv"))
    index = np.array([int(r["scenario_index"]) for r in scen])
    np.testing.assert_array_equal(index, scenario_set.split_indices("val"))  # all val rows (fewer than 100)
    assert all(r["baseline_correct"] == r["cached_correct"] for r in scen)
    results = _rows(client.download_artifacts(logger.run_id, "interventions/results.csv"))
    n_ident = sum(r["task"] == "identifiers" for r in scen)
    assert {int(r["n"]) for r in results if r["scope"] == "identifiers"} == {n_ident}
    assert {int(r["n"]) for r in results if r["scope"] == "all"} == {len(scen)}


def test_results_agree_with_a_direct_recomputation(fitted, scenario_set: ScenarioSet, micro_target):
    callback, _ = fitted
    results = _rows(callback.last.files["results.csv"])
    index = np.array([int(r["scenario_index"]) for r in _rows(callback.last.files["scenarios.csv"])])
    row = next(r for r in results if (r["scope"], r["strategy"], r["k"]) == ("all", "positive", "2"))
    top2 = sorted(divmod(int(i), HEADS) for i in np.argsort(-IMPORTANCE.ravel())[:2])
    assert row["heads"] == ";".join(f"{l}.{h}" for l, h in top2)
    ids, first = torch.from_numpy(scenario_set.input_ids[index]), torch.from_numpy(scenario_set.label_ids[index, 0])
    before = run_batch(micro_target, ids, first).correct.numpy()
    with zero_heads(micro_target, {l: [h for ll, h in top2 if ll == l] for l, _ in top2}):
        after = run_batch(micro_target, ids, first)
    assert float(row["accuracy"]) == pytest.approx(after.correct.float().mean().item())
    assert int(row["i2c"]) == int((after.correct.numpy() & ~before).sum())
    assert int(row["c2i"]) == int((~after.correct.numpy() & before).sum())
    assert float(row["label_loss"]) == pytest.approx(after.loss.mean().item(), rel=1e-5)


def test_the_callback_target_is_left_as_loaded(fitted, micro_target, scenario_set):
    callback, _ = fitted
    model = callback.target.model
    assert not model.training and not any(m.training for m in model.modules())
    assert not any(p._forward_pre_hooks for p in model.modules())
    ids = torch.from_numpy(scenario_set.input_ids[:5]).long()
    with torch.no_grad():
        # sdpa (the callback's copy) against eager: equal up to rounding
        torch.testing.assert_close(model(input_ids=ids).logits, micro_target.model(input_ids=ids).logits)


def test_a_ranking_file_of_another_model_is_refused(tmp_path, micro_target_dir, scenario_set_path):
    path = write_head_table(tmp_path / "importance.csv", {"importance": np.zeros((4, 8))})
    callback = Interventions(importance_csv=str(path), settings={"strategies": ["positive"]}, verbose=False)
    trainer = Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=1,
        limit_train_batches=1,
        limit_val_batches=1,
        num_sanity_val_steps=0,
        logger=False,
        callbacks=[callback],
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    with pytest.raises(ValueError, match="made for another model"):
        trainer.fit(
            LitAPMAE(
                seq_len=16, net_overrides=dict(MICRO_NET), recipe=TrainingRecipe(export_dir=str(tmp_path / "net"))
            ),
            datamodule=_data(tmp_path, micro_target_dir, scenario_set_path),
        )


def test_bad_arguments_are_refused_at_construction(tmp_path):
    with pytest.raises(ValueError, match="settings.strategies"):
        Interventions(settings={"strategies": ["top"]})
    with pytest.raises(ValueError, match="needs at least one seed in settings.random_seeds"):
        Interventions(settings=InterventionSettings(random_seeds=[]))
    with pytest.raises(ValueError, match="do not exist"):
        Interventions(importance_csv=str(tmp_path / "missing.csv"))
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        Interventions(settings={"fractions": [2.0]})
    with pytest.raises(ValueError, match="settings.split='dev'"):
        Interventions(settings={"split": "dev"})
    # the sweep's settings passed one by one name the settings object that takes them now
    with pytest.raises(TypeError, match=r"pass settings=InterventionSettings\(n_scenarios=8, split='test'\)"):
        Interventions(split="test", n_scenarios=8)
    with pytest.raises(ValueError, match="every_n_epochs"):
        Interventions(every_n_epochs=0)
    path = write_head_table(tmp_path / "importance.csv", {"importance": np.zeros((2, 4))})
    with pytest.raises(ValueError, match="only with per_task"):
        Interventions(importance_csv_by_task={"identifiers": str(path)})


def test_without_mlflow_the_tables_and_curve_stay_local(fitted):
    callback, trainer = fitted
    folder = Path(trainer.default_root_dir) / "out"
    names = ("results.csv", "scenarios.csv", "by_task.csv", "curve.png")
    assert callback.last.files == {n: folder / n for n in names}
    assert callback.last.curve_location == str(folder / "curve.png")
    lines = callback.summary_lines()
    assert lines[0].startswith("interventions [all] on ") and any("[identifiers]" in line for line in lines)
    assert any(line.startswith("  all 8 heads zeroed: accuracy ") for line in lines)


def test_the_cli_appends_the_callback_to_any_config(monkeypatch):
    from apmae.cli import APMAECLI

    monkeypatch.setattr("sys.argv", ["apmae"])
    smoke = Path(__file__).resolve().parents[2] / "configs" / "smoke.yaml"
    cli = APMAECLI(args=["--config", str(smoke), "--trainer.logger=false",
                         "--trainer.callbacks+=apmae.callbacks.interventions.Interventions",
                         "--trainer.callbacks.settings.n_scenarios=64", "--trainer.callbacks.settings.dtype=bfloat16",
                         "--trainer.callbacks.every_n_epochs=null"], run=False)
    (callback,) = [c for c in cli.trainer.callbacks if isinstance(c, Interventions)]
    assert (callback.settings.n_scenarios, callback.settings.dtype, callback.every_n_epochs) == (64, "bfloat16", None)


def test_results_carry_each_settings_interval_and_flip_test(fitted):
    from apmae.common.stats import mcnemar_exact, wilson_interval

    callback, _ = fitted
    results = _rows(callback.last.files["results.csv"])
    for row in results:
        n, right = int(row["n"]), round(float(row["accuracy"]) * int(row["n"]))
        assert float(row["p_mcnemar"]) == pytest.approx(mcnemar_exact(int(row["i2c"]), int(row["c2i"])))
        assert float(row["accuracy_ci_low"]) == pytest.approx(wilson_interval(right, n).low)
        assert (row["p_mcnemar_bh"] == "nan") == (row["strategy"] == "random")
    ranked = [r for r in results if r["strategy"] != "random" and r["scope"] == "all"]
    assert all(int(r["n_random"]) == 2 for r in ranked)  # the fixture's two random seeds at every k
    assert float(ranked[0]["p_mcnemar_bh"]) >= float(ranked[0]["p_mcnemar"])
    assert callback.summary_lines()[-2].startswith("  p-values: exact McNemar of the flips")
