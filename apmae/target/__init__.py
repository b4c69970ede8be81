"""Stage 2, the target LLM: load it, run scenarios through it, reach its heads.

- :mod:`apmae.target.access`: load a causal LM (hub name or directory), run batches with eager
  attention, score the first token, zero heads;
- :mod:`apmae.target.layout`: where a model keeps each head's value and output projections
  (the one registry of attention modules; grouped-query attention mapped to query heads);
- :mod:`apmae.target.contribution`: each head's value-aware contribution weights, captured in the
  forward pass that yields the attentions (a head metric, and a pattern kind the cache stores).
"""

from apmae.target.access import Target, load_target, run_batch, wrap_model, zero_heads
from apmae.target.layout import AttentionLayer, attention_layers

__all__ = ["AttentionLayer", "Target", "attention_layers", "load_target", "run_batch", "wrap_model", "zero_heads"]
