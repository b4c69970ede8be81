"""Stage 5, encodings: the frozen AP-MAE encoder over every head of every scenario.

- :mod:`apmae.encodings.store`: the encodings file beside a cache, and encoding a cache into it;
- :mod:`apmae.encodings.stream`: target -> encoder -> encodings file, with no patterns on disk.
"""

from apmae.encodings.store import EncodingSet, EncodingsError, EncodingsMismatchError, encoder_hash, ensure_encodings

__all__ = ["EncodingSet", "EncodingsError", "EncodingsMismatchError", "encoder_hash", "ensure_encodings"]
