"""An outside project on apmae's DataModules: does the scored row's attention entropy predict correctness?

This file stands for a project of its own: it imports apmae as a library, brings its own
LightningModule, and runs it under a plain ``lightning.Trainer``. apmae mines the completion
scenarios from a Java corpus (``JavaScenarioDataModule``) and caches the target model's attention
patterns (``AttentionCacheDataModule``); this module reads, per head, the entropy of the row of
the scored position (the last row: the position that predicts the hole's first token) and fits a
class-weighted logistic regression of "the model's first token is right" on those L x H numbers.
It prints the validation AUROC beside the model's own confidence on the same scenarios.

    python entropy_probe.py --target path/to/model --sources path/to/java [--work work]

Everything apmae writes (scenarios, attention caches) goes under ``--work``; a rerun reuses it.
"""

from __future__ import annotations

import argparse

import lightning as L
import torch
from torch import nn
from torchmetrics.classification import BinaryAUROC

from apmae.datamodules.attention_cache import AttentionCacheDataModule
from apmae.datamodules.java_scenarios import JavaScenarioDataModule
from apmae.mining.scenario_set import SPLITS


def scored_row_entropy(images: torch.Tensor) -> torch.Tensor:
    """(B, L*H, 1, S, S) raw attention -> (B, L*H): entropy (nats) of each head's last row."""
    row = images[:, :, 0, -1, :].float()
    return -(row * row.clamp_min(1e-30).log()).sum(-1)


class EntropyProbe(L.LightningModule):
    """Logistic regression of correctness on every head's scored-row entropy (standardised on the fly)."""

    def __init__(self, n_heads: int, lr: float = 0.05, positive_weight: float = 1.0) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.norm = nn.BatchNorm1d(n_heads, affine=False)
        self.linear = nn.Linear(n_heads, 1)
        self.loss = nn.BCEWithLogitsLoss(pos_weight=torch.tensor(positive_weight))
        self.val_auroc, self.val_confidence = BinaryAUROC(), BinaryAUROC()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.linear(self.norm(scored_row_entropy(images))).squeeze(-1)

    def training_step(self, batch: dict, _: int) -> torch.Tensor:
        loss = self.loss(self(batch["images"]), batch["correct"].float())
        self.log("train/loss", loss, batch_size=len(batch["correct"]))
        return loss

    def validation_step(self, batch: dict, _: int) -> None:
        labels = batch["correct"].long()
        self.val_auroc.update(torch.sigmoid(self(batch["images"])), labels)
        self.val_confidence.update(batch["probability"].float(), labels)  # the target's own probability

    def on_validation_epoch_end(self) -> None:
        self.log_dict({"val/auroc_entropy": self.val_auroc.compute(),
                       "val/auroc_confidence": self.val_confidence.compute()})
        self.val_auroc.reset()
        self.val_confidence.reset()

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--target", required=True, help="a causal LM: hub name or local directory")
    parser.add_argument("--tokenizer", default=None, help="default: the target's")
    parser.add_argument("--sources", required=True, help="Java sources: folder, archive, JSONL/Parquet")
    parser.add_argument("--work", default="work", help="where apmae puts scenarios and attention caches")
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--n-per-task", type=int, default=36)
    parser.add_argument("--max-per-file", type=int, default=1, help="holes per task and source file")
    parser.add_argument("--epochs", type=int, default=5)
    args = parser.parse_args()

    L.seed_everything(0)
    scenarios = JavaScenarioDataModule(
        sources=args.sources, tokenizer=args.tokenizer or args.target, cache_dir=f"{args.work}/scenarios",
        # a plain dict works as well as apmae.mining.settings.MiningConfig(...); prompt_format auto: causal
        # prompts (left context only) for a model without FIM tokens, FIM prompts for one with them
        mining={"seq_len": args.seq_len, "n_per_task": args.n_per_task, "max_per_file": args.max_per_file, "prompt_format": "auto"})
    data = AttentionCacheDataModule(
        target=args.target, scenarios=scenarios, cache_dir=f"{args.work}/cache",
        mode="scenarios",  # one sample per scenario: every head's pattern, plus correct and probability
        scaler="none",  # raw attention probabilities (the AP-MAE default log-normalises them)
        batch_size=32, num_workers=0, extraction={"batch_size": 8})
    data.prepare_data()
    data.setup("fit")
    cache = data.caches[data.train_target_name]  # apmae.cache.store.AttentionCache: columns as numpy arrays
    train_correct = cache.correct[cache.split == SPLITS.index("train")]
    positives = max(int(train_correct.sum()), 1)
    probe = EntropyProbe(n_heads=data.n_layers * data.n_heads,
                         positive_weight=(len(train_correct) - positives) / positives)
    trainer = L.Trainer(max_epochs=args.epochs, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_model_summary=False, enable_progress_bar=False, num_sanity_val_steps=0)
    trainer.fit(probe, datamodule=data)
    m = trainer.callback_metrics
    n_val = int((cache.split == SPLITS.index("val")).sum())
    print(f"validation scenarios: {n_val}; AUROC of scored-row entropy (L x H = {data.n_layers} x {data.n_heads} "
          f"heads): {float(m['val/auroc_entropy']):.3f}; of the target's own confidence: "
          f"{float(m['val/auroc_confidence']):.3f}")


if __name__ == "__main__":
    main()
