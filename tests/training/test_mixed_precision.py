"""Lightning stages in reduced precision: CLI fit -> MLflow, validate/test from the checkpoint,
float32 metrics and baseline, float32 figures, and the paper command on local stand-ins."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer

from apmae.lit_models.training import TrainingRecipe
from apmae.cli import cli_main
from apmae.callbacks.pattern_figures import PatternFigures
from apmae.lit_models.apmae_module import LitAPMAE
from tests.cache.helpers import micro_starcoder2, save_target
from tests.training.conftest import MICRO_NET
from tests.training.synthetic import SyntheticAttentionDataModule

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
NO_CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
PRECISIONS = [
    pytest.param("cpu", "bf16-mixed", id="cpu-bf16-mixed"),
    pytest.param("gpu", "bf16-mixed", id="gpu-bf16-mixed", marks=[pytest.mark.gpu, NO_CUDA]),
    pytest.param("gpu", "16-mixed", id="gpu-16-mixed", marks=[pytest.mark.gpu, NO_CUDA]),
]


@pytest.mark.slow  # three CLI runs: ~20 s on two idle cores
@pytest.mark.parametrize(("accelerator", "precision"), PRECISIONS)
def test_mixed_precision_fit_logs_the_usual_run_and_its_checkpoint_validates_and_tests(
    accelerator, precision, synth_config, tmp_path, tracking_uri
):
    from mlflow import MlflowClient
    from safetensors.torch import load_file

    common = ["--config", str(synth_config), "--trainer.default_root_dir", str(tmp_path / "runs"),
              "--trainer.accelerator", accelerator, "--trainer.precision", precision]
    cli = cli_main(["fit", *common])
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name("synthetic-tests")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED" and run.data.params["trainer.precision"] == precision
    metrics = run.data.metrics
    for name in ("synth-a", "synth-b"):
        assert 0 < metrics[f"val/{name}/mse"] < 1 and 0 < metrics[f"val/{name}/baseline_mse"] < 1
        assert metrics[f"val/{name}/mse_over_baseline"] == pytest.approx(
            metrics[f"val/{name}/mse"] / metrics[f"val/{name}/baseline_mse"], rel=1e-5)
    assert math.isfinite(metrics["train/loss_step"]) and metrics["val/loss"] == metrics["val/synth-a/mse"]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "figures", "apmae_net"} <= artifacts

    # Weights, optimiser state, baseline and metric states stay float32; only activations are reduced.
    module = cli.model
    train_images = cli.datamodule.train.data["images"]
    assert module.baseline_mean.dtype == torch.float32
    torch.testing.assert_close(module.baseline_mean.cpu(), train_images.mean(dim=0, keepdim=True), rtol=0, atol=1e-6)
    meters = [m for pair in module._metrics.values() for m in pair.values()]
    states = [getattr(m, s) for m in meters for s in ("mean_value", "weight")]
    assert {t.dtype for t in states} == {torch.float32}
    adam = [t for state in cli.trainer.optimizers[0].state.values() for t in state.values() if t.ndim > 0]
    assert adam and {t.dtype for t in adam} == {torch.float32}
    exported = load_file(str(module.export_path() / "model.safetensors"))
    assert {t.dtype for t in exported.values()} == {torch.float32}

    ckpt = cli.trainer.checkpoint_callback.last_model_path
    val = cli_main(["validate", *common, "--ckpt_path", ckpt]).trainer.callback_metrics
    assert float(val["val/loss"]) == pytest.approx(metrics["val/loss"], rel=1e-6)
    test = cli_main(["test", *common, "--ckpt_path", ckpt]).trainer.callback_metrics
    for name in ("synth-a", "synth-b"):  # the synthetic test split is the validation split
        assert float(test[f"test/{name}/mse"]) == pytest.approx(float(val[f"val/{name}/mse"]), rel=1e-6)
    # the reduced-precision MSE is the float32 MSE of the same weights up to bf16 rounding of activations,
    # and the baseline, computed in float32 either way, is the same number
    full = cli_main(["validate", *common, "--trainer.precision", "32", "--ckpt_path", ckpt]).trainer.callback_metrics
    for name in ("synth-a", "synth-b"):
        assert float(full[f"val/{name}/mse"]) == pytest.approx(metrics[f"val/{name}/mse"], rel=0.05)
        assert float(full[f"val/{name}/baseline_mse"]) == pytest.approx(metrics[f"val/{name}/baseline_mse"], rel=1e-5)


def test_figures_run_under_the_trainer_precision_and_matplotlib_gets_float32(tmp_path, monkeypatch):
    import matplotlib.axes

    shown, autocast_on = [], []
    real_imshow = matplotlib.axes.Axes.imshow
    monkeypatch.setattr(matplotlib.axes.Axes, "imshow",
                        lambda ax, array, **kw: shown.append(array) or real_imshow(ax, array, **kw))
    module = LitAPMAE(seq_len=32, net_overrides=dict(MICRO_NET))
    callback = PatternFigures(num_heads=1, grid_layers=1, grid_heads=1)
    original = callback._log_figures

    def log_and_watch(trainer, pl_module, epoch):
        handle = pl_module.net.register_forward_hook(
            lambda *_: autocast_on.append(torch.is_autocast_enabled("cpu")))
        try:
            original(trainer, pl_module, epoch)
        finally:
            handle.remove()

    monkeypatch.setattr(callback, "_log_figures", log_and_watch)
    trainer = Trainer(accelerator="cpu", devices=1, precision="bf16-mixed", max_epochs=1, logger=False,
                      enable_progress_bar=False, enable_checkpointing=False, enable_model_summary=False,
                      num_sanity_val_steps=0, default_root_dir=tmp_path, callbacks=[callback])
    trainer.fit(module, datamodule=SyntheticAttentionDataModule(seq_len=32, n_train=8, n_val=8, batch_size=8))
    assert autocast_on == [True]  # one reconstruction pass, under bf16 autocast
    assert len(shown) == 4 + 1  # a head figure's four panels and a one-cell grid
    assert all(type(a).__name__ == "ndarray" and a.dtype.name == "float32" for a in shown)
    assert len(callback.logged) == 2 and all((tmp_path / p).stat().st_size > 1000 for p in callback.logged)


def _java_dir(folder: Path) -> Path:
    """Generated Java files long enough for 256-token prompts."""
    from apmae.demo.corpus import write_corpus

    write_corpus(folder, 30, seed=0)
    return folder


@pytest.mark.slow
def test_the_paper_command_runs_to_the_end_under_bf16_mixed(tmp_path, tiny_tokenizer, tracking_uri):
    from mlflow import MlflowClient

    tokenizer = tmp_path / "tokenizer"
    tiny_tokenizer.save_pretrained(tokenizer)
    target_a = save_target(micro_starcoder2(len(tiny_tokenizer), seed=0), tiny_tokenizer, tmp_path / "target-a")
    target_b = save_target(micro_starcoder2(len(tiny_tokenizer), seed=1), tiny_tokenizer, tmp_path / "target-b")
    paper = CONFIGS / "paper"
    cli = cli_main([
        "fit", "--config", str(paper / "base.yaml"), "--config", str(paper / "starcoder2_3b.yaml"),
        "--data.init_args.scenarios.init_args.sources", str(_java_dir(tmp_path / "java")),
        "--data.init_args.target", str(target_a), "--data.init_args.extra_targets", f"[{target_b}]",
        "--data.init_args.scenarios.init_args.tokenizer", str(tokenizer),
        "--data.init_args.scenarios.init_args.mining.n_per_task", "4",
        "--data.init_args.scenarios.init_args.mining_workers", "0", "--data.init_args.num_workers", "0",
        "--data.init_args.batch_size", "4", "--data.init_args.extraction.dtype", "float32",
        "--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.strategy", "auto",
        "--trainer.max_steps", "2",
        # Local stand-ins, not part of the command: paths in tmp_path; random micro targets are
        # almost never correct, so correct_only would leave no images; scenarios from more files
        # and a larger validation share, so that 56 scenarios reach the validation split; one short
        # epoch so that validation, figures and the checkpoint run too.
        "--data.init_args.cache_dir", str(tmp_path / "cache"),
        "--data.init_args.scenarios.init_args.cache_dir", str(tmp_path / "scenarios"),
        "--trainer.default_root_dir", str(tmp_path / "runs"),
        "--data.init_args.correct_only", "false",
        "--data.init_args.scenarios.init_args.mining.max_per_file", "1",
        "--data.init_args.scenarios.init_args.mining.splits", "[0.5, 0.5, 0.0]",
        "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "2",
        # The paper preset's widths, heads and patch grid, with 2 + 1 blocks instead of 24 + 8: the full
        # 127 M parameters also run to the end (~75 s here) but write ~2.5 GB of checkpoint and export.
        "--model.init_args.net_overrides", "{enc_depth: 2, dec_depth: 1}",
    ])
    trainer = cli.trainer
    assert trainer.global_step == 2 and trainer.precision == "bf16-mixed"
    net = cli.model.net.config
    assert (net.seq_len, net.patch_size, net.enc_dim, net.enc_heads, net.enc_head_dim) == (256, 32, 512, 16, 64)
    client = MlflowClient(tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("paper-apmae").experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == "target-a/starcoder2-3b"  # the paper config, run on another target
    for name in ("target-a", "target-b"):
        assert 0 < run.data.metrics[f"val/{name}/mse"] < 1
    assert Path(trainer.checkpoint_callback.last_model_path).is_file()
    figures = {a.path for a in client.list_artifacts(run.info.run_id, "figures/epoch_0000")}
    assert "figures/epoch_0000/grid.png" in figures
    assert {a.path for a in client.list_artifacts(run.info.run_id, "apmae_net")} == {
        "apmae_net/config.json", "apmae_net/model.safetensors"}


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_fused_optimizer_gradients_are_clipped_to_the_norm_under_every_cpu_precision(precision):
    module = LitAPMAE(seq_len=32, net_overrides=MICRO_NET, recipe=TrainingRecipe(lr=1e-3))
    trainer = Trainer(accelerator="cpu", precision=precision, gradient_clip_val=0.5, logger=False,
                      enable_checkpointing=False, enable_progress_bar=False)
    module.trainer = trainer
    optimizer = module.configure_optimizers()["optimizer"]
    assert optimizer.defaults["fused"] is True  # no loss scaler on a CPU: the fused kernel is kept
    params = [p for p in module.parameters() if p.requires_grad]
    for i, p in enumerate(params):
        p.grad = torch.full_like(p, float(i % 3 + 1))
    before = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in params]))
    direction = [p.grad / before for p in params]
    module.configure_gradient_clipping(optimizer, 0.5, "norm")
    after = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in params]))
    assert before > 10 and after == pytest.approx(0.5, rel=1e-4)
    assert all(torch.allclose(p.grad / after, d, rtol=1e-4) for p, d in zip(params, direction))  # rescaled only
