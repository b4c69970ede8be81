"""The one rule by which a run encodes an attention cache: its batch, precision and progress bar.

Both attention-pattern DataModules encode caches through :func:`encode_cache` (the attention-cache
one with an ``encoder``, the encodings one with ``stream: false``), so a cache gets the same
encodings from either: ``encoder.batch_size`` scenarios per encoder step (unset: the extraction's
``batch_size``, the steps a stream of the same scenarios takes), under ``encoder.precision``, with
the extraction's progress bar. The encoder runs on the device extraction picks
(:func:`apmae.cache.extract.extraction_device`), as the stream's target does.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from apmae.cache.settings import ExtractionSettings
from apmae.encodings.settings import EncoderSettings
from apmae.encodings.store import EncodingSet, ensure_encodings
from apmae.model.loading import ENCODER_PRECISIONS

if TYPE_CHECKING:  # annotations only
    from apmae.cache.store import AttentionCache
    from apmae.model.net import APMAE


def encode_batch_size(encoder: EncoderSettings, extraction: ExtractionSettings) -> int:
    """Scenarios per encoder step over a cache: ``encoder.batch_size``, else the extraction's batch."""
    return encoder.batch_size or extraction.batch_size


def encode_cache(net: APMAE, cache: AttentionCache, path: str | Path, encoder: EncoderSettings,
                 extraction: ExtractionSettings, *, scaler: str) -> EncodingSet:
    """The encodings of every row of ``cache`` under ``net`` (on its device), read from ``path`` or computed.

    Raises:
        EncodingsMismatchError: ``path`` holds encodings of another encoder, scaler or cache.
        CacheError: a cache of sampled heads (every head is encoded).
    """
    return ensure_encodings(net, cache, path, scaler=scaler, batch_size=encode_batch_size(encoder, extraction),
                            autocast_dtype=ENCODER_PRECISIONS[encoder.precision], progress=extraction.progress)


__all__ = ["encode_batch_size", "encode_cache"]
