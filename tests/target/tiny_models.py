"""Tiny random causal LMs of each layout the project supports, and a GGUF writer for the Llama one.

- Llama layout: grouped-query attention (4 query heads, 2 key/value heads), RMSNorm, a tokenizer
  that adds BOS and has no FIM tokens (the shape of SmolLM2, Llama, Gemma);
- GPT-2 layout: fused ``c_attn``, Conv1D projections, learned positions, no BOS added;
- StarCoder2 (FIM) lives in :mod:`tests.cache.helpers`.

The GGUF file is written with the ``gguf`` package the way llama.cpp's converter lays a Llama
out (tensor names, Q/K row order, tokenizer metadata), so that transformers' own GGUF loader
reads it back; nothing here dequantises or parses GGUF itself.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM


def tiny_llama(tokenizer, *, layers: int = 2, heads: int = 4, kv_heads: int = 2, hidden: int = 32, seed: int = 0):
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                      num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                      max_position_embeddings=512, rms_norm_eps=1e-5, rope_theta=10000.0,
                      bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                      pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False, attn_implementation="eager")
    return LlamaForCausalLM(cfg).eval()


def tiny_gpt2(tokenizer, *, layers: int = 2, heads: int = 4, hidden: int = 32, seed: int = 0):
    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=len(tokenizer), n_embd=hidden, n_layer=layers, n_head=heads, n_positions=512,
                     bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                     attn_implementation="eager")
    return GPT2LMHeadModel(cfg).eval()


def _llama_cpp_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    """Q/K rows in llama.cpp's order: each head's two rotary halves interleaved."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_llama_gguf(model, tokenizer, path: Path) -> Path:
    """``model`` (a :func:`tiny_llama`) and its byte-level BPE ``tokenizer`` as a float32 GGUF file."""
    import gguf

    cfg = model.config
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_rope_freq_base(10000.0)
    writer.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
    writer.add_vocab_size(cfg.vocab_size)
    _add_tokenizer(writer, tokenizer)
    for name, tensor in _llama_tensors(model):
        writer.add_tensor(name, tensor)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _add_tokenizer(writer, tokenizer) -> None:
    vocab = tokenizer.get_vocab()
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    special = set(tokenizer.all_special_tokens)
    merges = json.loads(tokenizer.backend_tokenizer.to_str())["model"]["merges"]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types([3 if t in special else 1 for t in tokens])  # 3: control, 1: normal
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in merges])
    writer.add_bos_token_id(tokenizer.bos_token_id)
    writer.add_eos_token_id(tokenizer.eos_token_id)
    if tokenizer.pad_token_id is not None:
        writer.add_pad_token_id(tokenizer.pad_token_id)
    writer.add_add_bos_token(True)


def _llama_tensors(model):
    cfg, sd = model.config, {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    yield "token_embd.weight", sd["model.embed_tokens.weight"]
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        yield f"blk.{i}.attn_norm.weight", sd[p + "input_layernorm.weight"]
        yield f"blk.{i}.attn_q.weight", _llama_cpp_rows(sd[p + "self_attn.q_proj.weight"], cfg.num_attention_heads)
        yield f"blk.{i}.attn_k.weight", _llama_cpp_rows(sd[p + "self_attn.k_proj.weight"], cfg.num_key_value_heads)
        yield f"blk.{i}.attn_v.weight", sd[p + "self_attn.v_proj.weight"]
        yield f"blk.{i}.attn_output.weight", sd[p + "self_attn.o_proj.weight"]
        yield f"blk.{i}.ffn_norm.weight", sd[p + "post_attention_layernorm.weight"]
        yield f"blk.{i}.ffn_gate.weight", sd[p + "mlp.gate_proj.weight"]
        yield f"blk.{i}.ffn_up.weight", sd[p + "mlp.up_proj.weight"]
        yield f"blk.{i}.ffn_down.weight", sd[p + "mlp.down_proj.weight"]
    yield "output_norm.weight", sd["model.norm.weight"]
    yield "output.weight", sd["lm_head.weight"]
