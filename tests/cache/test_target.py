"""Target access: loading like a hub model, the batched first-token outcome, head zeroing."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from apmae.cache.codec import encode_patterns, encode_stored
from apmae.cache.gather import run_batch_stored
from apmae.target.access import (Target, accepts_argument, load_target, run_batch, run_batch_triangles, wrap_model,
                                 zero_heads)
from apmae.target.layout import ATTENTION_LAYOUTS, attention_layers, find_attention, output_projections
from apmae.common.triangle import to_triangle


def test_loaded_target_reports_its_shape(target, target_dir):
    assert (target.n_layers, target.n_heads, target.head_dim) == (2, 4, 8)
    assert target.model.config._attn_implementation == "eager"
    summary = target.summary()
    assert summary["model"] == str(target_dir) and summary["dtype"] == "float32"
    assert summary["tokenizer_vocab"] == len(target.tokenizer)


def test_unknown_dtype_and_missing_model_raise(tmp_path):
    with pytest.raises(ValueError, match="dtype"):
        load_target(tmp_path, dtype="float8")
    with pytest.raises(ValueError, match="cannot load target model"):
        load_target(tmp_path / "nothing-here", device="cpu")


def test_batch_outcome_matches_full_logits(target, scenarios):
    ids = torch.from_numpy(scenarios.input_ids[:6]).long()
    label = torch.from_numpy(scenarios.label_ids[:6, 0]).long()
    out = run_batch(target, ids, label)
    with torch.no_grad():
        ref = target.model(input_ids=ids, output_attentions=True)
    logp = torch.log_softmax(ref.logits[:, -1].float(), dim=-1)
    assert torch.equal(out.prediction, logp.argmax(-1))
    torch.testing.assert_close(out.probability, logp.max(-1).values.exp(), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(out.loss, torch.nn.functional.cross_entropy(ref.logits[:, -1], label, reduction="none"),
                               rtol=1e-5, atol=1e-6)
    assert torch.equal(out.correct, out.prediction == label)
    assert out.attentions.shape == (6, 2, 4, 24, 24)
    torch.testing.assert_close(out.attentions, torch.stack(ref.attentions, 1), rtol=1e-6, atol=1e-7)


def test_packed_patterns_are_the_lower_triangles(target, scenarios):
    ids = torch.from_numpy(scenarios.input_ids[:3])
    label = torch.from_numpy(scenarios.label_ids[:3, 0])
    full = run_batch(target, ids, label).attentions.numpy()
    packed = run_batch_triangles(target, ids, label).triangles.numpy()
    assert packed.shape == (3, 2, 4, 24 * 25 // 2)
    np.testing.assert_array_equal(packed, to_triangle(full))
    assert np.all(np.triu(full, k=1) == 0)  # nothing is lost by packing


@pytest.mark.parametrize("encoding", ["bfloat16-14bit", "bfloat16-bits"])
def test_stored_patterns_are_the_encoded_triangles(target, scenarios, encoding):
    ids = torch.from_numpy(scenarios.input_ids[:3])
    label = torch.from_numpy(scenarios.label_ids[:3, 0])
    stored = run_batch_stored(target, ids, label, encoding=encoding)
    triangles = run_batch_triangles(target, ids, label)
    assert stored.encoding == encoding and stored.stored.shape[:3] == (3, 2, 4)
    np.testing.assert_array_equal(stored.stored, encode_stored(encode_patterns(triangles.triangles), encoding))
    assert torch.equal(stored.prediction, triangles.prediction) and torch.equal(stored.loss, triangles.loss)


def test_model_without_attentions_raises(target, scenarios):
    model = copy.deepcopy(target.model)
    model.set_attn_implementation("sdpa")
    sdpa = Target(model=model, tokenizer=None, name="sdpa-model", n_layers=2, n_heads=4, head_dim=8, dtype="float32")
    with pytest.raises(ValueError, match="returned no attention patterns.*eager"):
        run_batch(sdpa, torch.from_numpy(scenarios.input_ids[:2]), torch.from_numpy(scenarios.label_ids[:2, 0]))


def test_model_without_output_projection_raises():
    with pytest.raises(ValueError, match="no recognisable per-layer attention output projection"):
        output_projections(torch.nn.Sequential(torch.nn.Linear(4, 4)))


def test_one_layout_registry_serves_interventions_and_head_metrics():
    llama, gpt2 = _llama(50), _gpt2(50)
    assert output_projections(llama) == [layer.self_attn.o_proj for layer in llama.model.layers]
    assert output_projections(gpt2) == [block.attn.c_proj for block in gpt2.transformer.h]
    found = find_attention(llama)
    assert found.layout is ATTENTION_LAYOUTS[0] and found.modules == [l.self_attn for l in llama.model.layers]
    assert find_attention(gpt2).layout.families == "GPT-2 (Conv1D)"
    assert find_attention(torch.nn.Sequential(torch.nn.Linear(4, 4))) is None
    layers = attention_layers(llama)  # the head metrics' view: the same output projections, plus values
    assert [l.o_proj for l in layers] == output_projections(llama)
    assert [l.v_proj for l in layers] == [layer.self_attn.v_proj for layer in llama.model.layers]
    with pytest.raises(ValueError, match="separate v_proj and o_proj"):
        attention_layers(gpt2)  # interventions reach GPT-2's heads; the head metrics need separate values


def test_layers_missing_from_the_layout_are_refused():
    llama = _llama(50)
    llama.model.layers[0].self_attn = torch.nn.Identity()  # layer 0 without an output projection
    with pytest.raises(ValueError, match=r"attention modules of layers \[1\] are not contiguous from 0"):
        output_projections(llama)


def test_accepts_argument_reads_the_forward_signature():
    assert accepts_argument(_llama(50), "logits_to_keep") and accepts_argument(_llama(50), "labels")
    assert not accepts_argument(torch.nn.Linear(4, 4), "logits_to_keep")
    assert accepts_argument(torch.nn.Linear(4, 4), "input")


# ---------------------------------------------------------------- head zeroing


def _llama(vocab: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, bos_token_id=0, eos_token_id=0, pad_token_id=0)
    return LlamaForCausalLM(cfg).eval()


def _gpt2(vocab: int):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=vocab, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                     bos_token_id=0, eos_token_id=0, pad_token_id=0)
    return GPT2LMHeadModel(cfg).eval()


def _zero_in_weights(model, layer: int, head: int, head_dim: int):
    """Second computation: the same ablation done by zeroing the projection's input columns."""
    ablated = copy.deepcopy(model)
    proj = output_projections(ablated)[layer]
    cols = slice(head * head_dim, (head + 1) * head_dim)
    with torch.no_grad():
        if type(proj).__name__ == "Conv1D":  # GPT-2 stores (in, out)
            proj.weight[cols, :] = 0
        else:
            proj.weight[:, cols] = 0
    return ablated


def _hook_count(model) -> int:
    return sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in model.modules())


@pytest.mark.parametrize("arch", ["starcoder2", "llama", "gpt2"])
def test_zero_heads_equals_zeroed_weights_and_cleans_up(arch, target):
    model = {"starcoder2": lambda v: target.model, "llama": _llama, "gpt2": _gpt2}[arch](500)
    wrapped = wrap_model(model)
    ids = torch.randint(5, 500, (2, 16))
    with torch.no_grad():
        base = model(input_ids=ids).logits
        hooks = _hook_count(model)  # transformers registers a few of its own
        with zero_heads(wrapped, {1: [2]}):
            assert _hook_count(model) == hooks + 1
            ablated = model(input_ids=ids).logits
        expected = _zero_in_weights(model, 1, 2, wrapped.head_dim)(input_ids=ids).logits
        after = model(input_ids=ids).logits
    torch.testing.assert_close(ablated, expected, rtol=1e-5, atol=1e-5)
    assert (ablated - base).abs().max() > 1e-4  # the head mattered
    assert _hook_count(model) == hooks
    torch.testing.assert_close(after, base, rtol=0, atol=0)


def test_zeroing_another_head_gives_another_result(target):
    ids = torch.randint(5, 500, (1, 16))
    with torch.no_grad(), zero_heads(target, {0: [0]}):
        a = target.model(input_ids=ids).logits
    with torch.no_grad(), zero_heads(target, {0: [1]}):
        b = target.model(input_ids=ids).logits
    with torch.no_grad():
        expected_b = _zero_in_weights(target.model, 0, 1, target.head_dim)(input_ids=ids).logits
    torch.testing.assert_close(b, expected_b, rtol=1e-5, atol=1e-5)
    assert (a - b).abs().max() > 1e-4


def test_hooks_are_removed_when_the_block_raises(target):
    hooks = _hook_count(target.model)
    with pytest.raises(RuntimeError, match="boom"):
        with zero_heads(target, {0: [0, 1], 1: [3]}):
            assert _hook_count(target.model) == hooks + 2
            raise RuntimeError("boom")
    assert _hook_count(target.model) == hooks


@pytest.mark.parametrize("heads, match", [({2: [0]}, "layer 2 is out of range"), ({0: [4]}, r"heads \[4\] of layer 0"),
                                          ({-1: [0]}, "layer -1")])
def test_zero_heads_validates_indices(target, heads, match):
    hooks = _hook_count(target.model)
    with pytest.raises(ValueError, match=match):
        with zero_heads(target, heads):
            pass
    assert _hook_count(target.model) == hooks
