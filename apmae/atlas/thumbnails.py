"""Small pictures of attention patterns for the atlas: each head's mean pattern and its families' medoids.

Glossary: N scenarios, L layers, H heads, S tokens, G thumbnail side, K families of a head.

A thumbnail is the pattern's G x G block means (block edges at round(i * S / G),
so S = 256 -> G = 32 averages 8 x 8 blocks), then log-normalised as AP-MAE
sees patterns (:func:`apmae.model.scaling.scale_log_normalize`: log of the
positive entries, min-max to [0, 1], zeros kept at 0) and stored as uint8
(0-255): a 32 x 32 thumbnail is 1 KB, so 1,920 heads' mean patterns fit in 2 MB.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence, TYPE_CHECKING

import numpy as np
import torch

from apmae.model.scaling import scale_log_normalize

if TYPE_CHECKING:  # annotations only: the classes' modules import torch or transformers
    from apmae.cache.store import AttentionCache

MEAN_SIDE = 32  # G of a head's mean pattern
MEDOID_SIDE = 16  # G of a family medoid's thumbnail


def block_means(patterns: np.ndarray, side: int) -> np.ndarray:
    """(..., S, S) -> (..., G, G) means of G x G blocks (G = ``side``; S need not be a multiple of G).

    Raises:
        ValueError: ``side`` < 1 or larger than S.
    """
    s = patterns.shape[-1]
    if not 1 <= side <= s:
        raise ValueError(f"thumbnail side {side} must be in [1, S={s}]")
    edges = np.round(np.arange(side) * s / side).astype(int)  # (G,) block starts
    sizes = np.diff(np.append(edges, s))  # (G,)
    sums = np.add.reduceat(np.add.reduceat(patterns, edges, axis=-1), edges, axis=-2)
    return sums / (sizes[:, None] * sizes[None, :])


def thumbnail(patterns: np.ndarray, side: int) -> np.ndarray:
    """(..., S, S) probabilities -> (..., G, G) uint8 log-normalised block means; G = min(``side``, S)."""
    patterns = np.asarray(patterns, dtype=np.float32)
    means = torch.as_tensor(block_means(patterns, min(side, patterns.shape[-1])))
    return (scale_log_normalize(means).numpy() * 255).round().astype(np.uint8)


@dataclass
class Thumbnails:
    """Pattern pictures of every head, uint8 (see the module docstring)."""

    mean: np.ndarray | None  # (L, H, G, G) mean pattern over the rows read; None without a cache
    n_mean_rows: int  # scenarios averaged
    families: dict[tuple[int, int], list[np.ndarray]] = field(default_factory=dict)  # (l, h) -> K x (g, g)
    family_sizes: dict[tuple[int, int], list[int]] = field(default_factory=dict)  # members of each family


def mean_thumbnails(cache: AttentionCache, rows: Sequence[int], *, side: int = MEAN_SIDE) -> np.ndarray:
    """(L, H, G, G) thumbnails of each head's mean pattern over ``rows`` of an attention cache."""
    total = None
    for row in rows:
        pattern = cache.scenario(int(row))  # (L, H, S, S)
        total = pattern.astype(np.float32) if total is None else total + pattern
    return thumbnail(total / len(rows), side)


def family_thumbnails(cache: AttentionCache, labels_npz: str | Path, *, side: int = MEDOID_SIDE, max_families: int = 6
                      ) -> tuple[dict[tuple[int, int], list[np.ndarray]], dict[tuple[int, int], list[int]]]:
    """Each head's medoid thumbnails (largest families first, at most ``max_families``) from ``clusters/labels.npz``.

    The medoid of a family is a row of the encodings the patterns stage
    clustered; its scenario index finds the cache row. Each cache row is read once.
    """
    data = np.load(labels_npz)
    medoids, sizes, scenario_index = data["medoids"], data["sizes"], data["scenario_index"]  # (L, H, K), (N,)
    row_of = {int(s): i for i, s in enumerate(cache.scenario_index)}
    wanted: dict[int, list[tuple[int, int, int]]] = {}  # cache row -> (layer, head, slot)
    chosen: dict[tuple[int, int], list[int]] = {}
    for layer, head in np.ndindex(medoids.shape[:2]):
        order = [k for k in np.argsort(-sizes[layer, head], kind="stable") if medoids[layer, head, k] >= 0]
        chosen[(layer, head)] = order[:max_families]
        for slot, k in enumerate(chosen[(layer, head)]):
            row = row_of[int(scenario_index[medoids[layer, head, k]])]
            wanted.setdefault(row, []).append((layer, head, slot))
    pictures: dict[tuple[int, int], list[Any]] = {key: [None] * len(ks) for key, ks in chosen.items()}
    for row, heads in wanted.items():
        pattern = cache.scenario(row)  # (L, H, S, S)
        index = np.array([(l, h) for l, h, _ in heads])
        small = thumbnail(pattern[index[:, 0], index[:, 1]], side)  # (n, g, g)
        for (layer, head, slot), picture in zip(heads, small):
            pictures[(layer, head)][slot] = picture
    family_sizes = {key: [int(sizes[key[0], key[1], k]) for k in ks] for key, ks in chosen.items()}
    return pictures, family_sizes


__all__ = ["MEAN_SIDE", "MEDOID_SIDE", "Thumbnails", "block_means", "family_thumbnails", "mean_thumbnails",
           "thumbnail"]
