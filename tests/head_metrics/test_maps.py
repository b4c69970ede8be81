"""MAPS: planted permutation heads, chunking, and the GQA mapping checked against a micro Llama's own forward."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from apmae.target.layout import attention_layers, vocabulary_ends
from apmae.head_metrics.maps import maps_scores, model_maps
from apmae.head_metrics.relations import Relation
from tests.head_metrics.helpers import micro_llama

PERM = np.array([2, 0, 3, 5, 1, 4])  # no fixed point


def _permutation_heads(sign: float):
    """V = D = hd = 6, E = U = I: head 0's W_VO maps token i to PERM[i] (times sign * (1 + i / 10)), head 1 copies."""
    n = len(PERM)
    w_o = torch.zeros(2, n, n)
    w_o[0, PERM, np.arange(n)] = sign * (1 + torch.arange(n) / 10)  # W_O[0]^T[i, PERM[i]]
    w_o[1] = torch.eye(n)
    return dict(embed=torch.eye(n), unembed=torch.eye(n), final_scale=torch.ones(n),
                value_weights=[torch.eye(n)[None]], output_weights=[w_o])


def _relations():
    ids = np.arange(len(PERM))
    return [Relation("perm", np.stack([ids, PERM], 1), k=1), Relation("copying", np.stack([ids, ids], 1), k=1)]


def test_permutation_head_scores_one_on_its_relation():
    result = maps_scores(**_permutation_heads(1.0), relations=_relations(), top_n=3)
    assert result.relations == ["perm", "copying"] and result.pairs == [6, 6]
    assert result.scores[:, 0].tolist() == [[1.0, 0.0], [0.0, 1.0]]  # rows perm, copying; columns heads 0, 1
    assert result.top_values[0, 0] == pytest.approx([1.5, 1.4, 1.3])
    assert result.top_pairs[0, 0].tolist() == [[5, PERM[5]], [4, PERM[4]], [3, PERM[3]]]


def test_negated_permutation_is_suppression():
    result = maps_scores(**_permutation_heads(-1.0), relations=_relations())
    assert result.scores[0, 0, 0] == 0.0 and result.suppression[0, 0, 0] == 1.0


def test_chunks_of_one_row_give_the_same_result():
    whole = maps_scores(**_permutation_heads(1.0), relations=_relations())
    rows = maps_scores(**_permutation_heads(1.0), relations=_relations(), chunk_elements=6)
    assert np.array_equal(whole.scores, rows.scores) and np.array_equal(whole.suppression, rows.suppression)
    assert np.array_equal(whole.top_pairs[0, 0], rows.top_pairs[0, 0])  # head 1's entries tie: any order


def test_final_norm_scale_changes_the_ranking():
    params = _permutation_heads(1.0)
    params["embed"] = torch.eye(6) + 0.5 * torch.roll(torch.eye(6), 1, 0)  # token i also carries i - 1
    params["final_scale"] = torch.tensor([1.0, 1.0, 1.0, 1.0, 4.0, 1.0])
    relation = [Relation("perm", np.stack([np.arange(6), PERM], 1), k=1)]
    # Token i = e_i + 0.5 e_(i-1) maps to PERM[i] (1.0) and PERM[i-1] (0.5). Only token 0 reaches
    # PERM[5] = 4 with 0.5, and the scale 4 on dimension 4 makes it beat PERM[0] = 2: 5 of 6 pairs hit.
    scores = maps_scores(**params, relations=relation).scores[0, 0, 0]
    unscaled = maps_scores(**{**params, "final_scale": torch.ones(6)}, relations=relation).scores[0, 0, 0]
    assert unscaled == 1.0 and scores == pytest.approx(5 / 6)


@pytest.mark.parametrize("head_dim", [8, 16], ids=["hidden-over-heads", "wide-heads"])
def test_gqa_mapping_matches_the_model_forward(head_dim):
    """Each query head's OV output as the model computes it: one-token inputs, values swapped in at v_proj.

    head_dim 16 with hidden 32 and 4 heads: heads wider than hidden / heads, as Gemma's."""
    model = micro_llama(40, layers=2, heads=4, kv_heads=2, hidden=32, head_dim=head_dim)
    layers, ends = attention_layers(model), vocabulary_ends(model)
    sources = torch.arange(40)
    captured = {}
    layer = model.model.layers[1].self_attn
    swap = layer.v_proj.register_forward_pre_hook(lambda m, args: (ends.embed[sources][:, None, :],))
    grab = layer.o_proj.register_forward_pre_hook(lambda m, args: captured.setdefault("z", args[0].detach()))
    try:
        with torch.no_grad():
            model(input_ids=torch.zeros(40, 1, dtype=torch.long))  # one token: each head outputs its value
    finally:
        swap.remove()
        grab.remove()
    z = captured["z"][:, 0].view(40, 4, head_dim)  # (n, H, hd) the model's own kv head for each query head
    w_o = layers[1].output_weight()  # (H, D, hd)
    readout = ends.unembed * ends.final_scale
    direct = torch.einsum("nhk,hdk,vd->hnv", z, w_o, readout)  # (H, n, V)
    relation = Relation("copying", np.stack([np.arange(40)] * 2, 1), k=3)
    result = model_maps(model, [relation], top_n=2)
    with torch.no_grad():
        in_top = (direct >= direct.topk(3, dim=-1).values[..., -1:]).gather(-1, sources.view(1, -1, 1).expand(4, -1, 1))
        best = direct.flatten(1).topk(2).values
    assert np.allclose(result.scores[0, 1], in_top.float().mean((1, 2)).numpy())
    assert np.allclose(result.top_values[1], best.numpy(), atol=1e-5)
    kv0 = result.top_values[1, 0]  # heads 0 and 1 share kv head 0 but have their own W_O: different maps
    assert not np.allclose(kv0, result.top_values[1, 1])


def test_bad_relations_are_refused():
    params = _permutation_heads(1.0)
    with pytest.raises(ValueError, match="'empty' has no"):
        maps_scores(**params, relations=[Relation("empty", np.zeros((0, 2), dtype=np.int64), k=1)])
    with pytest.raises(ValueError, match="outside the model's vocabulary"):
        maps_scores(**params, relations=[Relation("far", np.array([[0, 99]]), k=1)])
    with pytest.raises(ValueError, match="k=0"):
        maps_scores(**params, relations=[Relation("zero", np.array([[0, 1]]), k=0)])


def test_first_mlp_without_mlp_is_refused():
    from transformers import MistralConfig, MistralForCausalLM

    model = MistralForCausalLM(MistralConfig(vocab_size=30, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                             num_attention_heads=2, num_key_value_heads=1))
    del model.model.layers[0].mlp
    with pytest.raises(ValueError, match="first_mlp=False"):
        model_maps(model, [Relation("copying", np.array([[1, 1]]), k=1)], first_mlp=True)
