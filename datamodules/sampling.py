"""The sampler of evaluation loaders under DDP: every scenario once, none padded in.

Lightning gives validation and test loaders a ``DistributedSampler``, which pads the ranks'
shares to one length by repeating scenarios: with 13 scenarios on 3 ranks two are counted
twice, and the reduced metrics differ from a single process's on the same scenarios.
Lightning's ``UnrepeatedDistributedSampler`` gives each rank its share once (shares may
differ by one batch). Evaluation runs without gradients, so DDP syncs no buffers per forward
pass and ranks with one batch fewer do not wait on each other; metrics are reduced once, at
the epoch's end.
"""

from __future__ import annotations

from typing import Optional

import torch.distributed as dist
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import Dataset, Sampler


def evaluation_sampler(dataset: Dataset) -> Optional[Sampler]:
    """This rank's share of ``dataset`` once, in order, under DDP; None (a plain sequential loader) otherwise."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return UnrepeatedDistributedSampler(dataset, shuffle=False)
    return None


__all__ = ["evaluation_sampler"]
