"""Which heads of each layer a scenario keeps: the layerwise draw shared by sampled caches and head selection.

Glossary: B scenarios, L layers, H query heads, k heads kept per layer.

A head sample is written ``all`` (every head) or ``layerwise:<f>`` with f in (0, 1]: k = round(f*H)
heads of each layer (at least one), drawn per scenario and layer from a generator seeded by
``[seed, scenario index, layer]`` and kept in ascending order. The draw depends on nothing else, so
an extraction that stores only these heads (``extraction.heads``) and a head selection over a full
cache (``head_selection`` with the same ``seed``) name the very same heads, and a resumed extraction
draws again what the killed one drew.
"""

from __future__ import annotations

import re

import numpy as np

ALL = "all"
_LAYERWISE = re.compile(r"layerwise:(\d+\.?\d*|\.\d+)")


def layerwise_fraction(spec: str, key: str = "heads") -> float | None:
    """The fraction of a ``layerwise:<f>`` sample; None for ``all``.

    Raises:
        ValueError: another spec, or a fraction outside (0, 1], naming ``key``.
    """
    if spec == ALL:
        return None
    m = _LAYERWISE.fullmatch(str(spec))
    if not m or not 0 < float(m.group(1)) <= 1:
        raise ValueError(f"{key}={spec!r}; use 'all' or 'layerwise:<fraction in (0, 1]>' (e.g. layerwise:0.25)")
    return float(m.group(1))


def canonical_sample(spec: str, key: str = "heads") -> str:
    """``spec`` written one way per meaning: ``all``, or ``layerwise:<f>`` with f as Python prints it
    (``layerwise:.250`` -> ``layerwise:0.25``); what a cache records and its file name carries.

    Raises:
        ValueError: as :func:`layerwise_fraction`.
    """
    fraction = layerwise_fraction(spec, key)
    return ALL if fraction is None else f"layerwise:{fraction!r}"


def heads_per_layer(fraction: float | None, n_heads: int) -> int:
    """k: the heads a ``layerwise:<fraction>`` sample keeps of each layer's ``n_heads`` (all for None)."""
    return n_heads if fraction is None else max(1, round(fraction * n_heads))


def layerwise_heads(seed: int, scenario: int, layer: int, n_heads: int, per_layer: int) -> np.ndarray:
    """(k,) int64 ascending: the heads scenario ``scenario`` (its index in the scenario set) keeps of ``layer``."""
    order = np.random.default_rng([seed, scenario, layer]).permutation(n_heads)
    return np.sort(order[:per_layer])


def sampled_heads(seed: int, scenarios: np.ndarray, n_layers: int, n_heads: int, per_layer: int) -> np.ndarray:
    """(B, L, k) int16: :func:`layerwise_heads` of every scenario index in ``scenarios`` and every layer."""
    return np.array([[layerwise_heads(seed, int(s), layer, n_heads, per_layer) for layer in range(n_layers)]
                     for s in scenarios], dtype=np.int16).reshape(len(scenarios), n_layers, per_layer)


__all__ = ["ALL", "canonical_sample", "heads_per_layer", "layerwise_fraction", "layerwise_heads", "sampled_heads"]
