"""Typed settings the attention-pattern DataModules share: how a target is run, which encoder encodes.

:class:`ExtractionSettings` says how patterns are extracted from a target model
(device, dtype, batches, the cache's storage form); :class:`EncoderSettings` says
which trained AP-MAE encodes them and how. Both
:class:`~datamodules.attention_cache.AttentionCacheDataModule` and
:class:`~datamodules.encodings.EncodingsDataModule` take them as nested init args,
so one YAML mapping means the same in either and overlays that switch between the
two DataModules keep it::

    data:
      init_args:
        extraction: {batch_size: 16, dtype: bfloat16}
        encoder: {path: artifacts/paper/apmae, precision: bf16-mixed}

Every field is checked at construction, with a message naming the key to change.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from apmae.cache.codec import DEFAULT_ENCODING, ENCODINGS
from apmae.cache.store import COMPRESSIONS, DEFAULT_COMPRESSION, DEFAULT_PATTERN_KIND, PATTERN_KINDS
from apmae.model.loading import ENCODER_PRECISIONS
from apmae.target.access import DTYPES


@dataclass(frozen=True)
class ExtractionSettings:
    """How the target model is run over the scenarios to extract (or stream) their patterns."""

    batch_size: int = 8  # scenarios per forward pass of the target
    workers: int = 2  # batches in flight (threads; on CPU they share torch's threads)
    dtype: str = "float32"  # the target's dtype: float32, bfloat16 or float16
    device: str = "auto"  # auto = this rank's GPU if any, else the CPU; or a torch device such as cpu, cuda:1
    compression: str = DEFAULT_COMPRESSION  # cache compression: none, lzf or gzip (apmae.cache.store)
    encoding: str = DEFAULT_ENCODING  # stored form of the values: bfloat16-14bit, or bfloat16-bits for values
    # that can leave [0, 2) (apmae.cache.codec)
    pattern_kind: str = DEFAULT_PATTERN_KIND  # what a head's image is: attention, or contribution (its
    # norm-based contribution weights, apmae.head_metrics.contribution), cached in their own files
    progress: bool = True  # a progress bar (scenarios/s) while extracting or encoding

    def __post_init__(self) -> None:
        """Raises ``ValueError`` naming the ``extraction.<field>`` to change."""
        if self.batch_size < 1 or self.workers < 1:
            raise ValueError(f"extraction.batch_size={self.batch_size} and extraction.workers={self.workers} "
                             "must both be at least 1")
        _check_choice("extraction.dtype", self.dtype, tuple(DTYPES))
        _check_choice("extraction.compression", self.compression, COMPRESSIONS)
        _check_choice("extraction.encoding", self.encoding, ENCODINGS)
        _check_choice("extraction.pattern_kind", self.pattern_kind, PATTERN_KINDS)
        if self.device != "auto":
            try:
                torch.device(self.device)
            except RuntimeError as err:
                raise ValueError(f"extraction.device={self.device!r} is not a torch device; use auto, cpu, "
                                 "cuda or cuda:<index>") from err


@dataclass(frozen=True)
class EncoderSettings:
    """Which trained AP-MAE encodes every head's pattern, and how."""

    path: str  # an exported AP-MAE (APMAE.save directory, e.g. a run's apmae_net/) or a LitAPMAE checkpoint
    precision: str = "32"  # 32, or bf16-mixed / 16-mixed to run the encoder under autocast
    batch_size: int | None = None  # scenarios per encoder step over an attention cache; None = the
    # DataModule's own: 4 for AttentionCacheDataModule, the extraction batch for EncodingsDataModule (whose
    # stream: false then encodes in the very steps of its stream)

    def __post_init__(self) -> None:
        """Raises ``ValueError`` naming the ``encoder.<field>`` to change."""
        if not str(self.path):
            raise ValueError("encoder.path is empty; give an exported AP-MAE directory or a LitAPMAE checkpoint")
        _check_choice("encoder.precision", self.precision, tuple(ENCODER_PRECISIONS))
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError(f"encoder.batch_size={self.batch_size}; it must be at least 1 (or null for the "
                             "DataModule's default)")


def _check_choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{key}={value!r}; use one of {list(choices)}")


def check_settings(key: str, value: object, cls: type) -> None:
    """Raises ``TypeError`` when a DataModule's ``key`` argument is not a ``cls`` (e.g. a bare path or dict)."""
    if not isinstance(value, cls):
        raise TypeError(f"{key}={value!r}: pass {key}={cls.__name__}(...) (in a config, a nested mapping "
                        f"under {key}:)")
