"""Loading a trained AP-MAE encoder: from an export directory or a LitAPMAE checkpoint.

Plain PyTorch: a checkpoint is read with ``torch.load``; no Lightning import is needed.
"""

from __future__ import annotations

from pathlib import Path

import torch

from apmae.model.net import APMAE, APMAEConfig

# autocast dtype of each encoder precision (None: float32)
ENCODER_PRECISIONS = {"32": None, "bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}
NET_CONFIG_KEY = "apmae_net_config"  # where LitAPMAE checkpoints record their net's APMAEConfig


def load_encoder(path: str | Path) -> APMAE:
    """The AP-MAE net of an export directory (``APMAE.save``) or of a LitAPMAE checkpoint file.

    Raises:
        ValueError: the path is neither, or the checkpoint holds no AP-MAE net.
    """
    path = Path(path)
    if path.is_dir():
        return APMAE.load(path)
    if not path.is_file():
        raise ValueError(f"encoder {str(path)!r} does not exist; give an exported AP-MAE directory "
                         "(the run's apmae_net/, e.g. artifacts/demo/apmae) or a LitAPMAE .ckpt file")
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    state = {k[len("net."):]: v for k, v in checkpoint.get("state_dict", {}).items() if k.startswith("net.")}
    if NET_CONFIG_KEY not in checkpoint or not state:
        raise ValueError(f"checkpoint {path} holds no AP-MAE net; give a LitAPMAE checkpoint or an export directory")
    net = APMAE(APMAEConfig.from_dict(checkpoint[NET_CONFIG_KEY]))
    net.load_state_dict(state)
    return net
