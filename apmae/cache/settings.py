"""How a target model is run over the scenarios to extract (or stream) their attention patterns.

:class:`ExtractionSettings` is passed whole from a config's ``extraction:`` block (or a dict or an
object in Python) through the DataModules to :func:`apmae.cache.extract.ensure_cache` and
:func:`apmae.cache.extract.extract`; each default is written here once. Every field is checked at
construction, with a message naming the ``extraction.<field>`` to change.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch

from apmae.cache.codec import DEFAULT_ENCODING, ENCODINGS
from apmae.cache.heads import layerwise_fraction
from apmae.cache.store import COMPRESSIONS, DEFAULT_COMPRESSION, DEFAULT_PATTERN_KIND, PATTERN_KINDS
from apmae.common.settings import check_choice, refuse_moved, settings_of
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
    # norm-based contribution weights, apmae.target.contribution), cached in their own files
    heads: str = "all"  # which heads the cache stores: all, or layerwise:<f> = round(f*H) heads of each layer per
    # scenario (apmae.cache.heads), in their own files; AP-MAE then trains on head_selection: layerwise:<f>
    head_seed: int = 0  # seeds the layerwise draw; the DataModule's seed must equal it
    progress: bool = True  # a progress bar (scenarios/s) while extracting or encoding

    def __post_init__(self) -> None:
        """Raises ``ValueError`` naming the ``extraction.<field>`` to change."""
        if self.batch_size < 1 or self.workers < 1:
            raise ValueError(f"extraction.batch_size={self.batch_size} and extraction.workers={self.workers} "
                             "must both be at least 1")
        check_choice("extraction.dtype", self.dtype, tuple(DTYPES))
        check_choice("extraction.compression", self.compression, COMPRESSIONS)
        check_choice("extraction.encoding", self.encoding, ENCODINGS)
        check_choice("extraction.pattern_kind", self.pattern_kind, PATTERN_KINDS)
        layerwise_fraction(self.heads, "extraction.heads")
        if not isinstance(self.head_seed, int) or self.head_seed < 0:  # numpy seeds a generator with naturals only
            raise ValueError(f"extraction.head_seed={self.head_seed!r}; use an integer >= 0")
        if self.device != "auto":
            try:
                torch.device(self.device)
            except RuntimeError as err:
                raise ValueError(f"extraction.device={self.device!r} is not a torch device; use auto, cpu, "
                                 "cuda or cuda:<index>") from err

    @classmethod
    def of(cls, value: "ExtractionSettings | Mapping[str, Any] | None") -> "ExtractionSettings":
        """``value`` as ExtractionSettings: itself, one built from a mapping of its fields, or the defaults."""
        return settings_of(cls, value, "extraction")


def moved_to_extraction(owner: str, arguments: Mapping[str, Any], param: str = "settings") -> None:
    """Refuse the extraction settings ``owner`` once took one by one, naming its argument ``param`` that takes them."""
    refuse_moved(owner, arguments, ExtractionSettings, "extraction", param)



__all__ = ["ExtractionSettings", "moved_to_extraction"]
