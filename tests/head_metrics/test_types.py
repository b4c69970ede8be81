"""Head-type detectors: planted heads of a hand-built model score 1 on their type, hand patterns, tables, errors."""

from __future__ import annotations

import contextlib
import csv

import numpy as np
import pytest
import torch
from transformers.models.llama import modeling_llama

from apmae.cache.store import AttentionCache, cache_files
from apmae.head_metrics import suite
from apmae.head_metrics.types import (DEFAULT_THRESHOLDS, TYPES, check_thresholds, head_types, model_repeat_scores,
                                      ordinary_tokens, pattern_scores, repeated_tokens)
from apmae.target.access import load_target, run_batch, wrap_model
from apmae.callbacks.head_metrics import HeadMetrics, validation_rows
from apmae.datamodules.attention_cache import target_short_name
from tests.head_metrics.helpers import micro_llama

# (layer, head) -> planted type; heads 0, 1 read key/value head 0 and heads 2, 3 key/value head 1
PLANTED = {(0, 0): "previous_token", (0, 1): "sink", (0, 2): "self", (1, 0): "induction", (1, 2): "duplicate_token"}


def _earlier_copy(ids: torch.Tensor) -> torch.Tensor:
    """(B, S) -> (B, S) position of the latest earlier occurrence of each token, -1 where there is none."""
    s = ids.shape[1]
    same = (ids[:, :, None] == ids[:, None, :]) & torch.ones(s, s, dtype=torch.bool).tril(-1)  # (B, t, s) s < t
    position = torch.arange(s).expand_as(same)
    return torch.where(same, position, -1).max(-1).values


def planted_weights(kind: str, ids: torch.Tensor) -> torch.Tensor:
    """(B, S) ids -> (B, S, S) one-hot attention of a head of type ``kind`` (the first token when it has no key)."""
    b, s = ids.shape
    t = torch.arange(s).expand(b, s)
    copy = _earlier_copy(ids)
    key = {"previous_token": (t - 1).clamp(min=0), "sink": torch.zeros_like(t), "self": t,
           "duplicate_token": copy.clamp(min=0), "induction": torch.where(copy >= 0, copy + 1, 0)}[kind]
    return torch.nn.functional.one_hot(key, s).float()


@contextlib.contextmanager
def planted_model(monkeypatch, vocab: int = 64):
    """A micro Llama (GQA, 2 layers x 4 heads) whose :data:`PLANTED` heads attend by their type's rule."""
    model = micro_llama(vocab, layers=2, heads=4, kv_heads=2)
    seen = {}
    handle = model.register_forward_pre_hook(lambda m, a, kw: seen.update(ids=kw["input_ids"]), with_kwargs=True)
    eager = modeling_llama.eager_attention_forward

    def attention(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
        _, weights = eager(module, query, key, value, attention_mask, scaling, dropout, **kwargs)
        weights = weights.clone()
        for (layer, head), kind in PLANTED.items():
            if layer == module.layer_idx:
                weights[:, head] = planted_weights(kind, seen["ids"].cpu()).to(weights)
        values = modeling_llama.repeat_kv(value, module.num_key_value_groups)
        return (weights @ values).transpose(1, 2).contiguous(), weights

    monkeypatch.setattr(modeling_llama, "eager_attention_forward", attention)
    try:
        yield wrap_model(model, name="planted")
    finally:
        handle.remove()


def test_planted_heads_score_one_on_their_type_and_are_the_top_head(monkeypatch):
    with planted_model(monkeypatch) as target:
        ids = torch.as_tensor(np.random.default_rng(0).integers(1, 64, size=(3, 20)))
        attentions = run_batch(target, ids, ids[:, -1]).attentions.numpy()  # (B, L, H, S, S)
        scores = pattern_scores(attentions, window=10)
        scores.update(model_repeat_scores(target, np.arange(1, 64), first=0, length=12, n_sequences=3))
    for (layer, head), kind in PLANTED.items():
        if kind != "self":  # the self head also scores 1 on `local`: checked below
            assert scores[kind][layer, head] == pytest.approx(1.0, abs=1e-6)
            assert np.unravel_index(scores[kind].argmax(), scores[kind].shape) == (layer, head)
    assert scores["self"][0, 2] == pytest.approx(1.0, abs=1e-6)
    assert scores["local"][0, 2] == pytest.approx(1.0)  # WAAD 0
    assert scores["local"][0, 0] == pytest.approx(1 - 1 / 10)  # WAAD 1 at every query
    assert scores["duplicate_token"][1, 0] == pytest.approx(0.0, abs=1e-6)  # the induction head reads p - n + 1 only
    types = head_types(scores, kv_heads=2)
    assert types.kv_head.tolist() == [[0, 0, 1, 1], [0, 0, 1, 1]]
    main = types.main_type()
    assert {key: main[key] for key in PLANTED} == PLANTED
    assert types.all_types()[0, 2] == "self+local"


def test_hand_pattern_scores():
    pattern = np.tril(np.ones((3, 3))) / np.arange(1, 4)[:, None]  # uniform causal rows: 1, 1/2, 1/3
    scores = pattern_scores(pattern[None, None, None], window=10)
    for kind in ("previous_token", "sink", "self"):
        assert scores[kind][0, 0] == pytest.approx((1 / 2 + 1 / 3) / 2)
    # WAAD: t=1 0.5 * 1; t=2 (2 + 1) / 3 = 1 -> mean 0.75
    assert scores["local"][0, 0] == pytest.approx(1 - 0.75 / 10)


def test_repeat_scores_read_the_two_offsets():
    tokens = repeated_tokens(np.arange(5, 25), first=1, length=4, n_sequences=2, seed=3)
    assert tokens.shape == (2, 9) and (tokens[:, 0] == 1).all()
    assert (tokens[:, 1:5] == tokens[:, 5:]).all() and all(len(set(row[1:5])) == 4 for row in tokens)
    ids = torch.as_tensor(tokens)
    for kind, offset in (("duplicate_token", 4), ("induction", 3)):
        weights = planted_weights(kind, ids)  # (B, S, S)
        assert (weights[:, 5:].argmax(-1) == torch.arange(5, 9) - offset).all()


def test_types_table_of_a_cache_agrees_with_its_patterns(tmp_path, cache_dir, target_dir):
    target = load_target(target_dir, device="cpu")
    name = target_short_name(str(target_dir))
    cache = AttentionCache(cache_files(cache_dir, name))
    rows = validation_rows(cache, 3)
    report = suite.types_report(target, cache, rows, window=4, repeat_length=5, name=name)
    patterns = np.stack([cache.scenario(int(r)) for r in rows])  # (N, L, H, S, S)
    s = patterns.shape[-1]
    with open(report.write(tmp_path)[0], newline="") as f:
        table = list(csv.DictReader(f))
    assert list(table[0]) == ["layer", "head", *TYPES, "kv_head", "head_type", "types"]
    for row in table:
        layer, head = int(row["layer"]), int(row["head"])
        head_patterns = patterns[:, layer, head]
        assert float(row["sink"]) == pytest.approx(head_patterns[:, 1:, 0].mean(), rel=1e-5)
        assert float(row["previous_token"]) == pytest.approx(
            np.mean([head_patterns[:, t, t - 1] for t in range(1, s)]), rel=1e-5)
        assert 0 <= float(row["induction"]) <= 1 and 0 <= float(row["duplicate_token"]) <= 1
    assert report.scalars()["sink_heads"] == sum(r["types"].count("sink") for r in table)
    assert report.line().startswith(f"head types [{name}, 3 scenarios")


def test_the_first_token_is_never_a_repeat_candidate():
    assert ordinary_tokens(np.array([[3, 0, 5], [5, 7, 3]]), special_ids=[0, 7]).tolist() == [3, 5]


@pytest.mark.parametrize("thresholds, match", [({"inductive": 0.4}, "unknown head types"),
                                               ({"sink": 0.0}, r"must be in \(0, 1\]")])
def test_bad_thresholds_are_refused(thresholds, match):
    with pytest.raises(ValueError, match=match):
        check_thresholds(thresholds)
    with pytest.raises(ValueError, match=match):
        HeadMetrics(methods=["types"], type_thresholds=thresholds)


def test_thresholds_are_documented_defaults():
    assert check_thresholds({"sink": 0.8}) == {**DEFAULT_THRESHOLDS, "sink": 0.8}
    with pytest.raises(ValueError, match="length <= 3"):
        repeated_tokens(np.arange(3), first=0, length=4, n_sequences=1)


def test_the_callback_runs_types_with_its_local_threshold(cache_dir, target_dir):
    from types import SimpleNamespace

    name = target_short_name(str(target_dir))
    cache = AttentionCache(cache_files(cache_dir, name))
    data = SimpleNamespace(target=str(target_dir), caches={name: cache}, train_target_name=name)
    callback = HeadMetrics(methods=["types"], n_scenarios=3, window=4, local_threshold=0.25, repeat_length=5,
                           device="cpu")
    [(label, report)] = callback._compute(data)
    assert label == name and report.method == "types" and report.repeat_length == 5
    assert report.types.thresholds["local"] == 0.75  # local when mean WAAD <= 0.25 * W, i.e. score >= 1 - 0.25
    direct = suite.types_report(load_target(target_dir, device="cpu"), cache, validation_rows(cache, 3), window=4,
                                repeat_length=5, thresholds={"local": 0.75})
    for kind in TYPES:
        assert np.allclose(report.types.scores[kind], direct.types.scores[kind])
