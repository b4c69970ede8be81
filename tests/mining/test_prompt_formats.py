"""Causal (left-context) prompts for models without FIM training; ``auto``; formats never mixed."""

from __future__ import annotations

import numpy as np
import pytest

from apmae.mining.settings import MiningConfig
from apmae.mining.miner import mine_scenarios
from apmae.mining.prompts import bos_id, resolve_prompt_format
from apmae.mining.scenario_set import ScenarioSet

S = 48


def _mine(java_corpus, tokenizer, prompt_format, **kwargs):
    settings = MiningConfig(**{"seq_len": S, "n_per_task": 6, "max_per_file": 2, "seed": 0, **kwargs},
                            prompt_format=prompt_format)
    return mine_scenarios(java_corpus, tokenizer, settings, progress=False).scenarios


def _text_before_hole(java_corpus, sc: ScenarioSet, i: int) -> str:
    data = (java_corpus / sc.source_id[i].rsplit("@", 1)[0]).read_bytes()
    return data[: sc.span_start[i]].decode("utf-8")


def test_bos_is_read_from_what_the_tokenizer_does(llama_tokenizer, gpt2_tokenizer, tiny_tokenizer):
    assert bos_id(llama_tokenizer) == llama_tokenizer.convert_tokens_to_ids("<s>")
    assert bos_id(gpt2_tokenizer) is None  # it has a bos_token but does not add it
    assert bos_id(tiny_tokenizer) is None


def test_causal_prompts_are_bos_then_the_last_left_context_tokens(java_corpus, llama_tokenizer):
    sc = _mine(java_corpus, llama_tokenizer, "causal")
    bos = llama_tokenizer.convert_tokens_to_ids("<s>")
    mined = np.flatnonzero(sc.source_id != "")
    assert len(mined) > 20
    assert sc.input_ids.shape[1] == S and (sc.middle_pos == S - 1).all()
    assert (sc.input_ids[:, 0] == bos).all() and ((sc.input_ids == bos).sum(axis=1) == 1).all()
    for i in mined:
        left = llama_tokenizer(_text_before_hole(java_corpus, sc, i), add_special_tokens=False)["input_ids"]
        assert sc.input_ids[i, 1:].tolist() == left[-(S - 1):]  # exactly the direct tokenization's tail
    assert sc.prompt_format == "causal" and sc.meta["prompt_format"] == "causal" and sc.meta["bos"] == bos


def test_without_a_bos_the_prompt_is_s_tokens_of_left_context(java_corpus, gpt2_tokenizer):
    sc = _mine(java_corpus, gpt2_tokenizer, "auto")
    assert sc.prompt_format == "causal" and sc.meta["bos"] is None
    for i in np.flatnonzero(sc.source_id != ""):
        left = gpt2_tokenizer(_text_before_hole(java_corpus, sc, i), add_special_tokens=False)["input_ids"]
        assert sc.input_ids[i].tolist() == left[-S:]
        label = gpt2_tokenizer.decode(sc.labels(i))
        data = (java_corpus / sc.source_id[i].rsplit("@", 1)[0]).read_bytes()
        assert label == data[sc.span_start[i]: sc.span_end[i]].decode("utf-8")


def test_noise_controls_follow_the_format(java_corpus, llama_tokenizer):
    sc = _mine(java_corpus, llama_tokenizer, "causal", tasks=["identifiers", "noise"])
    noise = np.flatnonzero(sc.task == sc.task_names.index("noise"))
    bos = llama_tokenizer.convert_tokens_to_ids("<s>")
    assert len(noise) == 6
    assert (sc.input_ids[noise, 0] == bos).all() and ((sc.input_ids[noise] == bos).sum(axis=1) == 1).all()


def test_auto_picks_fim_for_a_fim_tokenizer_and_causal_otherwise(tiny_tokenizer, llama_tokenizer):
    assert resolve_prompt_format("auto", tiny_tokenizer).name == "fim"
    assert resolve_prompt_format("auto", llama_tokenizer).name == "causal"
    assert resolve_prompt_format("causal", tiny_tokenizer).name == "causal"  # a FIM model may be probed causally


def test_fim_with_a_tokenizer_without_fim_tokens_names_the_way_out(java_corpus, llama_tokenizer):
    with pytest.raises(ValueError, match="no FIM special tokens.*prompt_format: causal"):
        _mine(java_corpus, llama_tokenizer, "fim")
    with pytest.raises(ValueError, match="prompt_format='prefix'; use one of"):
        _mine(java_corpus, llama_tokenizer, "prefix")


def test_the_format_is_part_of_the_fingerprint_and_fim_sets_keep_theirs(java_corpus, tiny_tokenizer):
    fim = _mine(java_corpus, tiny_tokenizer, "fim")
    causal = _mine(java_corpus, tiny_tokenizer, "causal")
    assert fim.prompt_format == "fim" and causal.prompt_format == "causal"
    assert fim.fingerprint() != causal.fingerprint()
    relabelled = ScenarioSet(**{k: getattr(causal, k) for k in ("input_ids", "label_ids", "label_len", "middle_pos",
                                                                  "task", "source_id", "span_start", "span_end",
                                                                  "split")},
                             task_names=causal.task_names, meta={})  # a set from before formats existed
    assert relabelled.prompt_format == "fim"
    assert relabelled.fingerprint() != causal.fingerprint()  # same ids, other format: another set


def test_a_hole_in_both_formats_has_the_same_label(java_corpus, tiny_tokenizer):
    """Only the prompt differs: causal drops holes too close to the file start, FIM balances both sides."""
    def by_hole(sc):
        return {(s, a, b): tuple(sc.labels(i)) for i, (s, a, b) in
                enumerate(zip(sc.source_id, sc.span_start, sc.span_end)) if s}
    fim, causal = by_hole(_mine(java_corpus, tiny_tokenizer, "fim")), by_hole(
        _mine(java_corpus, tiny_tokenizer, "causal")
    )
    common = fim.keys() & causal.keys()
    assert len(common) > 10
    assert all(fim[k] == causal[k] for k in common)


def test_a_split_left_empty_or_tiny_by_small_data_is_warned_about_at_mining_time(java_corpus, tiny_tokenizer, caplog):
    settings = MiningConfig(tasks=["identifiers"], seq_len=S, n_per_task=4, max_per_file=1, splits=(0.8, 0.1, 0.1))
    result = mine_scenarios(java_corpus, tiny_tokenizer, settings, progress=False)
    report, sc = result.report, result.scenarios
    assert sum(report.split_rows.values()) == len(sc)
    assert report.split_rows == {name: int((sc.split == k).sum()) for k, name in enumerate(("train", "val", "test"))}
    tiny = [name for name, rows in report.split_rows.items() if rows < 10]
    assert tiny  # 4 scenarios cannot fill three splits of 10
    for name in tiny:
        assert any(f"split {name} holds {report.split_rows[name]} scenarios" in r.getMessage() for r in caplog.records)
    assert "splits (by source file): train=" in report.summary()
