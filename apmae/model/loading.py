"""Loading a trained AP-MAE encoder: from an export directory or a LitAPMAE checkpoint.

Plain PyTorch: a checkpoint is read with ``torch.load``; no Lightning import is needed.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import torch

from apmae.model.net import APMAE, APMAEConfig

# autocast dtype of each encoder precision (None: float32)
ENCODER_PRECISIONS = {"32": None, "bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}
NET_CONFIG_KEY = "apmae_net_config"  # where LitAPMAE checkpoints record their net's APMAEConfig


class CheckpointError(ValueError):
    """A checkpoint file cannot be used: missing, truncated, damaged, foreign or of a newer apmae."""


def check_checkpoint(path: str | Path) -> Path:
    """``path`` if it is a torch zip checkpoint whose every member passes its CRC-32.

    torch's own reader checks no CRC: a damaged byte in a tensor loads as a wrong weight,
    and a truncated file fails deep inside its zip reader. Reading every member once here
    (about a second per GB) turns both into this error.

    Raises:
        CheckpointError: the file is missing, not a zip archive (truncated, or not written by
            ``torch.save``), or a member fails its CRC.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; give the .ckpt file a run wrote "
                              "(its checkpoints/ folder, e.g. last.ckpt)")
    redo = "it is truncated or damaged: use another checkpoint of the run (last.ckpt, an epoch's) or train again"
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
        raise CheckpointError(f"checkpoint {path} is not a readable torch checkpoint ({e}); {redo}") from e
    if bad is not None:
        raise CheckpointError(f"checkpoint {path} is damaged: its member {bad} fails its CRC-32; {redo}")
    return path


def read_checkpoint(path: str | Path) -> dict:
    """The dict a checkpoint holds, after :func:`check_checkpoint`; every failure is a CheckpointError."""
    path = check_checkpoint(path)
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except (RuntimeError, pickle.UnpicklingError, EOFError, ModuleNotFoundError, AttributeError) as e:
        raise CheckpointError(f"checkpoint {path} cannot be unpickled ({type(e).__name__}: {e}); it was written "
                              "by other code or is damaged: give a checkpoint of this project's runs") from e
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(checkpoint).__name__}, not a Lightning checkpoint")
    return checkpoint


def load_encoder(path: str | Path) -> APMAE:
    """The AP-MAE net of an export directory (``APMAE.save``) or of a LitAPMAE checkpoint file.

    Raises:
        ValueError: the path is neither.
        apmae.model.export.ExportError: a damaged export directory.
        CheckpointError: a damaged checkpoint, one that holds no AP-MAE net, or one of a newer apmae.
    """
    path = Path(path)
    if path.is_dir():
        return APMAE.load(path)
    if not path.is_file():
        raise ValueError(f"encoder {str(path)!r} does not exist; give an exported AP-MAE directory "
                         "(the run's apmae_net/, e.g. artifacts/demo/apmae) or a LitAPMAE .ckpt file")
    checkpoint = read_checkpoint(path)
    state = {k[len("net."):]: v for k, v in checkpoint.get("state_dict", {}).items() if k.startswith("net.")}
    if NET_CONFIG_KEY not in checkpoint or not state:
        raise CheckpointError(f"checkpoint {path} holds no AP-MAE net; give a LitAPMAE checkpoint or an export "
                              "directory")
    try:
        net = APMAE(APMAEConfig.from_dict(checkpoint[NET_CONFIG_KEY]))
        net.load_state_dict(state)
    except (ValueError, RuntimeError) as e:
        raise CheckpointError(f"checkpoint {path} holds an AP-MAE net this apmae cannot build ({e}); a newer "
                              "apmae may have written it: upgrade apmae, or export the net with the apmae that "
                              "trained it") from e
    return net
