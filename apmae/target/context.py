"""How long a prompt a target can read whole: its position limit and its sliding-window layers.

A layer with a sliding window attends to the last ``window`` tokens only (Mistral, Gemma 3's local
layers, StarCoder2 checkpoints that set one). Eager attention then returns patterns with zeros
before the window: true to what the model computes, but zeros the pattern did not choose, which a
reader of AP-MAE's figures would take for the head's behaviour. The project refuses such prompts
rather than mix the two: every S it stores is at most the narrowest window, so each stored pattern
is the head's whole causal pattern.
"""

from __future__ import annotations

from typing import Any, TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: the classes' modules import torch or transformers
    from apmae.target.access import Target


def attention_window(config: Any) -> int | None:
    """The narrowest sliding window of any layer, or None when every layer sees the whole prompt."""
    window = getattr(config, "sliding_window", None)
    if not window or getattr(config, "use_sliding_window", True) is False:
        return None
    layer_types = getattr(config, "layer_types", None)
    if layer_types is not None and not any("sliding" in str(t) for t in layer_types):
        return None
    return int(window)


def check_context(target: Target, seq_len: int) -> None:
    """Raise ``ValueError`` when ``target`` cannot read ``seq_len`` tokens whole.

    ``target`` is an :class:`apmae.target.access.Target` (or anything with ``model.config`` and ``name``).
    """
    config = target.model.config
    name = getattr(target, "name", "") or type(target.model).__name__
    window = attention_window(config)
    if window is not None and seq_len > window:
        raise ValueError(f"target {name!r} has sliding-window attention layers that see the last {window} tokens, "
                         f"and the scenarios have S={seq_len}: their patterns would be cut by the window, not by "
                         f"the heads; mine scenarios with seq_len <= {window}")
    limit = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    if limit is not None and seq_len > int(limit):
        raise ValueError(f"target {name!r} has {int(limit)} positions and the scenarios have S={seq_len}; "
                         f"mine scenarios with seq_len <= {int(limit)}")


__all__ = ["attention_window", "check_context"]
