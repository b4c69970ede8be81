"""Micro Llama targets (grouped-query attention, no biases) for the head-metric tests."""

from __future__ import annotations


def micro_llama(vocab_size: int, *, layers: int = 2, heads: int = 4, kv_heads: int = 2, hidden: int = 32,
                seed: int = 0, head_dim: int | None = None):
    """A random-init Llama causal LM small enough for unit tests, eager attention.

    ``head_dim`` other than ``hidden // heads`` gives heads wider than the residual share, as Gemma's.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden,
                      num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                      max_position_embeddings=512, bos_token_id=0, eos_token_id=0, pad_token_id=0,
                      tie_word_embeddings=False, attn_implementation="eager", head_dim=head_dim or hidden // heads)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # a non-trivial final norm scale, so MAPS must apply it
        model.model.norm.weight.uniform_(0.5, 1.5)
    return model
