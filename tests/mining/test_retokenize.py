"""The same holes cut for another tokenizer: order, tasks and splits kept, losses counted."""

from __future__ import annotations

import numpy as np
import pytest

from apmae.mining.settings import MiningConfig
from apmae.mining.miner import mine_scenarios
from apmae.mining.retokenize import retokenize
from apmae.mining.sources import JavaSources

S = 48


@pytest.fixture(scope="module")
def fim_set(java_corpus, tiny_tokenizer):
    return mine_scenarios(java_corpus, tiny_tokenizer,
                          MiningConfig(
            tasks=["identifiers", "closing_bracket", "noise"],
            seq_len=S,
            n_per_task=8,
            max_per_file=2,
            max_label_tokens=8,
            seed=0,
        ),
                          progress=False).scenarios


def _hole_text(java_corpus, sc, i):
    data = (java_corpus / sc.source_id[i].rsplit("@", 1)[0]).read_bytes()
    return data[: sc.span_start[i]].decode(), data[sc.span_start[i]: sc.span_end[i]].decode()


def test_the_same_tokenizer_and_format_give_back_the_same_set(java_corpus, fim_set, tiny_tokenizer):
    again, report = retokenize(fim_set, JavaSources(java_corpus), tiny_tokenizer, prompt_format="fim")
    mined = fim_set.source_id != ""
    np.testing.assert_array_equal(again.input_ids[: mined.sum()], fim_set.input_ids[mined])
    np.testing.assert_array_equal(again.label_ids[: mined.sum()], fim_set.label_ids[mined])
    assert report.kept == mined.sum() and not report.dropped and report.noise == (~mined).sum()


def test_another_tokenizer_gets_the_same_holes_in_its_own_tokens(java_corpus, fim_set, llama_tokenizer):
    causal, report = retokenize(fim_set, JavaSources(java_corpus), llama_tokenizer, prompt_format="auto")
    assert causal.prompt_format == "causal" and causal.seq_len == S
    original = {(s, a, b): (t, sp) for s, a, b, t, sp in zip(fim_set.source_id, fim_set.span_start,
                                                            fim_set.span_end, fim_set.task, fim_set.split) if s}
    mined = np.flatnonzero(causal.source_id != "")
    keys = [(causal.source_id[i], causal.span_start[i], causal.span_end[i]) for i in mined]
    order = [list(original).index(k) for k in keys]
    assert order == sorted(order)  # the original row order
    assert all(original[k] == (causal.task[i], causal.split[i]) for k, i in zip(keys, mined))
    for i in mined:
        before, hole = _hole_text(java_corpus, causal, i)
        assert llama_tokenizer.decode(causal.labels(i)) == hole
        tail = llama_tokenizer(before, add_special_tokens=False)["input_ids"][-(S - 1):]
        assert causal.input_ids[i, 1:].tolist() == tail
    assert report.kept == len(mined) and report.kept + sum(report.dropped.values()) == len(original)
    assert report.noise == int((fim_set.source_id == "").sum()) == int((causal.source_id == "").sum())
    assert causal.meta["retokenized_from"] == fim_set.fingerprint() != causal.fingerprint()


def test_holes_a_tokenization_cannot_serve_are_counted(java_corpus, fim_set, gpt2_tokenizer, tmp_path):
    short = retokenize(fim_set, JavaSources(java_corpus), gpt2_tokenizer, prompt_format="causal")[1]
    assert short.kept > 0
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "Other.java").write_text("class Other {}\n")
    lost = retokenize(fim_set, JavaSources(empty), gpt2_tokenizer, prompt_format="causal")[1]
    assert lost.kept == 0 and lost.dropped["missing_file"] == int((fim_set.source_id != "").sum())
    assert lost.missing_files == len(set(fim_set.source_id) - {""})


def test_fim_for_a_tokenizer_without_fim_tokens_is_refused(java_corpus, fim_set, llama_tokenizer):
    with pytest.raises(ValueError, match="no FIM special tokens"):
        retokenize(fim_set, JavaSources(java_corpus), llama_tokenizer, prompt_format="fim")
