"""Optimizer parameter groups shared by the project's training modules (plain PyTorch).

Weight decay applies to weight matrices only: biases, norm weights and the
parameters a model names (tokens, position embeddings) get none, as in MAE,
ViT-MAE and nanoGPT.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

import torch


def weight_decay_groups(
    named_parameters: Iterable[tuple[str, torch.nn.Parameter]],
    weight_decay: float,
    *,
    no_decay: Callable[[str], bool] = lambda name: False,
) -> list[dict[str, Any]]:
    """Two groups, ``[decayed, not decayed]``, of the trainable parameters.

    A parameter is not decayed when it has fewer than 2 dims (biases, norm
    weights) or ``no_decay(name)`` is true; frozen parameters are left out.
    """
    decay, keep = [], []
    for name, param in named_parameters:
        if param.requires_grad:
            (keep if param.ndim < 2 or no_decay(name) else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": keep, "weight_decay": 0.0}]
