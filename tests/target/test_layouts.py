"""Every layout as a target: the cache equals the model's own eager attentions, and a killed
extraction resumes exactly (Llama: grouped-query attention, BOS, causal prompts; GPT-2: Conv1D)."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch

from apmae.cache.settings import ExtractionSettings
from apmae.cache.extract import extract
from apmae.cache.store import AttentionCache, shard_path
from apmae.target.access import load_target, zero_heads
from tests.target.conftest import SEQ_LEN, mine_causal

LAYOUTS = ["llama", "gpt2"]


@pytest.fixture(scope="module", params=LAYOUTS)
def layout(request, llama_dir, gpt2_dir, llama_tokenizer, gpt2_tokenizer, java_corpus):
    target_dir, tokenizer = {"llama": (llama_dir, llama_tokenizer), "gpt2": (gpt2_dir, gpt2_tokenizer)}[request.param]
    target = load_target(target_dir, device="cpu")
    return request.param, target, mine_causal(java_corpus, tokenizer)


def test_causal_scenarios_of_each_layout_start_as_its_tokenizer_does(layout, llama_tokenizer):
    name, _, scenarios = layout
    assert scenarios.prompt_format == "causal" and scenarios.seq_len == SEQ_LEN
    bos = llama_tokenizer.convert_tokens_to_ids("<s>")
    assert (scenarios.input_ids[:, 0] == bos).all() == (name == "llama")


def test_cache_equals_eager_attention(layout, tmp_path):
    name, target, scenarios = layout
    path = shard_path(tmp_path, name, 0)
    extract(target, scenarios, path, ExtractionSettings(batch_size=4, progress=False))
    with torch.no_grad():
        ref = target.model(input_ids=torch.from_numpy(scenarios.input_ids).long(), output_attentions=True)
    expected = torch.stack(ref.attentions, 1).numpy()  # (N, L, H, S, S): GQA already expanded to query heads
    stored = np.stack(list(AttentionCache(path)))
    assert stored.shape == expected.shape == (len(scenarios), 2, 4, SEQ_LEN, SEQ_LEN)
    np.testing.assert_array_equal(stored == 0, expected == 0)
    nz = expected != 0
    assert (np.abs(stored[nz] - expected[nz]) / expected[nz]).max() <= 2.0 ** -8  # bfloat16 rounding only


def test_an_interrupted_extraction_resumes_exactly(layout, tmp_path):
    name, target, scenarios = layout

    def stop_after_eight(committed: int) -> None:
        if committed == 8:
            raise KeyboardInterrupt

    path, full = shard_path(tmp_path, "resumed", 0), shard_path(tmp_path, "full", 0)
    with pytest.raises(KeyboardInterrupt):
        extract(target, scenarios, path, ExtractionSettings(batch_size=4, progress=False), on_batch=stop_after_eight)
    with h5py.File(path, "r+") as f:
        f["patterns"][8:12] = 255  # written but never committed: must be rewritten
    extract(target, scenarios, path, ExtractionSettings(batch_size=4, progress=False))
    extract(target, scenarios, full, ExtractionSettings(batch_size=4, progress=False))
    got, want = AttentionCache(path), AttentionCache(full)
    for i in range(len(want)):
        np.testing.assert_array_equal(got.packed(i), want.packed(i))
    np.testing.assert_array_equal(got.correct, want.correct)


def test_zeroing_a_head_changes_only_what_flows_through_it(layout):
    """Zeroing every head of the last layer leaves earlier layers' patterns and changes the output."""
    _, target, scenarios = layout
    ids = torch.from_numpy(scenarios.input_ids[:4]).long()
    with torch.no_grad():
        base = target.model(input_ids=ids, output_attentions=True)
        with zero_heads(target, {1: [0, 1, 2, 3]}):
            zeroed = target.model(input_ids=ids, output_attentions=True)
    torch.testing.assert_close(zeroed.attentions[0], base.attentions[0], rtol=0, atol=0)
    torch.testing.assert_close(zeroed.attentions[1], base.attentions[1], rtol=0, atol=0)  # patterns are inputs
    assert not torch.allclose(zeroed.logits, base.logits)


def test_a_prompt_longer_than_a_sliding_window_or_the_positions_is_refused(tiny_tokenizer, tmp_path):
    from apmae.target.access import wrap_model
    from tests.cache.helpers import micro_starcoder2, random_scenarios
    from tests.target.tiny_models import tiny_gpt2

    windowed = micro_starcoder2(len(tiny_tokenizer))
    windowed.config.sliding_window = 16
    fim_middle = tiny_tokenizer.convert_tokens_to_ids("<fim_middle>")
    long, short = (random_scenarios(4, s, len(tiny_tokenizer), fim_middle) for s in (24, 16))
    target = wrap_model(windowed, name="windowed")
    with pytest.raises(ValueError, match=r"sliding-window .* last 16 tokens.*S=24.*seq_len <= 16"):
        extract(target, long, tmp_path / "long.h5", ExtractionSettings(progress=False))
    assert (
        extract(target, short, tmp_path / "short.h5", ExtractionSettings(progress=False)).rows == 4
    )  # S <= window: whole patterns
    few_positions = tiny_gpt2(tiny_tokenizer)
    few_positions.config.n_positions = 20
    with pytest.raises(ValueError, match=r"has 20 positions.*S=24"):
        extract(wrap_model(few_positions, name="gpt2"), long, tmp_path / "gpt2.h5", ExtractionSettings(progress=False))


def test_zeroing_a_head_of_wide_heads_zeroes_exactly_its_slice(tiny_tokenizer):
    """head_dim 16 with hidden 32 and 4 heads (Gemma-like): zeroing head 2 equals removing its W_O columns."""
    from apmae.target.access import wrap_model
    from tests.head_metrics.helpers import micro_llama

    model = micro_llama(len(tiny_tokenizer), head_dim=16)
    target = wrap_model(model, name="wide")
    assert target.head_dim == 16 and model.model.layers[0].self_attn.o_proj.in_features == 64
    ids = torch.randint(5, len(tiny_tokenizer), (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), zero_heads(target, {0: [2]}):
        zeroed = model(input_ids=ids).logits
    o_proj = model.model.layers[0].self_attn.o_proj
    with torch.no_grad():
        saved = o_proj.weight[:, 32:48].clone()
        o_proj.weight[:, 32:48] = 0  # head 2's columns: [2 * 16, 3 * 16)
        removed = model(input_ids=ids).logits
        o_proj.weight[:, 32:48] = saved
        base = model(input_ids=ids).logits
    torch.testing.assert_close(zeroed, removed, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(zeroed, base)


def test_contribution_weights_of_a_causal_llama_and_a_clear_refusal_for_gpt2(layout, tmp_path):
    """Contribution caches read each head's value and output projections: Llama's separate v_proj / o_proj
    work with GQA and BOS prompts; GPT-2's fused c_attn is refused before any file is written."""
    name, target, scenarios = layout
    path = shard_path(tmp_path, f"{name}.contribution", 0)
    if name == "gpt2":
        with pytest.raises(ValueError, match="no recognised attention modules"):
            extract(target, scenarios, path, ExtractionSettings(progress=False, pattern_kind="contribution"))
        assert not path.exists()
        return
    extract(target, scenarios, path, ExtractionSettings(batch_size=4, progress=False, pattern_kind="contribution"))
    stored = np.stack(list(AttentionCache(path, pattern_kind="contribution")))  # (N, L, H, S, S)
    np.testing.assert_allclose(stored.sum(-1), 1.0, atol=2e-2)  # rows sum to 1 (bfloat16 per value)
    assert np.triu(stored[0, 0, 0], 1).max() == 0


def test_streamed_encodings_of_causal_prompts_equal_cache_then_encode(layout, tmp_path):
    from apmae.encodings.store import EncodingSet, ensure_encodings
    from apmae.encodings.stream import stream_encodings
    from apmae.model.net import APMAE, APMAEConfig
    from tests.stream.test_stream import assert_same_encodings

    _, target, scenarios = layout
    torch.manual_seed(0)
    net = APMAE(APMAEConfig.preset("tiny", seq_len=SEQ_LEN, patch_size=8, enc_dim=16, enc_depth=1, enc_heads=2,
                                   enc_mlp=32, dec_dim=16, dec_depth=1, dec_heads=2, dec_mlp=32)).eval()
    extract(target, scenarios, shard_path(tmp_path, "cache", 0), ExtractionSettings(batch_size=4, progress=False))
    from_cache = ensure_encodings(net, AttentionCache(shard_path(tmp_path, "cache", 0)), tmp_path / "enc.h5",
                                  batch_size=4, progress=False)
    streamed = stream_encodings(target, scenarios, net, shard_path(tmp_path, "stream", 0),
                                ExtractionSettings(batch_size=4, workers=1, progress=False))
    assert_same_encodings(EncodingSet(streamed.path), from_cache)
