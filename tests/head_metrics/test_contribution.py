"""Contribution weights: hand-computed rows, exact row sums, value-only keys, agreement with a direct einsum."""

from __future__ import annotations

import pytest
import torch

from apmae.target.contribution import (capture_values, contribution_weights, row_l1, run_contributions,
                                             sink_share)
from apmae.target.layout import attention_layers
from apmae.target.access import wrap_model
from tests.cache.helpers import micro_starcoder2
from tests.head_metrics.helpers import micro_llama


def _causal_softmax(b: int, h: int, s: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(b, h, s, s, generator=g, dtype=torch.float64)
    causal = torch.tril(torch.ones(s, s, dtype=torch.bool))
    return torch.softmax(scores.masked_fill(~causal, float("-inf")), dim=-1)


def test_hand_computed_row_with_a_negative_contribution():
    # D = hd = 1, W_O = 1: row 1 attends 0.5 / 0.5 to values 3 and -1, so o_1 = 1.
    attention = torch.tensor([[[[1.0, 0.0], [0.5, 0.5]]]])
    values = torch.tensor([[[[3.0], [-1.0]]]])
    w = contribution_weights(attention, values, torch.ones(1, 1, 1))
    assert torch.allclose(w.signed[0, 0, 1], torch.tensor([1.5, -0.5]))  # 0.5*3*1/1, 0.5*(-1)*1/1
    assert torch.allclose(w.norm[0, 0, 1], torch.tensor([0.75, 0.25]))  # 1.5 / 2, 0.5 / 2
    assert torch.allclose(w.signed[0, 0, 0], torch.tensor([1.0, 0.0]))


def test_rows_sum_to_one():
    attention = _causal_softmax(2, 3, 7, seed=0)
    g = torch.Generator().manual_seed(1)
    values = torch.randn(2, 3, 7, 4, generator=g, dtype=torch.float64)
    w_o = torch.randn(3, 5, 4, generator=g, dtype=torch.float64)
    w = contribution_weights(attention, values, w_o)
    ones = torch.ones(2, 3, 7)
    assert torch.allclose(w.signed.sum(-1), ones, atol=1e-5)
    assert torch.allclose(w.norm.sum(-1), ones, atol=1e-5)
    assert (w.norm >= 0).all() and (w.signed < 0).any()  # signed entries do go negative
    assert not torch.triu(w.norm[0, 0], diagonal=1).any()  # causal: nothing above the diagonal


def test_only_the_key_with_values_contributes_whatever_the_attention():
    attention = _causal_softmax(1, 2, 6, seed=2)
    values = torch.zeros(1, 2, 6, 3, dtype=torch.float64)
    values[:, :, 2] = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    w_o = torch.randn(2, 4, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    w = contribution_weights(attention, values, w_o)
    expected = torch.zeros(6, 6)
    expected[2:, 2] = 1.0  # queries 0 and 1 cannot see key 2: their head output is zero, so are their rows
    for kind in (w.signed, w.norm):
        assert torch.allclose(kind[0, 0].float(), expected, atol=1e-6)
        assert torch.allclose(kind[0, 1].float(), expected, atol=1e-6)


def test_sink_share_and_row_distance_by_hand():
    a = torch.tensor([[1.0, 0.0, 0.0], [0.6, 0.4, 0.0], [0.2, 0.3, 0.5]])
    b = torch.tensor([[1.0, 0.0, 0.0], [0.1, 0.9, 0.0], [0.2, 0.3, 0.5]])
    assert float(sink_share(a)) == pytest.approx(0.4)  # (0.6 + 0.2) / 2, query 0 left out
    assert float(row_l1(a, b)) == pytest.approx(0.5)  # rows 1, 2: (0.5 + 0.5 + 0) and 0, mean 0.5


def _direct(model, input_ids: torch.Tensor):
    """Contributions from the layer inputs with full D-dim vectors, and the model's own o_proj inputs."""
    cfg = model.config
    h, kv = cfg.num_attention_heads, cfg.num_key_value_heads
    hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // h  # Gemma-like heads are wider
    o_inputs = {}
    hooks = [layer.self_attn.o_proj.register_forward_pre_hook(
        lambda m, args, i=i: o_inputs.__setitem__(i, args[0].detach())) for i, layer in enumerate(model.model.layers)]
    try:
        out = model(input_ids=input_ids, output_attentions=True, output_hidden_states=True, use_cache=False)
    finally:
        for hook in hooks:
            hook.remove()
    results = []
    for i, layer in enumerate(model.model.layers):
        x = layer.input_layernorm(out.hidden_states[i])  # (B, S, D)
        attn = layer.self_attn
        v = torch.nn.functional.linear(x, attn.v_proj.weight, attn.v_proj.bias)  # (B, S, kv*hd)
        v = v.view(*v.shape[:2], kv, hd)[:, :, torch.arange(h) // (h // kv)]  # (B, S, H, hd)
        a = out.attentions[i]  # (B, H, S, S)
        w_o = attn.o_proj.weight.view(cfg.hidden_size, h, hd)  # (D, H, hd)
        f = torch.einsum("bjhk,dhk->bhjd", v, w_o)  # (B, H, S, D)
        o = torch.einsum("bhij,bhjd->bhid", a, f)
        signed = a * torch.einsum("bhjd,bhid->bhij", f, o) / (o * o).sum(-1)[..., None]
        weighted = a * f.norm(dim=-1)[:, :, None, :]
        z = torch.einsum("bhij,bjhk->bihk", a, v).flatten(2)  # (B, S, H*hd) what o_proj should receive
        results.append((a, signed, weighted / weighted.sum(-1, keepdim=True), z, o_inputs[i]))
    return results


def wide_head_llama(vocab_size, **kwargs):
    """Llama with head_dim 16 > hidden 32 / 4 heads, as Gemma's heads are wider than hidden / heads."""
    return micro_llama(vocab_size, head_dim=16, **kwargs)


@pytest.mark.parametrize("build", [micro_starcoder2, micro_llama, wide_head_llama],
                         ids=["starcoder2", "llama", "llama-wide-heads"])
def test_agrees_with_direct_einsum_on_micro_models(build):
    model = build(97, layers=2, heads=4, kv_heads=2, hidden=32)
    ids = torch.randint(0, 97, (3, 11), generator=torch.Generator().manual_seed(0))
    batch = run_contributions(wrap_model(model), ids)
    with torch.no_grad():
        direct = _direct(model, ids)
    for layer, (a, signed, norm, z, o_input) in enumerate(direct):
        assert torch.allclose(z, o_input, atol=1e-5)  # the direct GQA mapping is the model's own
        assert torch.allclose(batch.attention[:, layer], a, atol=1e-6)
        assert torch.allclose(batch.signed[:, layer], signed, atol=1e-4)
        assert torch.allclose(batch.norm[:, layer], norm, atol=1e-5)
    assert not any(layer.v_proj._forward_hooks for layer in attention_layers(model))


def test_value_hooks_are_removed_when_the_block_raises():
    model = micro_llama(50)
    layers = attention_layers(model)
    with pytest.raises(RuntimeError, match="boom"):
        with capture_values(layers):
            assert all(layer.v_proj._forward_hooks for layer in layers)
            raise RuntimeError("boom")
    assert not any(layer.v_proj._forward_hooks for layer in layers)


def test_values_are_captured_only_from_the_calling_threads_forward_passes():
    import threading

    model = micro_llama(50)
    layers = attention_layers(model)
    ids = torch.arange(1, 9)[None]  # (1, 8)
    with torch.no_grad(), capture_values(layers) as values:
        other = threading.Thread(target=lambda: model(input_ids=ids + 1))  # another extraction worker's batch
        other.start()
        other.join()
        assert values == {}
        model(input_ids=ids)
        assert sorted(values) == [0, 1]
        first = model.model.layers[0].input_layernorm(model.model.embed_tokens(ids))  # layer 0's v_proj input
        assert torch.allclose(values[0], layers[0].v_proj(first))


def test_model_without_value_and_output_projections_is_refused():
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(vocab_size=50, n_embd=16, n_layer=1, n_head=2, n_positions=32))
    with pytest.raises(ValueError, match="separate v_proj and o_proj"):
        attention_layers(model)


def test_mismatched_shapes_are_refused():
    with pytest.raises(ValueError, match=r"\(B, H, S, hd\)"):
        contribution_weights(torch.ones(1, 2, 3, 3), torch.ones(1, 3, 3, 4), torch.ones(2, 5, 4))
