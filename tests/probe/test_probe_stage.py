"""The probe stage end to end on planted caches: far above chance, the planted head ranked first."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch

from apmae.lit_models.training import TrainingRecipe
from apmae.common.head_tables import read_head_table
from apmae.encodings.store import encoder_hash
from apmae.model.net import APMAE
from apmae.probe.net import mean_replacement_importance
from apmae.datamodules.attention_cache import AttentionCacheDataModule
from apmae.cache.settings import ExtractionSettings
from apmae.encodings.settings import EncoderSettings
from apmae.lit_models.probe_module import LitProbe
from tests.probe.synthetic_cache import write_planted_cache

PLANTED = (1, 2)
MICRO = dict(seq_len=32, patch_size=8, enc_dim=32, enc_depth=1, enc_heads=2, enc_mlp=64, dec_dim=32, dec_depth=1,
             dec_heads=2, dec_mlp=64)


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("planted")
    write_planted_cache(root / "cache", n=320, planted=PLANTED)
    torch.manual_seed(0)
    encoder = APMAE.from_preset("tiny", **MICRO).save(root / "encoder")  # untrained: distinct patterns still differ
    return {"root": root, "cache": root / "cache", "scenarios": root / "cache" / "synth-scenarios.npz",
            "encoder": encoder}


def probe_data(planted: dict[str, Path], **overrides) -> AttentionCacheDataModule:
    args = dict(target="synth", scenarios=str(planted["scenarios"]), cache_dir=str(planted["cache"]),
                mode="scenarios", balance=True, batch_size=16, encoder=EncoderSettings(path=str(planted["encoder"])),
                extraction=ExtractionSettings(progress=False))
    return AttentionCacheDataModule(**{**args, **overrides})


def fit_probe(planted: dict[str, Path], out: Path, epochs: int = 30) -> tuple[L.Trainer, LitProbe]:
    L.seed_everything(0)
    model = LitProbe(seq_len=32, encoder=str(planted["encoder"]), importance_steps=8,
                     recipe=TrainingRecipe(lr=1e-2, export_dir=str(out)))
    trainer = L.Trainer(max_epochs=epochs, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(model, datamodule=probe_data(planted))
    return trainer, model


def test_planted_head_is_found_and_probe_is_far_above_chance(planted, tmp_path) -> None:
    trainer, model = fit_probe(planted, tmp_path / "probe")
    metrics = trainer.callback_metrics
    assert float(metrics["val/probe/all/balanced_accuracy"]) >= 0.9
    # previous-token band vs first-token sink: the planted head's first-token mass and distance tell them apart
    assert float(metrics["val/stats_probe/all/balanced_accuracy"]) >= 0.9
    assert float(metrics["val/majority/all/balanced_accuracy"]) == pytest.approx(0.5)
    importance = read_head_table(tmp_path / "probe" / "importance.csv", "importance", n_layers=2, n_heads=4)
    top = np.unravel_index(np.argmax(np.abs(importance)), importance.shape)
    assert tuple(int(i) for i in top) == PLANTED
    ig = read_head_table(tmp_path / "probe" / "integrated_gradients.csv", "importance", n_layers=2, n_heads=4)
    assert tuple(int(i) for i in np.unravel_index(np.argmax(np.abs(ig)), ig.shape)) == PLANTED
    assert (tmp_path / "probe" / "heatmap.png").stat().st_size > 0
    assert model.head_importance.shape == (2, 4)
    # the sign: the planted head pushes correct scenarios toward "correct" and incorrect ones away from it
    features, _ = model._collected.kept_features()
    correct = torch.cat(model._collected.correct)[: len(features)]
    probe, reference = model.probe.probes["probe"], model.probe.reference
    on_correct = mean_replacement_importance(probe, features[correct], reference)
    on_incorrect = mean_replacement_importance(probe, features[~correct], reference)
    assert float(on_correct[PLANTED]) > 0 > float(on_incorrect[PLANTED])
    # and it does so more than any other head, on each class
    assert float(on_correct[PLANTED]) == float(on_correct.max())
    assert float(on_incorrect[PLANTED]) == float(on_incorrect.min())


def test_encodings_are_stored_once_and_reused(planted) -> None:
    data = probe_data(planted)
    data.prepare_data()
    data.setup("fit")
    files = sorted(planted["cache"].glob("synth.*.rank0.h5"))  # <cache>.<encoder hash>.rank0.h5, beside the cache
    assert len(files) == 1
    stamp = files[0].stat().st_mtime_ns
    again = probe_data(planted)
    again.setup("fit")
    assert files[0].stat().st_mtime_ns == stamp  # read, not recomputed
    batch = next(iter(again.train_dataloader()))
    assert batch["cls"].shape == (16, 2, 4, 32) and batch["stats"].shape == (16, 2, 4, 4)
    assert "images" not in batch
    # balanced per task: as many correct as incorrect training scenarios
    rows = again.dataset("synth", "train").rows
    enc = again.encodings["synth"]
    for t in np.unique(enc.task[rows]):
        sel = rows[enc.task[rows] == t]
        assert enc.correct[sel].sum() * 2 == len(sel)


def test_encoder_of_another_sequence_length_is_refused(planted, tmp_path) -> None:
    other = APMAE.from_preset("tiny", **{**MICRO, "seq_len": 64}).save(tmp_path / "enc64")
    with pytest.raises(ValueError, match="S=64"):
        LitProbe(seq_len=32, encoder=str(other))


def test_unknown_task_is_refused(planted) -> None:
    data = probe_data(planted, tasks=["identifiers", "lambdas"])
    data.setup("fit")
    with pytest.raises(ValueError, match="lambdas"):
        data.train_dataloader()


def test_one_class_split_is_a_clear_error(planted) -> None:
    data = probe_data(planted, correct_only=True)
    data.setup("fit")
    with pytest.raises(ValueError, match="both correct and incorrect"):
        data.train_dataloader()


def test_per_task_importance_splits_the_global_importance_by_task(planted, tmp_path) -> None:
    trainer, model = fit_probe(planted, tmp_path / "probe", epochs=2)
    (loader,) = trainer.datamodule.val_dataloader()
    task = torch.cat([batch["task"] for batch in loader]).long()  # every val scenario (fewer than 512 are kept)
    names = trainer.datamodule.task_names
    by_task = model.head_importance_by_task
    assert set(by_task) == {names[int(t)] for t in torch.unique(task)}
    assert all(v.shape == (2, 4) for v in by_task.values())
    # mean-replacement importance is a mean over scenarios: the task means weighted by task size give it back
    weighted = sum((task == names.index(name)).sum() * value for name, value in by_task.items()) / len(task)
    torch.testing.assert_close(weighted.float(), model.head_importance, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(*by_task.values())  # the tasks are ranked apart, not copies of one ranking
    model.on_load_checkpoint({"state_dict": {}})
    assert model.head_importance_by_task is None  # a checkpoint keeps the global ranking only


def test_test_split_gets_intervals_and_paired_tests_of_every_predictor(planted, tmp_path) -> None:
    trainer, model = fit_probe(planted, tmp_path / "probe", epochs=3)
    trainer.test(model, datamodule=probe_data(planted), verbose=False)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    scores, uncertainty = model.probe_scores.scores, model.probe_scores.uncertainty
    for name in ("probe", "stats_probe", "confidence", "probe_confidence"):
        for metric in ("balanced_accuracy", "auroc"):
            value = metrics[f"test/{name}/all/{metric}"]
            low, high = metrics[f"test/{name}/all/{metric}/ci_low"], metrics[f"test/{name}/all/{metric}/ci_high"]
            assert low <= value + 1e-6 and value <= high + 1e-6
            assert uncertainty[name]["all"].estimates[metric] == pytest.approx(getattr(scores[name]["all"], metric),
                                                                              abs=1e-6)
    p = metrics["test/probe/all/auroc/p_vs_stats_probe"]
    assert p == pytest.approx(uncertainty["probe"]["all"].tests["stats_probe"]["auroc"].p_value, abs=1e-6)
    assert 0 < p <= 1
    assert {"test/probe/all/balanced_accuracy/p_vs_confidence",
            "test/probe_confidence/all/auroc/p_vs_confidence"} <= set(metrics)
    rows = (tmp_path / "probe" / "test_paired_tests.csv").read_text().splitlines()
    assert rows[0] == "predictor,other,task,metric,difference,ci_low,ci_high,p_value"
    assert len(rows) == 1 + 3 * 2 * len(uncertainty["probe"])  # three comparisons, two metrics, every task
    assert (tmp_path / "probe" / "test_intervals.csv").is_file() and model.probe_scores.bootstrap_seconds > 0


def test_too_few_resamples_are_refused_before_the_encoder_loads(tmp_path) -> None:
    with pytest.raises(ValueError, match="bootstrap_resamples=10: use 0"):
        LitProbe(seq_len=32, encoder=str(tmp_path / "not-there"), bootstrap_resamples=10)


def test_encodings_of_another_encoder_are_refused(planted, tmp_path) -> None:
    """The DataModule serves encodings of one AP-MAE; a probe built on another would read them as its own."""
    torch.manual_seed(1)
    other = APMAE.from_preset("tiny", **MICRO).save(tmp_path / "other")
    model = LitProbe(seq_len=32, encoder=str(other), importance_steps=2, recipe=TrainingRecipe(lr=1e-2))
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    data = probe_data(planted)
    with pytest.raises(ValueError, match=r"serves encodings of encoder [0-9a-f]{16} but the probe's encoder is "
                                         r"[0-9a-f]{16}: point data.encoder.path and model.encoder at the same"):
        trainer.fit(model, datamodule=data)
    assert data.encoder_hash != encoder_hash(model.net)


def test_a_seeded_probe_fit_run_twice_gives_identical_metrics_and_weights(planted, tmp_path) -> None:
    runs = []
    for k in range(2):
        trainer, model = fit_probe(planted, tmp_path / str(k), epochs=3)  # seeds everything with 0
        runs.append(({name: float(v) for name, v in trainer.callback_metrics.items()}, model.probe.state_dict()))
    (metrics_a, weights_a), (metrics_b, weights_b) = runs
    assert "val/probe/all/balanced_accuracy" in metrics_a
    assert metrics_a.keys() == metrics_b.keys()
    for name in metrics_a:  # exact; NaN (a metric undefined on these rows) must be NaN both times
        assert metrics_a[name] == metrics_b[name] or (np.isnan(metrics_a[name]) and np.isnan(metrics_b[name])), name
    assert all(torch.equal(weights_a[name], weights_b[name]) for name in weights_a)
    np.testing.assert_array_equal(
        read_head_table(tmp_path / "0" / "importance.csv", "importance"),
        read_head_table(tmp_path / "1" / "importance.csv", "importance"))


def test_a_fit_sets_its_num_threads_and_gives_the_process_its_own_back(planted, tmp_path) -> None:
    seen = []

    class Record(L.Callback):
        def on_train_start(self, trainer, module):
            seen.append(torch.get_num_threads())

    model = LitProbe(seq_len=32, encoder=str(planted["encoder"]), importance_steps=8,
                     recipe=TrainingRecipe(export_dir=str(tmp_path), num_threads=2))
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        limit_train_batches=1, limit_val_batches=1, callbacks=[Record()])
    trainer.fit(model, datamodule=probe_data(planted))
    assert seen == [2]  # the fit runs on its own setting
    assert torch.get_num_threads() == 1  # and the next fit in this process starts on the process's (the fixture's 1)
