"""Scalers that turn raw attention probabilities into AP-MAE input images.

Glossary: S tokens (image side); ``...`` any leading dims (batch, layer, head).

Every scaler maps (..., S, S) float to (..., S, S) float, works per image (the
last two dims), is vectorised over the leading dims, and never emits NaN or
inf: non-finite inputs count as zeros. Attention probabilities are in [0, 1],
with structural zeros above the diagonal; zeros (and anything not positive)
map to 0 in every log scaler because log 0 does not exist.

- ``none``: the probabilities as they are.
- ``log``: natural log of positive entries.
- ``log_standardize``: per image, log of positive entries shifted and scaled to
  mean 0 and standard deviation 1 over those entries.
- ``log_normalize`` (the paper's choice): per image, log of positive entries
  min-max scaled to [0, 1] over those entries; for a causal pattern the [0, 0]
  entry is 1, so the maximum log is 0 and the weakest attention maps to 0.
"""

from __future__ import annotations

from typing import Callable

import torch

Scaler = Callable[[torch.Tensor], torch.Tensor]


def _checked(images: torch.Tensor) -> torch.Tensor:
    if images.ndim < 2:
        raise ValueError(f"images must be (..., S, S), got shape {tuple(images.shape)}")
    if not images.is_floating_point():
        images = images.float()
    return images


def _positive_log(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """log of the finite positive entries (0 elsewhere) and where those entries are."""
    positive = (images > 0) & torch.isfinite(images)  # (..., S, S)
    logs = torch.log(torch.where(positive, images, torch.ones_like(images)))  # log 1 = 0 off the support
    return logs, positive


def scale_none(images: torch.Tensor) -> torch.Tensor:
    """Identity on finite entries; non-finite entries become 0."""
    images = _checked(images)
    return torch.where(torch.isfinite(images), images, torch.zeros_like(images))


def scale_log(images: torch.Tensor) -> torch.Tensor:
    """Natural log of positive entries, 0 elsewhere (values <= 0 for probabilities)."""
    logs, _ = _positive_log(_checked(images))
    return logs


def scale_log_standardize(images: torch.Tensor) -> torch.Tensor:
    """Per image: z-score of the log of positive entries; 0 elsewhere and where all logs are equal."""
    logs, positive = _positive_log(_checked(images))
    weight = positive.to(logs.dtype)
    count = weight.sum(dim=(-2, -1), keepdim=True).clamp_min(1.0)  # (..., 1, 1)
    mean = (logs * weight).sum(dim=(-2, -1), keepdim=True) / count
    centred = (logs - mean) * weight
    std = (centred.square().sum(dim=(-2, -1), keepdim=True) / count).sqrt()
    scaled = centred / torch.where(std > 0, std, torch.ones_like(std))
    return torch.where(positive, scaled, torch.zeros_like(scaled))


def scale_log_normalize(images: torch.Tensor) -> torch.Tensor:
    """Per image: log of positive entries min-max scaled to [0, 1] over those entries; 0 elsewhere.

    An image whose positive entries are all equal (e.g. a single non-zero entry)
    has no range: those entries map to 1, the maximum.
    """
    logs, positive = _positive_log(_checked(images))
    inf = torch.tensor(float("inf"), dtype=logs.dtype, device=logs.device)
    low = torch.where(positive, logs, inf).amin(dim=(-2, -1), keepdim=True)  # (..., 1, 1)
    high = torch.where(positive, logs, -inf).amax(dim=(-2, -1), keepdim=True)
    span = high - low  # inf - inf = nan for images without a positive entry; masked out below
    ok = span > 0
    scaled = (logs - torch.where(ok, low, torch.zeros_like(low))) / torch.where(ok, span, torch.ones_like(span))
    scaled = torch.where(ok, scaled, torch.ones_like(scaled))
    return torch.where(positive, scaled.clamp(0.0, 1.0), torch.zeros_like(scaled))


SCALERS: dict[str, Scaler] = {
    "none": scale_none,
    "log": scale_log,
    "log_standardize": scale_log_standardize,
    "log_normalize": scale_log_normalize,
}


def get_scaler(name: str) -> Scaler:
    """The scaler registered under ``name``."""
    if name not in SCALERS:
        raise ValueError(f"unknown scaler {name!r}; choose one of {sorted(SCALERS)}")
    return SCALERS[name]


def scale(images: torch.Tensor, name: str) -> torch.Tensor:
    """Scale (..., S, S) attention images with the named scaler."""
    return get_scaler(name)(images)
