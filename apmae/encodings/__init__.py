"""Stage 5, encodings: the frozen AP-MAE encoder over every head of every scenario.

- :mod:`apmae.encodings.store`: the encodings file beside a cache, and encoding a cache into it;
- :mod:`apmae.encodings.stream`: target -> encoder -> encodings file, with no patterns on disk;
- :mod:`apmae.encodings.settings`: :class:`~apmae.encodings.settings.EncoderSettings`, which AP-MAE encodes and how;
- :mod:`apmae.encodings.rows`: which rows a split serves, and encodings rows as batches (any DataLoader).
"""

from apmae.encodings.store import EncodingSet, EncodingsError, EncodingsMismatchError, encoder_hash, ensure_encodings

__all__ = ["EncodingSet", "EncodingsError", "EncodingsMismatchError", "encoder_hash", "ensure_encodings"]
