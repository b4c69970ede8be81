"""Evaluating head sets on a micro target: bookkeeping, the collapse, generation, and a target left as found."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from apmae.interventions.head_sets import HeadSet, sweep_head_sets, sweep_ks
from apmae.interventions.sweep import (InterventionScenarios, check_prompts_end_at_middle, evaluate, greedy_generate,
                                 run_sweep)
from apmae.target.access import run_batch, zero_heads
from apmae.target.layout import output_projections
from tests.interventions.conftest import HEADS, LAYERS, generate_without_cache

ALL_HEADS = HeadSet("positive", LAYERS * HEADS, None, tuple((l, h) for l in range(LAYERS) for h in range(HEADS)))


@pytest.fixture(scope="module")
def sweep(micro_target, scenarios):
    importance = np.random.default_rng(7).normal(size=(LAYERS, HEADS))
    sets = sweep_head_sets(importance, sweep_ks(LAYERS * HEADS), n_layers=LAYERS, n_heads=HEADS, seeds=[0, 1])
    return run_sweep(micro_target, scenarios, sets, batch_size=5)


def test_kv_cache_generation_equals_step_by_step_generation(micro_target, scenarios):
    ids = torch.from_numpy(scenarios.input_ids).long()
    for heads in ({}, {0: [1, 2], 1: [3]}):
        with zero_heads(micro_target, heads), torch.no_grad():
            logits, cached = greedy_generate(micro_target.model, ids, 4)
            plain = generate_without_cache(micro_target.model, ids, 4)
            full = micro_target.model(input_ids=ids).logits[:, -1]
        assert torch.equal(cached, plain)
        torch.testing.assert_close(logits, full, rtol=1e-5, atol=1e-5)


def test_flips_account_for_the_change_in_correct_count(sweep):
    base = sweep.baseline.correct
    assert 0 < base.sum() < len(base)
    moved = 0
    for r in sweep.settings:
        m = r.metrics
        assert m.i2c - m.c2i == int(r.outcome.correct.sum()) - int(base.sum())
        assert m.delta_accuracy == pytest.approx((m.i2c - m.c2i) / m.n)
        assert m.accuracy == pytest.approx(r.outcome.correct.mean()) and m.baseline_accuracy == base.mean()
        moved += m.i2c + m.c2i
    assert moved > 0  # some settings flip scenarios: the bookkeeping above is not vacuous


def test_baseline_generation_scores_the_planted_completions(sweep, scenarios):
    # Even rows hold the target's own greedy completion: exact; odd rows random holes.
    even = np.arange(len(scenarios)) % 2 == 0
    assert sweep.baseline.exact[even].all()
    assert (sweep.baseline.token_hits[even] == scenarios.label_len[even]).all()
    assert sweep.baseline_metrics().exact_match == pytest.approx(sweep.baseline.exact.mean())
    hits = sweep.baseline.token_hits.sum() / scenarios.label_len.sum()
    assert sweep.baseline_metrics().token_accuracy == pytest.approx(hits)


def test_zeroing_every_head_collapses_to_one_context_free_completion(micro_target, scenarios, sweep):
    # Without any head the last position sees only its own token (<fim_middle> everywhere): one prediction
    # and one continuation for every prompt; accuracy is the share of holes that happen to start with it.
    (full,) = [r for r in sweep.settings if r.head_set.strategy == "positive" and r.head_set.k == LAYERS * HEADS]
    out = full.outcome
    completion = out.generated[np.argmax(scenarios.label_len)]  # (K,) the one continuation, longest hole's
    assert len(set(out.prediction.tolist())) == 1
    assert all((out.generated[i, :n] == completion[:n]).all() for i, n in enumerate(scenarios.label_len))
    expected = (scenarios.label_ids[:, 0] == out.prediction[0]).mean()
    assert full.metrics.accuracy == pytest.approx(expected)
    same = [(scenarios.label_ids[i, :n] == completion[:n]).all() for i, n in enumerate(scenarios.label_len)]
    assert full.metrics.exact_match == pytest.approx(np.mean(same))
    assert full.metrics.c2i == int(sweep.baseline.correct.sum()) - int((sweep.baseline.correct & out.correct).sum())


def test_a_setting_agrees_with_a_direct_run_with_zeroed_heads(micro_target, scenarios, sweep):
    r = next(r for r in sweep.settings if r.head_set.strategy == "negative" and r.head_set.k == 2)
    with zero_heads(micro_target, r.head_set.as_mapping()):
        direct = run_batch(micro_target, torch.from_numpy(scenarios.input_ids),
                           torch.from_numpy(scenarios.label_ids[:, 0]))
    np.testing.assert_array_equal(r.outcome.prediction, direct.prediction.numpy())
    np.testing.assert_allclose(r.outcome.loss, direct.loss.numpy(), rtol=1e-5)
    assert r.metrics.accuracy == pytest.approx(direct.correct.float().mean().item())


def _hooks(model) -> dict[str, tuple]:
    """Every module's hook ids (transformers installs its own output hooks at the first forward pass)."""
    return {n: (tuple(m._forward_pre_hooks), tuple(m._forward_hooks)) for n, m in model.named_modules()}


def _state(model):
    return [(n, p.requires_grad, p.device, p.dtype) for n, p in model.named_parameters()], \
        [(n, m.training) for n, m in model.named_modules()]


def test_the_target_is_left_as_found_also_when_generation_raises(micro_target, scenarios):
    model = micro_target.model
    ids = torch.from_numpy(scenarios.input_ids[:6]).long()
    model.train()
    model.model.layers[0].eval()  # a mixed state must come back exactly
    model.lm_head.weight.requires_grad_(False)
    try:
        with torch.no_grad():
            before = model.eval()(input_ids=ids).logits
        model.train()
        model.model.layers[0].eval()
        before_state, before_hooks = _state(model), _hooks(model)
        evaluate(micro_target, scenarios, ALL_HEADS, batch_size=4)
        assert _state(model) == before_state and _hooks(model) == before_hooks

        calls = []

        def fail_on_first_generation_step(module, args, kwargs):
            calls.append(kwargs.get("input_ids", args[0] if args else None).shape[1])
            if calls[-1] == 1:
                raise RuntimeError("generation failed")

        handle = model.model.register_forward_pre_hook(fail_on_first_generation_step, with_kwargs=True)
        with pytest.raises(RuntimeError, match="generation failed"):
            evaluate(micro_target, scenarios, ALL_HEADS, batch_size=4)
        handle.remove()
        assert calls[-1] == 1 and calls[0] == scenarios.input_ids.shape[1]  # raised while generating
        assert _hooks(model) == before_hooks and _state(model) == before_state
        assert not any(p._forward_pre_hooks for p in output_projections(model))
        with torch.no_grad():
            after = model.eval()(input_ids=ids).logits
        assert torch.equal(before, after)
    finally:
        model.eval()
        model.lm_head.weight.requires_grad_(True)


def test_prompts_must_end_at_fim_middle(scenarios):
    check_prompts_end_at_middle(np.full(3, 15), 16)
    with pytest.raises(ValueError, match=r"1 scenarios have <fim_middle> before the end .*rows \[1\]"):
        check_prompts_end_at_middle(np.array([15, 9, 15]), 16)
    with pytest.raises(ValueError, match="at least one scenario"):
        evaluate(None, scenarios.subset(np.array([], dtype=np.int64)), {})


def test_identical_head_sets_share_one_evaluation(micro_target, scenarios, monkeypatch):
    import apmae.interventions.sweep as interventions

    calls = []
    real = interventions.evaluate
    monkeypatch.setattr(interventions, "evaluate", lambda *a, **k: calls.append(a[2]) or real(*a, **k))
    sets = sweep_head_sets(np.zeros((LAYERS, HEADS)), [8], n_layers=LAYERS, n_heads=HEADS, seeds=[0, 1])
    result = run_sweep(micro_target, scenarios.subset(np.arange(4)), sets)
    assert len(result.settings) == 5 and len(calls) == 2  # the baseline and the single all-heads set


def test_sdpa_attention_scores_like_eager_attention(micro_target_dir, micro_target, scenarios):
    from apmae.target.access import load_target

    fast = load_target(micro_target_dir, device="cpu")
    fast.model.set_attn_implementation("sdpa")
    for heads in ({}, {0: [0, 3], 1: [1]}):
        eager, sdpa = evaluate(micro_target, scenarios, heads), evaluate(fast, scenarios, heads)
        np.testing.assert_array_equal(eager.prediction, sdpa.prediction)
        np.testing.assert_array_equal(eager.generated, sdpa.generated)
        np.testing.assert_allclose(eager.loss, sdpa.loss, rtol=1e-5)


def test_scoring_the_first_tokens_only_keeps_the_first_token_outcome(micro_target, scenarios, sweep):
    first = scenarios.first_tokens(1)
    assert first.label_ids.shape[1] == 1 and (first.label_len == 1).all()
    assert np.array_equal(first.input_ids, scenarios.input_ids)
    short = run_sweep(micro_target, first, [r.head_set for r in sweep.settings[:2]], batch_size=8)
    assert np.array_equal(short.baseline.correct, sweep.baseline.correct)
    assert np.array_equal(short.baseline.exact, short.baseline.correct)  # one token: exact match is the first token
    assert short.baseline.generated.shape[1] == 1
    for mine, full in zip(short.settings, sweep.settings[:2]):
        assert np.array_equal(mine.outcome.correct, full.outcome.correct)
    with pytest.raises(ValueError, match="m >= 1"):
        scenarios.first_tokens(0)


def test_a_first_token_sweep_shares_the_layers_below_each_head_set_and_scores_as_one_set_at_a_time(
        micro_target, scenarios, sweep):
    from apmae.target.layout import decoder_blocks, find_attention

    first = scenarios.first_tokens(1)
    sets = [r.head_set for r in sweep.settings]
    blocks = decoder_blocks(micro_target.model)
    calls = []  # layer 0's attention runs only when block 0 computes (a replayed block returns its record)
    handle = find_attention(micro_target.model).modules[0].register_forward_hook(lambda *_: calls.append(1))
    try:
        shared = run_sweep(micro_target, first, sets, batch_size=5)
    finally:
        handle.remove()
    for r in shared.settings:
        alone = evaluate(micro_target, first, r.head_set, batch_size=5)
        for name in ("prediction", "correct", "loss", "generated", "token_hits", "exact"):
            np.testing.assert_array_equal(getattr(r.outcome, name), getattr(alone, name), err_msg=name)
    np.testing.assert_array_equal(shared.baseline.loss, evaluate(micro_target, first, {}, batch_size=5).loss)
    # block 0 computes once per batch for the baseline and once for each distinct set that zeroes a head of layer 0
    distinct = {h.heads for h in sets if h.heads}
    from_layer0 = sum(min(layer for layer, _ in heads) == 0 for heads in distinct)
    batches = -(-len(first) // 5)
    assert len(calls) == batches * (1 + from_layer0) < batches * (1 + len(distinct))
    assert all("forward" not in block.__dict__ for block in blocks)  # every block computes again


def test_a_model_whose_replay_differs_runs_every_set_whole(micro_target, scenarios, sweep, monkeypatch):
    import apmae.interventions.sweep as sweep_module

    monkeypatch.setattr(sweep_module, "_replay_reproduces", lambda *args: False)
    first = scenarios.first_tokens(1)
    sets = [r.head_set for r in sweep.settings[:3]]
    with pytest.warns(UserWarning, match="does not reproduce its logits exactly"):
        whole = run_sweep(micro_target, first, sets, batch_size=5)
    for r in whole.settings:
        np.testing.assert_array_equal(r.outcome.loss, evaluate(micro_target, first, r.head_set, batch_size=5).loss)
