"""The AP-MAE export directory: ``config.json`` and ``model.safetensors``, checked when read.

safetensors has no checksum of its own: a flipped bit inside a tensor loads as a wrong
weight. An export therefore records, in the safetensors header's metadata, the sha256 of
its weights (names and raw bytes, in name order) and the export format version; reading
recomputes the digest. Exports written before the digest existed carry none and are read
as they are.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
EXPORT_VERSION = 1  # the export format this apmae writes and reads
_DIGEST_KEY, _VERSION_KEY = "apmae_weights_sha256", "apmae_export_version"
REEXPORT = "export the AP-MAE again (APMAE.save, or the run's apmae_net/ artifact)"


class ExportError(ValueError):
    """An AP-MAE export directory cannot be read: missing, truncated, damaged or of another version."""


def weights_digest(state: dict[str, torch.Tensor]) -> str:
    """sha256 of the tensors' names and raw bytes, in name order (any dtype, any device)."""
    h = hashlib.sha256()
    for name in sorted(state):
        h.update(name.encode())
        h.update(state[name].detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def write_export(directory: str | Path, config: dict[str, Any], state: dict[str, torch.Tensor]) -> Path:
    """Write ``config.json`` and ``model.safetensors`` (with digest and version) into ``directory``."""
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    (path / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    state = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    metadata = {"format": "pt", _DIGEST_KEY: weights_digest(state), _VERSION_KEY: str(EXPORT_VERSION)}
    save_file(state, str(path / WEIGHTS_FILE), metadata=metadata)
    return path


def read_export(directory: str | Path, device: str = "cpu") -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The config dict and the weights of an export, every file checked.

    Raises:
        ExportError: a file is missing, ``config.json`` is not a JSON object, the weights file is
            truncated or not safetensors, its digest disagrees with its weights, or a newer
            apmae wrote it.
    """
    path = Path(directory)
    missing = [name for name in (CONFIG_FILE, WEIGHTS_FILE) if not (path / name).is_file()]
    if missing:
        raise ExportError(f"{path} is not a saved AP-MAE: missing {missing}; save one with APMAE.save")
    config = _read_config(path / CONFIG_FILE)
    weights = path / WEIGHTS_FILE
    try:
        with safe_open(str(weights), framework="pt") as f:
            metadata = f.metadata() or {}
        state = load_file(str(weights), device=device)
    except (SafetensorError, OSError, ValueError) as e:
        raise ExportError(f"AP-MAE weights {weights} are truncated or not a safetensors file ({e}); {REEXPORT}") from e
    _check_version(metadata, weights)
    recorded = metadata.get(_DIGEST_KEY)
    if recorded is not None and recorded != weights_digest(state):
        raise ExportError(f"AP-MAE weights {weights} are damaged: their sha256 differs from the one recorded when "
                          f"they were written; {REEXPORT}")
    return config, state


def state_misfits(expected: dict[str, torch.Tensor], found: dict[str, torch.Tensor]) -> str:
    """What keeps ``found`` from loading into a model whose state is ``expected`` ("" when it fits)."""
    missing, unexpected = sorted(set(expected) - set(found)), sorted(set(found) - set(expected))
    shapes = sorted(k for k in set(expected) & set(found) if expected[k].shape != found[k].shape)
    parts = [f"{len(keys)} {what} {keys[:3]}" for what, keys in
             (("missing", missing), ("unexpected", unexpected), ("of another shape", shapes)) if keys]
    return "; ".join(parts)


def _read_config(path: Path) -> dict[str, Any]:
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ExportError(f"AP-MAE config {path} is truncated or not JSON ({e}); {REEXPORT}") from e
    if not isinstance(config, dict):
        raise ExportError(f"AP-MAE config {path} holds a {type(config).__name__}, not a JSON object; {REEXPORT}")
    return config


def _check_version(metadata: dict[str, str], weights: Path) -> None:
    version = metadata.get(_VERSION_KEY, str(EXPORT_VERSION))  # exports before versions were recorded: 1
    if not version.isdigit() or int(version) != EXPORT_VERSION:
        raise ExportError(f"AP-MAE weights {weights} are export format {version}, this apmae reads "
                          f"{EXPORT_VERSION}: a newer apmae wrote them; upgrade apmae, or {REEXPORT} with this one")


__all__ = ["CONFIG_FILE", "EXPORT_VERSION", "ExportError", "WEIGHTS_FILE", "read_export", "state_misfits",
           "weights_digest", "write_export"]
