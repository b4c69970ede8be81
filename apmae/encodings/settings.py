"""Which trained AP-MAE encodes every head's pattern, and how: :class:`EncoderSettings`.

The attention-pattern DataModules take it as their nested ``encoder`` init argument (one YAML
mapping means the same in either), beside the extraction settings of :mod:`apmae.cache.settings`::

    data:
      init_args:
        extraction: {batch_size: 16, dtype: bfloat16}
        encoder: {path: artifacts/paper/apmae, precision: bf16-mixed}

Every field is checked at construction, with a message naming the key to change; in Python it
takes the object or a dict of its fields.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from apmae.common.settings import check_choice, settings_of
from apmae.model.loading import ENCODER_PRECISIONS


@dataclass(frozen=True)
class EncoderSettings:
    """Which trained AP-MAE encodes every head's pattern, and how."""

    path: str  # an exported AP-MAE (APMAE.save directory, e.g. a run's apmae_net/) or a LitAPMAE checkpoint
    precision: str = "32"  # 32, or bf16-mixed / 16-mixed to run the encoder under autocast
    batch_size: int | None = None  # scenarios per encoder step over an attention cache; None = the
    # extraction's batch_size, the steps a stream of the same scenarios takes (apmae.encodings.encode)

    def __post_init__(self) -> None:
        """Raises ``ValueError`` naming the ``encoder.<field>`` to change."""
        if not str(self.path):
            raise ValueError("encoder.path is empty; give an exported AP-MAE directory or a LitAPMAE checkpoint")
        check_choice("encoder.precision", self.precision, tuple(ENCODER_PRECISIONS))
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError(f"encoder.batch_size={self.batch_size}; it must be at least 1 (or null for the "
                             "DataModule's default)")

    @classmethod
    def of(cls, value: "EncoderSettings | Mapping[str, Any]") -> "EncoderSettings":
        """``value`` as EncoderSettings: itself, or one built from a mapping of its fields.

        Raises:
            TypeError: anything else (a bare path, say), or a mapping with keys that are not fields.
        """
        return settings_of(cls, value, "encoder")


__all__ = ["EncoderSettings"]
