"""The nets of the probe stage (LitProbe): predictors of correctness, their baselines and head importance.

Glossary: B scenarios, L layers, H query heads, D encoder width, F features per
head (D or 2D for AP-MAE encodings, 4 for pattern statistics).

Predictors, all trained together on the same (class-balanced) batches and
scored by :mod:`apmae.probe.metrics` on the same scenarios:

- ``probe``: :class:`apmae.probe.HeadProbe` over AP-MAE encodings of every head;
- ``stats_probe``: the same architecture over per-head pattern statistics
  (entropy, mean attention distance, first-token mass, diagonal mass);
- ``probe_confidence``: the AP-MAE probe plus the target's own probability of
  its prediction as an extra input;
- ``confidence``: the target's probability alone, thresholded on validation;
- ``majority``: each task's share of correct scenarios in the training batches
  (a constant per task: balanced accuracy 0.5 by construction).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from apmae.probe.net import HeadProbe, integrated_gradients_importance, mean_replacement_importance
from apmae.common.ranks import every_rank

FEATURES = ("cls", "mean", "both")
TRAINED = ("probe", "stats_probe", "probe_confidence")
REPORTED = (*TRAINED, "confidence", "majority")
MAX_TASKS = 256  # task slots of the majority buffer (fixed size, so checkpoints load before setup)


@dataclass
class Collected:
    """What one evaluation epoch gathers, moved to the CPU batch by batch."""

    probs: dict[str, list[torch.Tensor]] = field(default_factory=lambda: {k: [] for k in REPORTED})
    correct: list[torch.Tensor] = field(default_factory=list)
    task: list[torch.Tensor] = field(default_factory=list)
    features: list[torch.Tensor] = field(default_factory=list)  # (B, L, H, F) for head importance
    kept: int = 0

    def arrays(self) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
        probs = {k: torch.cat(v).float().numpy() for k, v in self.probs.items()}
        return probs, torch.cat(self.correct).numpy(), torch.cat(self.task).numpy()

    def all_ranks(self) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray] | None:
        """:meth:`arrays` of every rank together (rank order), or None when no rank collected anything.

        Under DDP each rank evaluates its own share of the scenarios (Lightning's evaluation
        sampler neither repeats nor pads them); scores computed on the union are those of a
        single process on the same scenarios. Every rank must call this, also one that
        collected nothing.
        """
        parts = [part for part in every_rank(self.arrays() if self.correct else None) if part is not None]
        if not parts:
            return None
        probs = {name: np.concatenate([part[0][name] for part in parts]) for name in parts[0][0]}
        return probs, np.concatenate([part[1] for part in parts]), np.concatenate([part[2] for part in parts])

    def kept_features(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, L, H, F) features of the first N = ``kept`` scenarios and their (N,) task ids."""
        return torch.cat(self.features), torch.cat(self.task)[: self.kept]


class ProbeStage(nn.Module):
    """The trained predictors and the buffers a checkpoint must carry for testing.

    Args:
        n_layers: L of the target.
        n_heads: H of the target.
        enc_dim: D of the AP-MAE encoder.
        features: which encoding each head contributes: ``cls``, ``mean`` or ``both`` (concatenated).
        hidden: width of the probes' shared per-head network.
        dropout: probe dropout.
        n_stats: pattern statistics per head.
    """

    def __init__(self, *, n_layers: int, n_heads: int, enc_dim: int, features: str, hidden: int, dropout: float,
                 n_stats: int = 4) -> None:
        super().__init__()
        if features not in FEATURES:
            raise ValueError(f"probe_features={features!r}; use one of {FEATURES}")
        self.features = features
        width = 2 * enc_dim if features == "both" else enc_dim
        common = dict(n_layers=n_layers, n_heads=n_heads, hidden=hidden, dropout=dropout)
        self.probes = nn.ModuleDict({
            "probe": HeadProbe(in_dim=width, **common),
            "stats_probe": HeadProbe(in_dim=n_stats, norm=False, **common),  # fed standardised statistics
            "probe_confidence": HeadProbe(in_dim=width, extra_dim=1, **common),
        })
        self.register_buffer("reference", torch.zeros(n_layers, n_heads, width))  # training mean features
        # Training mean and std of each head's pattern statistics: they live on unrelated scales (entropy in
        # nats, distance in tokens, two masses in [0, 1]), so the stats probe sees them standardised.
        self.register_buffer("stats_mean", torch.zeros(n_layers, n_heads, n_stats))
        self.register_buffer("stats_std", torch.ones(n_layers, n_heads, n_stats))
        self.register_buffer("head_importance", torch.zeros(n_layers, n_heads))  # mean replacement, signed
        self.register_buffer("ig_importance", torch.zeros(n_layers, n_heads))  # integrated gradients
        self.register_buffer("confidence_threshold", torch.tensor(0.5))
        self.register_buffer("majority_share", torch.full((MAX_TASKS,), 0.5))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))  # reference and majority computed

    def encoding_features(self, batch: dict[str, torch.Tensor], net: nn.Module) -> torch.Tensor:
        """(B, L, H, F) from a batch's stored encodings, or by encoding its images with ``net``."""
        if "cls" in batch:
            cls, mean = batch["cls"], batch["mean"]
        else:
            images = batch["images"]  # (B, L*H, 1, S, S)
            b = images.shape[0]
            enc = net.encode(images.flatten(0, 1))
            shape = (b, *self.reference.shape[:2], -1)
            cls, mean = enc.cls.reshape(shape), enc.mean.reshape(shape)
        parts = {"cls": [cls], "mean": [mean], "both": [cls, mean]}[self.features]
        return torch.cat([p.float() for p in parts], dim=-1)

    def logits(self, batch: dict[str, torch.Tensor], features: torch.Tensor) -> dict[str, torch.Tensor]:
        """Logits (B,) of every trained predictor."""
        extra = batch["probability"].float().unsqueeze(-1)  # (B, 1)
        return {"probe": self.probes["probe"](features),
                "stats_probe": self.probes["stats_probe"](self.standard_stats(batch["stats"])),
                "probe_confidence": self.probes["probe_confidence"](features, extra)}

    def standard_stats(self, stats: torch.Tensor) -> torch.Tensor:
        """(B, L, H, F) pattern statistics standardised by the training split's mean and std."""
        return (stats.float() - self.stats_mean) / self.stats_std

    def loss(self, logits: dict[str, torch.Tensor], correct: torch.Tensor) -> dict[str, torch.Tensor]:
        """Binary cross-entropy of each predictor; the predictors share no parameters, so their sum trains each."""
        target = correct.float()
        return {k: nn.functional.binary_cross_entropy_with_logits(v.float(), target) for k, v in logits.items()}

    def collect(self, into: Collected, batch: dict[str, torch.Tensor], features: torch.Tensor,
                logits: dict[str, torch.Tensor], keep_features: int) -> None:
        """Add one evaluation batch's probabilities (and up to ``keep_features`` scenarios' features)."""
        task = batch["task"].long()
        for k, v in logits.items():
            into.probs[k].append(torch.sigmoid(v.float()).detach().cpu())
        into.probs["confidence"].append(batch["probability"].float().cpu())
        into.probs["majority"].append(self.majority_share[task.clamp_max(MAX_TASKS - 1)].cpu())
        into.correct.append(batch["correct"].bool().cpu())
        into.task.append(task.cpu())
        room = keep_features - into.kept
        if room > 0:
            into.features.append(features[:room].detach().float().cpu())
            into.kept += min(room, len(features))

    def importance(self, collected: Collected, *, steps: int) -> None:
        """Head importance of ``probe`` on the collected scenarios, into the buffers."""
        if not collected.features:
            return
        probe = self.probes["probe"]
        # `trainer.validate` runs under inference mode, where integrated gradients cannot take gradients:
        # leave it, and clone the features collected under it into ordinary tensors
        with torch.inference_mode(False):
            features = collected.kept_features()[0].to(self.reference.device).clone()
            self.head_importance.copy_(mean_replacement_importance(probe, features, self.reference))
            self.ig_importance.copy_(integrated_gradients_importance(probe, features, self.reference, steps=steps))

    def importance_by_task(self, collected: Collected, task_names: list[str]) -> dict[str, torch.Tensor]:
        """``{task: (L, H)}``: the mean-replacement importance of ``probe`` on each task's collected scenarios."""
        if not collected.features:
            return {}
        features, task = collected.kept_features()
        features = features.to(self.reference.device)
        probe = self.probes["probe"]
        return {task_names[int(t)]: mean_replacement_importance(probe, features[task == t], self.reference)
                for t in torch.unique(task)}

    @torch.no_grad()
    def fit_reference(self, batches: Any, net: nn.Module) -> None:
        """Training mean of each head's features and each task's share of correct scenarios."""
        total = torch.zeros_like(self.reference, dtype=torch.float64)
        stats_sum = torch.zeros_like(self.stats_mean, dtype=torch.float64)
        stats_sq = torch.zeros_like(self.stats_mean, dtype=torch.float64)
        n = 0
        correct = torch.zeros(MAX_TASKS, dtype=torch.float64)
        count = torch.zeros(MAX_TASKS, dtype=torch.float64)
        device = self.reference.device
        for batch in batches:
            batch = {k: v.to(device) for k, v in batch.items()}
            total += self.encoding_features(batch, net).sum(0).double()
            stats = batch["stats"].double()
            stats_sum += stats.sum(0)
            stats_sq += stats.square().sum(0)
            n += len(batch["correct"])
            task = batch["task"].long().clamp_max(MAX_TASKS - 1).cpu()
            count.index_add_(0, task, torch.ones(len(task), dtype=torch.float64))
            correct.index_add_(0, task, batch["correct"].double().cpu())
        if n == 0:
            raise ValueError("the training split is empty after balancing: the probe has nothing to learn from; "
                             "mine more scenarios per task or change the splits")
        self.reference.copy_((total / n).float())
        mean = stats_sum / n
        std = (stats_sq / n - mean.square()).clamp_min(0).sqrt()
        self.stats_mean.copy_(mean.float())
        self.stats_std.copy_(torch.where(std > 1e-6, std, torch.ones_like(std)).float())  # constant stats: keep 1
        share = torch.where(count > 0, correct / count.clamp_min(1), torch.full_like(count, 0.5))
        self.majority_share.copy_(share.float().to(device))
        self.fitted.fill_(True)


__all__ = ["Collected", "ProbeStage", "FEATURES", "TRAINED", "REPORTED", "MAX_TASKS"]
