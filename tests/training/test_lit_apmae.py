"""LitAPMAE: loss bookkeeping, baseline, cross-target ratios, optimiser recipe, export."""

from __future__ import annotations

import inspect
import math

import pytest
import torch
from lightning.pytorch import Trainer, seed_everything

from apmae.lit_models.training import TrainingRecipe
from apmae.model.baselines import band_neighbours, neighbour_patches
from apmae.model.net import APMAE, APMAEConfig, masked_error
from apmae.model.schedules import warmup_cosine
from apmae.lit_models.apmae_module import LitAPMAE
from tests.training.conftest import MICRO_NET
from tests.training.synthetic import SyntheticAttentionDataModule, causal_patterns


def _module(seq_len: int = 32, **kwargs) -> LitAPMAE:
    return LitAPMAE(seq_len=seq_len, net_overrides=dict(MICRO_NET), **kwargs)


def _trainer(tmp_path, **kwargs) -> Trainer:
    defaults = dict(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                    enable_model_summary=False, enable_checkpointing=False, default_root_dir=tmp_path)
    return Trainer(**{**defaults, **kwargs})


def test_masked_error_agrees_with_model_loss():
    module = _module()
    images = causal_patterns(4, 32, seed=3)["images"]
    out = module.net(images, noise=module.fixed_noise(4, 0, 0))
    err = masked_error(out.pred, out.patches, out.mask, out.valid)
    assert torch.allclose(err.mse, out.loss, rtol=1e-6)
    # Masked valid pixels: 5 of the 10 patches of a 4x4 grid of 8x8 patches per image, 64 pixels each,
    # except diagonal patches (0, 2, 5, 9 in row-major triangle order), which keep 8 * 9 / 2 = 36.
    masked_diagonal = int(out.mask[:, [0, 2, 5, 9]].sum())
    assert err.count == 4 * 5 * 64 - masked_diagonal * (64 - 36)


def test_fixed_noise_repeats_per_batch_and_differs_between_batches():
    module = _module()
    assert torch.equal(module.fixed_noise(3, 5, 1), module.fixed_noise(3, 5, 1))
    assert not torch.equal(module.fixed_noise(3, 5, 1), module.fixed_noise(3, 6, 1))
    assert not torch.equal(module.fixed_noise(3, 5, 0), module.fixed_noise(3, 5, 1))


def test_warmup_cosine_schedule_values():
    kw = dict(warmup_steps=4, total_steps=104, min_ratio=0.1)
    assert warmup_cosine(0, **kw) == pytest.approx(0.25)
    assert warmup_cosine(3, **kw) == pytest.approx(1.0)
    assert warmup_cosine(4, **kw) == pytest.approx(1.0)
    assert warmup_cosine(54, **kw) == pytest.approx(0.55)  # half way down the cosine
    assert warmup_cosine(104, **kw) == pytest.approx(0.1)
    assert warmup_cosine(0, warmup_steps=0, total_steps=10, min_ratio=0.0) == pytest.approx(1.0)


def test_net_seq_len_mismatch_is_a_clear_error():
    net = APMAE(APMAEConfig.preset("tiny", seq_len=64, **MICRO_NET))
    with pytest.raises(ValueError, match="seq_len 64 but the data has seq_len 32"):
        LitAPMAE(seq_len=32, net=net)
    with pytest.raises(ValueError, match="remove seq_len from net_overrides"):
        LitAPMAE(seq_len=32, net_overrides={**MICRO_NET, "seq_len": 64})
    assert LitAPMAE(seq_len=64, net=net).net is net
    assert _module(seq_len=48).net.config.seq_len == 48


def test_lr_scales_with_effective_batch_and_norms_get_no_decay(tmp_path):
    data = SyntheticAttentionDataModule(seq_len=32, n_train=16, n_val=8, batch_size=4)
    module = _module(recipe=TrainingRecipe(base_lr=1e-3, lr_reference_batch=16, weight_decay=0.05))
    trainer = _trainer(tmp_path, max_steps=1, accumulate_grad_batches=2, limit_val_batches=0)
    trainer.fit(module, datamodule=data)
    groups = trainer.optimizers[0].param_groups
    assert [g["initial_lr"] for g in groups] == pytest.approx([1e-3 * 4 * 2 / 16] * 2)
    decay = {id(p) for p in groups[0]["params"]}
    assert groups[0]["weight_decay"] == 0.05 and groups[1]["weight_decay"] == 0.0
    assert all(id(p) not in decay for n, p in module.net.named_parameters() if p.ndim < 2)
    assert module.learning_rate() == pytest.approx(5e-4)
    assert trainer.optimizers[0].defaults["fused"] is True  # one kernel for all parameters on a CPU


def test_validation_metrics_match_independent_computation(tmp_path):
    data = SyntheticAttentionDataModule(seq_len=32, n_train=24, n_val=12, batch_size=8, extra_targets=["synth-b"])
    module = _module(recipe=TrainingRecipe(lr=1e-3))
    trainer = _trainer(tmp_path, max_epochs=1, num_sanity_val_steps=0)
    trainer.fit(module, datamodule=data)
    metrics = trainer.callback_metrics

    # The baseline is the mean of all 24 training images (3 batches < baseline_batches).
    mean = data.train.data["images"].mean(dim=0, keepdim=True)
    assert torch.allclose(module.baseline_mean, mean, atol=1e-6)
    assert int(module.baseline_images) == 24

    module.eval()
    with torch.no_grad():
        for idx, name in enumerate(["synth-a", "synth-b"]):
            sse = base_sse = near_sse = count = 0.0
            for b, batch in enumerate(data.val_dataloader()[idx]):
                out = module.net(batch["images"], noise=module.image_noise(batch, idx))  # the batch names its images
                err = masked_error(out.pred, out.patches, out.mask, out.valid)
                base = masked_error(module.net.patchify(mean), out.patches, out.mask, out.valid)
                near = neighbour_patches(out.patches, out.mask, out.valid, module.net.patchify(mean),
                                         band_neighbours(module.net.config.grid))
                near_err = masked_error(near, out.patches, out.mask, out.valid)
                sse, base_sse, count = sse + err.sse, base_sse + base.sse, count + err.count
                near_sse = near_sse + near_err.sse
            assert float(metrics[f"val/{name}/mse"]) == pytest.approx(float(sse / count), rel=1e-5)
            assert float(metrics[f"val/{name}/baseline_mse"]) == pytest.approx(float(base_sse / count), rel=1e-5)
            assert float(metrics[f"val/{name}/neighbour_mse"]) == pytest.approx(float(near_sse / count), rel=1e-5)
            assert float(metrics[f"val/{name}/mse_over_neighbour"]) == pytest.approx(
                float(sse / near_sse), rel=1e-5)
    a, b = float(metrics["val/synth-a/mse"]), float(metrics["val/synth-b/mse"])
    assert float(metrics["val/loss"]) == a
    assert float(metrics["val/synth-a/mse_over_train"]) == pytest.approx(1.0)
    assert float(metrics["val/synth-b/mse_over_train"]) == pytest.approx(b / a, rel=1e-5)
    assert float(metrics["val/synth-b/mse_over_baseline"]) == pytest.approx(
        b / float(metrics["val/synth-b/baseline_mse"]), rel=1e-5)


def test_training_lowers_validation_error_and_exports_net(tmp_path):
    data = SyntheticAttentionDataModule(seq_len=32, n_train=64, n_val=16, batch_size=8)
    module = _module(recipe=TrainingRecipe(lr=3e-3, warmup_fraction=0.0, export_dir=str(tmp_path / "export")))
    before = _trainer(tmp_path).validate(module, datamodule=data, verbose=False)[0]["val/loss"]
    trainer = _trainer(tmp_path, max_epochs=4, num_sanity_val_steps=0)
    trainer.fit(module, datamodule=data)
    after = float(trainer.callback_metrics["val/loss"])
    assert after < 0.5 * before

    loaded = APMAE.load(tmp_path / "export")
    images = causal_patterns(2, 32, seed=9)["images"]
    noise = module.fixed_noise(2, 0, 0)
    module.eval()
    with torch.no_grad():
        assert torch.equal(loaded(images, noise=noise).pred, module.net(images, noise=noise).pred)


def test_validate_without_training_data_explains_what_is_missing(tmp_path):
    module = _module()
    loader = SyntheticAttentionDataModule(seq_len=32)
    loader.setup("validate")
    with pytest.raises(ValueError, match="mean-pattern baseline"):
        _trainer(tmp_path).validate(module, dataloaders=loader.val_dataloader()[0], verbose=False)
    assert not math.isnan(float(module.baseline_mean.sum()))


def test_compile_keeps_parameter_names_and_outputs_and_trains(tmp_path, monkeypatch):
    import functools

    import torch._dynamo

    # Dynamo tracing only (backend "eager"): the default backend takes minutes to build kernels on a CPU.
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager"))
    torch._dynamo.reset()
    torch.manual_seed(0)
    compiled = _module(compile=True)
    torch.manual_seed(0)
    eager = _module()
    assert list(compiled.state_dict()) == list(eager.state_dict())
    images = causal_patterns(4, 32, seed=2)["images"]
    noise = compiled.fixed_noise(4, 0, 0)
    with torch.no_grad():
        assert torch.equal(compiled.net(images, noise=noise).pred, eager.net(images, noise=noise).pred)
    assert torch._dynamo.utils.counters["frames"]["ok"] > 0  # the forward went through dynamo
    data = SyntheticAttentionDataModule(seq_len=32, n_train=8, n_val=8, batch_size=4)
    trainer = _trainer(tmp_path, max_steps=2, limit_val_batches=0)
    trainer.fit(compiled, datamodule=data)
    assert trainer.global_step == 2
    torch._dynamo.reset()


PROBE_ONLY = {"stage", "encoder", "finetune_encoder", "probe_features", "probe_hidden", "probe_dropout", "probe_layers",
              "probe_heads", "importance_scenarios", "importance_steps"}


def test_the_constructor_takes_no_probe_argument():
    from apmae.lit_models.probe_module import LitProbe

    assert not set(inspect.signature(LitAPMAE).parameters) & PROBE_ONLY
    assert PROBE_ONLY - {"stage"} <= set(inspect.signature(LitProbe).parameters)
    with pytest.raises(TypeError, match="stage"):
        _module(stage="probe")


def test_checkpoints_of_the_former_combined_module_load_or_name_the_probe_module(tmp_path):
    data = SyntheticAttentionDataModule(seq_len=32, n_train=16, n_val=8, batch_size=4)
    module = _module(recipe=TrainingRecipe(lr=1e-3, export_dir=str(tmp_path / "net")))
    trainer = _trainer(tmp_path, max_steps=2, limit_val_batches=0)
    trainer.fit(module, datamodule=data)
    checkpoint = tmp_path / "old.ckpt"
    trainer.save_checkpoint(checkpoint)
    state = torch.load(checkpoint, weights_only=False)
    # the probe arguments every checkpoint of the former module recorded, at their defaults
    state["hyper_parameters"].update(stage="reconstruct", encoder=None, finetune_encoder=False, probe_features="both",
                                     probe_hidden=64, probe_dropout=0.1, probe_layers=None, probe_heads=None,
                                     importance_scenarios=512, importance_steps=32)
    torch.save(state, checkpoint)
    loaded = LitAPMAE.load_from_checkpoint(checkpoint)
    for name, value in module.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], value, rtol=0, atol=0)
    assert int(loaded.baseline_images) == int(module.baseline_images) > 0
    state["hyper_parameters"]["stage"] = "probe"
    torch.save(state, checkpoint)
    with pytest.raises(ValueError, match=r"load it with apmae\.lit_models\.probe_module\.LitProbe\.load_from_checkpoint"):
        LitAPMAE.load_from_checkpoint(checkpoint)


class _GroupedScenarios(torch.utils.data.Dataset):
    """Validation images three to a scenario, as a head-mode cache serves several heads of one scenario."""

    def __init__(self, inner: torch.utils.data.Dataset) -> None:
        self.inner = inner

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {**self.inner[i], "scenario": torch.tensor(i // 3)}


class _GroupedData(SyntheticAttentionDataModule):
    def val_dataloader(self):
        return [torch.utils.data.DataLoader(_GroupedScenarios(v), batch_size=self.batch_size) for v in self.vals]


def test_error_ratio_intervals_resample_whole_scenarios(tmp_path):
    from apmae.common.stats import ratio_intervals

    data = _GroupedData(seq_len=32, n_train=24, n_val=24, batch_size=8)
    module = _module(bootstrap_resamples=500, recipe=TrainingRecipe(lr=1e-3))
    trainer = _trainer(tmp_path, max_epochs=1, num_sanity_val_steps=0)
    trainer.fit(module, datamodule=data)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    module.eval()
    base = module.net.patchify(module.baseline_mean)
    sse = []
    with torch.no_grad():
        for b, batch in enumerate(data.val_dataloader()[0]):
            noise = module.image_noise(batch, 0)  # the module's masks: per named image, else per batch
            if noise is None:
                noise = module.fixed_noise(batch["images"].shape[0], b, 0)
            out = module.net(batch["images"], noise=noise)
            near = neighbour_patches(out.patches, out.mask, out.valid, base, band_neighbours(module.net.config.grid))
            sse.append(torch.stack([masked_error(p, out.patches, out.mask, out.valid, per_image=True).sse
                                    for p in (out.pred, base, near)]))
    per_scenario = torch.cat(sse, dim=1).reshape(3, 8, 3).sum(2).double().numpy()  # 24 images -> 8 scenarios
    expected = ratio_intervals(per_scenario[0], per_scenario[1:], n_resamples=500)
    for ratio, interval in zip(("mse_over_baseline", "mse_over_neighbour"), expected):
        low, high = metrics[f"val/synth-a/{ratio}/ci_low"], metrics[f"val/synth-a/{ratio}/ci_high"]
        assert (low, high) == (pytest.approx(interval.low, rel=1e-5), pytest.approx(interval.high, rel=1e-5))
        assert low <= metrics[f"val/synth-a/{ratio}"] <= high and low < high
    assert module.bootstrap_seconds > 0


def test_too_few_resamples_for_the_ratio_intervals_are_refused():
    with pytest.raises(ValueError, match="bootstrap_resamples=5: use 0"):
        _module(bootstrap_resamples=5)
    assert _module(bootstrap_resamples=0).hparams.bootstrap_resamples == 0


def test_a_seeded_fit_run_twice_gives_identical_metrics_and_weights(tmp_path):
    runs = []
    for k in range(2):
        seed_everything(7)
        module = _module()
        trainer = _trainer(tmp_path / str(k), max_epochs=2, num_sanity_val_steps=0)
        trainer.fit(module, datamodule=SyntheticAttentionDataModule(seq_len=32, n_train=16, n_val=8, batch_size=4))
        runs.append(({name: float(v) for name, v in trainer.callback_metrics.items()}, module.net.state_dict()))
    (metrics_a, weights_a), (metrics_b, weights_b) = runs
    assert "val/loss" in metrics_a and metrics_a == metrics_b  # exact, not approximate
    assert all(torch.equal(weights_a[name], weights_b[name]) for name in weights_a)
    seed_everything(8)
    other = _module()
    assert not torch.equal(other.net.patch_embed.weight, weights_a["patch_embed.weight"])  # the seed matters


def test_image_noise_follows_the_image_not_its_batch():
    module = _module()
    batch = {"images": torch.zeros(3, 1, 32, 32), "scenario": torch.tensor([4, 9, 4]), "layer": torch.tensor([0, 1, 1]),
             "head": torch.tensor([2, 2, 2])}
    noise = module.image_noise(batch, 0)
    alone = module.image_noise({k: v[1:2] for k, v in batch.items()}, 0)
    assert noise.shape == (3, module.net.num_patches) and torch.equal(noise[1:2], alone)  # any batch, any rank
    assert not torch.equal(noise[0], noise[2])  # another layer of the same scenario: another mask
    assert not torch.equal(noise, module.image_noise(batch, 1))  # another dataloader (target)
    assert module.image_noise({"images": batch["images"]}, 0) is None  # unnamed images: the batch-keyed noise


def test_row_emphasis_masks_the_bottom_row_and_weights_its_loss():
    from apmae.model.row_emphasis import RowEmphasis

    # 4 x 4 grid of 8 x 8 patches: Q = 10, the bottom row is patches 6..9; mask_ratio 0.5 hides 5.
    always = RowEmphasis(mask_probability=1.0)
    module = _module(row_emphasis=always)
    images = causal_patterns(6, 32, seed=4)["images"]
    out = module.net(images, noise=always.noise(6, 4, generator=torch.Generator().manual_seed(0)))
    assert torch.equal(out.mask[:, 6:], torch.ones(6, 4))  # the bottom row is masked in every image
    assert torch.equal(out.mask.sum(1), torch.full((6,), 5.0))  # and the mask keeps its size
    never = RowEmphasis(mask_probability=0.0, loss_weight=1.0)
    assert not never.active and _module(row_emphasis=never).row_emphasis is None
    # weight 1 is plain MAE's loss; weight w counts each masked bottom-row pixel w times
    assert torch.allclose(never.loss(out.pred, out.patches, out.mask, out.valid, 4), out.loss, rtol=1e-6)
    weighted = RowEmphasis(loss_weight=3.0).loss(out.pred, out.patches, out.mask, out.valid, 4)
    sq = (out.pred - out.patches).square() * out.valid * out.mask.unsqueeze(-1)
    count = (out.valid * out.mask.unsqueeze(-1))
    w = torch.tensor([1.0] * 6 + [3.0] * 4).view(1, 10, 1)
    assert torch.allclose(weighted, (sq * w).sum() / (count * w).sum(), rtol=1e-6)


def test_row_emphasis_trains_and_refuses_a_mask_too_small_for_the_row(tmp_path):
    from apmae.model.row_emphasis import RowEmphasis

    with pytest.raises(ValueError, match="raise mask_ratio"):
        LitAPMAE(seq_len=32, net_overrides={**MICRO_NET, "mask_ratio": 0.3},  # hides 3 < 4 bottom-row patches
                 row_emphasis=RowEmphasis(mask_probability=0.5))
    with pytest.raises(ValueError, match="loss_weight"):
        RowEmphasis(loss_weight=0.0)
    data = SyntheticAttentionDataModule(seq_len=32, n_train=32, n_val=8, batch_size=8)
    module = _module(
        row_emphasis={"mask_probability": 0.5, "loss_weight": 2.0}, recipe=TrainingRecipe(lr=3e-3, warmup_fraction=0.0)
    )
    trainer = _trainer(tmp_path, max_epochs=2, num_sanity_val_steps=0)
    trainer.fit(module, datamodule=data)
    assert math.isfinite(float(trainer.callback_metrics["val/loss"]))
    assert module.row_emphasis == RowEmphasis(mask_probability=0.5, loss_weight=2.0)


def test_the_recipe_is_one_argument_an_object_or_a_dict():
    recipe = TrainingRecipe(lr=1e-3)
    assert _module(recipe={"lr": 1e-3}).recipe == recipe == _module(recipe=recipe).recipe
    assert _module().recipe == TrainingRecipe()  # the paper's recipe by default
    with pytest.raises(TypeError, match=r"\['lrr'\] are not TrainingRecipe fields"):
        _module(recipe={"lrr": 1e-3})
    with pytest.raises(TypeError, match="lr"):  # the recipe's fields are no arguments of their own any more
        _module(lr=1e-3)


def test_a_checkpoint_holds_plain_settings_and_loads_with_weights_only(tmp_path):
    """Lightning loads checkpoints with torch's weights_only: the recipe and the row emphasis are kept as dicts."""
    from apmae.model.row_emphasis import RowEmphasis

    data = SyntheticAttentionDataModule(seq_len=32, n_train=16, n_val=8, batch_size=4)
    module = _module(recipe=TrainingRecipe(lr=1e-3, export_dir=str(tmp_path / "net")),
                     row_emphasis=RowEmphasis(mask_probability=0.5))
    trainer = _trainer(tmp_path, max_steps=2, limit_val_batches=0)
    trainer.fit(module, datamodule=data)
    trainer.save_checkpoint(tmp_path / "a.ckpt")
    hparams = torch.load(tmp_path / "a.ckpt", weights_only=True)["hyper_parameters"]
    assert hparams["recipe"]["lr"] == 1e-3 and hparams["row_emphasis"] == {"mask_probability": 0.5, "loss_weight": 1.0}
    loaded = LitAPMAE.load_from_checkpoint(tmp_path / "a.ckpt")
    assert loaded.recipe == module.recipe and loaded.row_emphasis == module.row_emphasis
