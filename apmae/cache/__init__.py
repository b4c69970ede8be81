"""Stage 3, the attention cache: every head's pattern of every scenario, in HDF5.

- :mod:`apmae.cache.codec`: the value codec (bfloat16 bits, 14-bit packing);
- :mod:`apmae.cache.store`: the cache file (writer, reader, shards merged);
- :mod:`apmae.cache.settings`: :class:`ExtractionSettings`, how a target is run to extract;
- :mod:`apmae.cache.heads`: which heads a sampled cache stores (the layerwise draw);
- :mod:`apmae.cache.gather`: one batch through a target, its patterns in the stored form;
- :mod:`apmae.cache.extract`: batched extraction of a scenario set through a target.
"""

from apmae.cache.codec import decode_stored
from apmae.cache.store import AttentionCache, CacheError, CacheMismatchError, CacheSpec, CacheWriter

__all__ = ["AttentionCache", "CacheError", "CacheMismatchError", "CacheSpec", "CacheWriter", "decode_stored"]
