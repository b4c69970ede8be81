"""Random number generator states in checkpoints, so a resumed fit repeats the uninterrupted one.

Lightning restores weights, optimiser, schedulers and loop counters from a checkpoint, but not
the generators: a fit resumed from ``last.ckpt`` after a kill draws other shuffles and other
dropout masks than the fit that was not interrupted, and ends at other weights. ``ResumableRNG``
stores the states of torch's CPU generator (CUDA's too, when present), numpy's global generator
and Python's ``random`` in every checkpoint, and puts them back when a fit resumes from one.

The states are those of the process that writes the checkpoint (rank zero); on several ranks a
resumed fit gives every rank that state. Loading a checkpoint for ``validate``/``test`` with
``LightningModule.load_from_checkpoint`` does not touch the generators.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch
from lightning.pytorch import Callback


class ResumableRNG(Callback):
    """Save the global generators' states with each checkpoint and restore them on resume.

    The states are kept as tensors, ints and lists, which Lightning's ``weights_only`` checkpoint
    loading accepts (numpy arrays and Python's state tuple it would refuse).
    """

    def state_dict(self) -> dict[str, Any]:
        kind, keys, pos, has_gauss, gauss = np.random.get_state()
        version, python_state, python_gauss = random.getstate()
        return {"torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                "numpy": {"kind": str(kind), "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                          "has_gauss": int(has_gauss), "gauss": float(gauss)},
                "python": {"version": version, "state": list(python_state), "gauss": python_gauss}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        torch.set_rng_state(state_dict["torch"])
        cuda = state_dict["cuda"]
        if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
        n = state_dict["numpy"]
        np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
        py = state_dict["python"]
        random.setstate((py["version"], tuple(py["state"]), py["gauss"]))


__all__ = ["ResumableRNG"]
