"""TargetLM: a few steps lower the loss; the export reloads offline with identical logits and attentions."""

from __future__ import annotations

import json

import pytest
import torch

from tests.demo.conftest import MICRO


@pytest.fixture()
def micro(tokenizer_dir):
    from apmae.lit_models.target_lm import TargetLM

    from apmae.lit_models.training import TrainingRecipe

    recipe = TrainingRecipe(lr=1e-2, weight_decay=0.1, warmup_fraction=0.1, min_lr_ratio=0.1, fused=False)
    return TargetLM(tokenizer_dir=str(tokenizer_dir), seq_len=160, recipe=recipe, **MICRO)


@pytest.fixture()
def batch(corpus_dir, tokenizer_dir):
    from apmae.datamodules.java_lm import JavaLMDataModule

    dm = JavaLMDataModule(corpus_dir=str(corpus_dir), tokenizer_dir=str(tokenizer_dir), seq_len=160,
                          context_len=128, batch_size=8, train_samples=8, val_samples=8)
    dm.setup("fit")
    return next(iter(dm.train_dataloader()))


def test_a_few_steps_lower_the_loss(micro, batch):
    optimizer = torch.optim.AdamW(micro.parameter_groups(), lr=micro.learning_rate())
    rows = {k: v[:4] for k, v in batch.items()}
    losses = []
    for _ in range(10):
        loss = micro.model(input_ids=rows["input_ids"], attention_mask=rows["attention_mask"],
                           labels=rows["labels"]).loss
        losses.append(loss.item())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert losses[-1] < 0.8 * losses[0]


def test_unweighted_loss_equals_the_hugging_face_loss_and_weights_move_it(micro, batch):
    with torch.no_grad():
        reference = micro.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                labels=batch["labels"]).loss
        loss, logits = micro.lm_loss(batch)
        assert logits.shape == (*batch["input_ids"].shape, len(micro.tokenizer))
        assert loss.item() == pytest.approx(reference.item(), rel=1e-5)
        micro.hparams.middle_loss_weight = 50.0
        weighted, _ = micro.lm_loss(batch)
    assert (batch["middle_pos"] >= 0).any()
    assert weighted.item() != pytest.approx(loss.item(), rel=1e-3)


def test_suffix_aux_loss_adds_the_first_hole_token_at_fim_suffix(micro, batch):
    """Second computation of the auxiliary term: per FIM row, CE of the <fim_suffix> logits vs the hole's first token."""
    with torch.no_grad():
        plain, logits = micro.lm_loss(batch)
        targets = batch["labels"][:, 1:]
        n_tokens = (targets != -100).sum().item()
        micro.hparams.suffix_aux_weight = 3.0
        with_aux, _ = micro.lm_loss(batch)
        aux = []
        for b in range(len(batch["input_ids"])):
            m, s = batch["middle_pos"][b].item(), batch["suffix_pos"][b].item()
            if m >= 0:
                first = batch["input_ids"][b, m + 1]
                aux.append(torch.nn.functional.cross_entropy(logits[b, s][None], first[None]).item())
    expected = (plain.item() * n_tokens + 3.0 * sum(aux)) / (n_tokens + 3.0 * len(aux))
    assert aux and with_aux.item() == pytest.approx(expected, rel=1e-4)


def test_fit_follows_the_recipe_and_exports(micro, corpus_dir, tokenizer_dir, tmp_path):
    """A fit through Lightning: AdamW as the recipe says (per-tensor kernel, decay on matrices only), the LR
    warmed up over 10 % of the trainer's 20 steps then cosine down to the floor, the export at fit's end."""
    from dataclasses import replace

    from lightning.pytorch import Callback, Trainer

    from apmae.datamodules.java_lm import JavaLMDataModule
    from apmae.model.schedules import warmup_cosine

    class Rates(Callback):
        def __init__(self) -> None:
            self.rates: list[float] = []

        def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
            self.rates.append(trainer.optimizers[0].param_groups[0]["lr"])

    micro.recipe = replace(micro.recipe, export_dir=str(tmp_path / "export"))
    rates = Rates()
    dm = JavaLMDataModule(corpus_dir=str(corpus_dir), tokenizer_dir=str(tokenizer_dir), seq_len=160,
                          context_len=128, batch_size=2, train_samples=40, val_samples=2)
    trainer = Trainer(max_steps=20, accelerator="cpu", logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0, callbacks=[rates])
    trainer.fit(micro, datamodule=dm)
    optimizer = trainer.optimizers[0]
    assert not optimizer.defaults["fused"]
    decays = sorted(group["weight_decay"] for group in optimizer.param_groups)
    assert decays == [0.0, 0.1]
    expected = [1e-2 * warmup_cosine(s, warmup_steps=2, total_steps=20, min_ratio=0.1) for s in range(20)]
    assert rates.rates == pytest.approx(expected)
    assert rates.rates[0] == pytest.approx(5e-3) and rates.rates[1] == pytest.approx(1e-2)
    assert all(a >= b for a, b in zip(rates.rates[1:], rates.rates[2:])) and rates.rates[-1] < 1.1e-3
    assert (tmp_path / "export" / "config.json").is_file()


def test_export_reloads_offline_with_identical_logits_and_eager_attentions(micro, batch, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = micro.export(tmp_path / "target")
    config = json.loads((out / "config.json").read_text())
    assert config["attn_implementation"] == "eager" and config["model_type"] == "starcoder2"
    loaded = AutoModelForCausalLM.from_pretrained(out).eval()
    assert loaded.config._attn_implementation == "eager"
    assert AutoTokenizer.from_pretrained(out).get_vocab() == micro.tokenizer.get_vocab()
    original = micro.model.eval()
    original.set_attn_implementation("eager")
    ids = batch["input_ids"][:2, :64]
    with torch.no_grad():
        a = original(input_ids=ids, output_attentions=True)
        b = loaded(input_ids=ids, output_attentions=True)
    assert torch.equal(a.logits, b.logits)
    assert len(b.attentions) == MICRO["num_layers"]
    assert b.attentions[0].shape == (2, MICRO["num_heads"], 64, 64)
    for x, y in zip(a.attentions, b.attentions):
        assert torch.equal(x, y)
    assert torch.allclose(b.attentions[1].sum(-1), torch.ones(2, MICRO["num_heads"], 64), atol=1e-5)


def test_bad_model_shapes_raise(tokenizer_dir):
    from apmae.lit_models.target_lm import TargetLM

    with pytest.raises(ValueError, match="num_heads"):
        TargetLM(tokenizer_dir=str(tokenizer_dir), hidden_size=30, num_heads=4)
    with pytest.raises(ValueError, match="num_kv_heads"):
        TargetLM(tokenizer_dir=str(tokenizer_dir), hidden_size=32, num_heads=4, num_kv_heads=3)
    with pytest.raises(ValueError, match="suffix_aux_weight"):
        TargetLM(tokenizer_dir=str(tokenizer_dir), suffix_aux_weight=-1.0)
    with pytest.raises(TypeError, match="warmup_steps"):  # the recipe's warmup_fraction took its place
        TargetLM(tokenizer_dir=str(tokenizer_dir), warmup_steps=10)


def test_rope_theta_reaches_the_exported_config(tokenizer_dir, tmp_path):
    from transformers import AutoConfig

    from apmae.lit_models.target_lm import TargetLM

    module = TargetLM(tokenizer_dir=str(tokenizer_dir), seq_len=64, rope_theta=123456.0, **MICRO)
    config = AutoConfig.from_pretrained(module.export(tmp_path / "target"))
    assert config.rope_parameters["rope_theta"] == 123456.0
