"""TargetLM: trains the tiny StarCoder2 target of the embedded demo and exports it.

Glossary: B batch, S tokens per row, V vocabulary, F FIM rows of a batch.

The network is a plain ``transformers.Starcoder2ForCausalLM`` (same
architecture family as ``bigcode/starcoder2-3b``, GQA, RoPE); this module adds
the FIM loss, metrics and the export at the end of fit (the optimiser, schedule and
thread count are the shared recipe's, :class:`apmae.lit_models.training.RecipeModule`): model and tokenizer
saved with ``save_pretrained`` into one directory, with
``"attn_implementation": "eager"`` written into ``config.json`` so that
``AutoModelForCausalLM.from_pretrained(dir)`` loads a model whose attentions
can be read, exactly like a hub model.

Metrics: ``train/loss``, ``val/loss`` (next-token cross entropy over all real
tokens, the hole's first token weighted by ``middle_loss_weight``) and
``val/first_token_acc`` (FIM rows: argmax at ``<fim_middle>`` ==
first token of the hole, the scenarios' correctness criterion).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any, Optional

import torch
from lightning.pytorch.utilities import rank_zero_only

from apmae.common.atomic import atomic_dir
from apmae.model.optim import weight_decay_groups
from apmae.lit_models.training import RecipeModule, TrainingRecipe

EXPORT_ATTN = "eager"


def starcoder2_config(*, vocab_size: int, special_id: int, hidden_size: int, num_layers: int, num_heads: int,
                      num_kv_heads: int, intermediate_size: int, max_positions: int, rope_theta: float = 10000.0):
    """A small ``Starcoder2Config``; ``special_id`` (end of text) is bos, eos and pad."""
    from transformers import Starcoder2Config  # import cost ~5 s: only the demo build makes a target

    if hidden_size % num_heads:
        raise ValueError(f"hidden_size={hidden_size} is not a multiple of num_heads={num_heads}")
    if num_heads % num_kv_heads:
        raise ValueError(f"num_heads={num_heads} is not a multiple of num_kv_heads={num_kv_heads}")
    return Starcoder2Config(
        vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=intermediate_size,
        num_hidden_layers=num_layers, num_attention_heads=num_heads, num_key_value_heads=num_kv_heads,
        max_position_embeddings=max_positions, bos_token_id=special_id, eos_token_id=special_id,
        pad_token_id=special_id, initializer_range=0.02, attn_implementation=EXPORT_ATTN,
        rope_parameters={"rope_type": "default", "rope_theta": rope_theta},
    )


def export_pretrained(model, tokenizer, out_dir: str | Path) -> Path:
    """Save ``model`` + ``tokenizer`` into ``out_dir`` atomically (:func:`apmae.common.atomic.atomic_dir`).

    ``config.json`` records ``attn_implementation: eager``. An existing
    ``out_dir`` is replaced.
    """
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        config_path = tmp / "config.json"
        config = json.loads(config_path.read_text())
        config["attn_implementation"] = EXPORT_ATTN
        config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return Path(out_dir)


class TargetLM(RecipeModule):
    """Trains a tiny ``Starcoder2ForCausalLM`` on FIM / left-to-right batches of ``JavaLMDataModule``."""

    EXPORT_NAME = "target_lm"

    def __init__(
        self,
        *,
        tokenizer_dir: str,
        seq_len: int = 320,
        hidden_size: int = 192,
        num_layers: int = 4,
        num_heads: int = 8,
        num_kv_heads: int = 2,
        intermediate_size: int = 768,
        rope_theta: float = 10000.0,
        middle_loss_weight: float = 1.0,
        suffix_aux_weight: float = 0.0,
        recipe: Optional[TrainingRecipe] = None,
        seed: int = 0,
    ) -> None:
        """
        Args:
            tokenizer_dir: the tokenizer directory (vocabulary size and special ids come from it;
                it is exported next to the model).
            seq_len: longest row trained on; the model's context (max positions) is at least this.
            hidden_size: model width.
            num_layers: transformer blocks.
            num_heads: query heads per layer (the heads whose patterns are studied).
            num_kv_heads: key/value heads (grouped-query attention, as in StarCoder2).
            intermediate_size: MLP width.
            rope_theta: RoPE base; a larger base leaves more slowly rotating dimensions, which
                match keys by content (e.g. ``<fim_suffix>``) at any distance.
            middle_loss_weight: weight of the hole's first token (predicted at ``<fim_middle>``, the
                scenarios' criterion) relative to every other token; > 1 spends more of a short
                training on the infilling skill itself.
            suffix_aux_weight: weight of an auxiliary target: the ``<fim_suffix>`` position (the
                first after the prefix) also predicts the hole's first token. It makes the prefix's
                continuation readable at one special token, so ``<fim_middle>`` can learn to copy it
                with one attention hop instead of two; 0 trains plain PSM FIM.
            recipe: the optimiser, schedule and process settings (:class:`apmae.lit_models.training.TrainingRecipe`:
                AdamW on matrices' weight decay, not on norms; ``lr`` is the absolute peak rate, else
                ``base_lr`` is scaled by the batch; linear warm-up over ``warmup_fraction`` of the
                trainer's steps, then cosine down to ``min_lr_ratio``). ``export_dir`` is where
                ``on_fit_end`` saves model + tokenizer (default ``target_lm/`` next to the checkpoints).
            seed: seed of the weight initialisation.
        """
        settings = TrainingRecipe.of(recipe)
        super().__init__(recipe=settings)
        if seq_len < 8:
            raise ValueError(f"seq_len={seq_len} is too short for FIM rows; use at least 8")
        if suffix_aux_weight < 0:
            raise ValueError(f"suffix_aux_weight={suffix_aux_weight} must be >= 0")
        if middle_loss_weight <= 0:
            raise ValueError(f"middle_loss_weight={middle_loss_weight} must be positive")
        recipe = asdict(settings)  # the checkpoint keeps plain values (a weights_only load refuses dataclasses)
        self.save_hyperparameters()
        from transformers import AutoTokenizer, Starcoder2ForCausalLM  # import cost, as above

        self.tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
        special = self.tokenizer.convert_tokens_to_ids(self.tokenizer.eos_token)
        config = starcoder2_config(
            vocab_size=len(self.tokenizer), special_id=special, hidden_size=hidden_size, num_layers=num_layers,
            num_heads=num_heads, num_kv_heads=num_kv_heads, intermediate_size=intermediate_size,
            max_positions=seq_len, rope_theta=rope_theta,
        )
        # training uses the fused kernel; the export records eager for attention reading
        config._attn_implementation = "sdpa"
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            self.model = Starcoder2ForCausalLM(config)

    def parameter_groups(self) -> list[dict[str, Any]]:
        """Weight decay on matrices, none on norms."""
        return weight_decay_groups(self.model.named_parameters(), self.recipe.weight_decay,
                                   no_decay=lambda n: "norm" in n)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B, S, V)."""
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits

    def lm_loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Weighted next-token cross entropy and the logits (B, S, V).

        Position t predicts token t + 1; the ``<fim_middle>`` position predicts
        the hole's first token and weighs ``middle_loss_weight``; padding weighs 0.
        """
        logits = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        targets = batch["labels"][:, 1:]  # (B, S-1)
        ce = torch.nn.functional.cross_entropy(
            logits[:, :-1].flatten(0, 1).float(), targets.flatten(), ignore_index=-100, reduction="none"
        ).view_as(targets)  # (B, S-1)
        positions = torch.arange(targets.shape[1], device=targets.device)  # (S-1,)
        pos = batch["middle_pos"].unsqueeze(1)  # (B, 1), -1 for plain rows
        first = positions == pos  # (B, S-1), never true for plain rows
        weight = (targets != -100).float() * torch.where(first, self.hparams.middle_loss_weight, 1.0)
        total, norm = (ce * weight).sum(), weight.sum()
        rows = torch.nonzero(batch["middle_pos"] >= 0).squeeze(-1)  # (F,) FIM rows
        if self.hparams.suffix_aux_weight > 0 and len(rows):
            suffix_logits = logits[rows, batch["suffix_pos"][rows]]  # (F, V)
            first_tokens = batch["input_ids"][rows, batch["middle_pos"][rows] + 1]  # (F,)
            aux = torch.nn.functional.cross_entropy(suffix_logits.float(), first_tokens, reduction="sum")
            total, norm = total + self.hparams.suffix_aux_weight * aux, norm + self.hparams.suffix_aux_weight * len(rows)
        return total / norm.clamp_min(1.0), logits

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss, _ = self.lm_loss(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["input_ids"]))
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        loss, logits = self.lm_loss(batch)
        n = len(batch["input_ids"])
        self.log("val/loss", loss, prog_bar=True, batch_size=n)
        rows = torch.nonzero(batch["middle_pos"] >= 0).squeeze(-1)  # (F,) FIM rows
        if len(rows):
            pos = batch["middle_pos"][rows]
            predicted = logits[rows, pos].argmax(-1)  # (F,)
            correct = (predicted == batch["input_ids"][rows, pos + 1]).float().mean()
            self.log("val/first_token_acc", correct, prog_bar=True, batch_size=len(rows))

    def on_fit_end(self) -> None:
        self.export(self.export_path())

    @rank_zero_only
    def export(self, out_dir: str | Path) -> Path:
        """Save model + tokenizer loadable with ``AutoModelForCausalLM.from_pretrained(out_dir)``."""
        return export_pretrained(self.model, self.tokenizer, out_dir)
