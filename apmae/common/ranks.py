"""What each process of a distributed run holds, gathered: torch.distributed only, no Lightning."""

from __future__ import annotations

from typing import Any

import torch.distributed as dist


def every_rank(local: Any) -> list[Any]:
    """``local`` of every process, in rank order (``[local]`` outside DDP); each rank must call it.

    Under DDP each rank evaluates its own share of the scenarios (the evaluation sampler neither
    repeats nor pads them): what is computed on the union equals a single process's result.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [local]
    parts: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, local)
    return parts


__all__ = ["every_rank"]
