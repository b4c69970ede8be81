"""Relations for MAPS: hand-made vocabularies and corpora with the pairs they must yield."""

from __future__ import annotations

import numpy as np
import pytest

from apmae.head_metrics.relations import (accessor_fields, brackets, code_relations, copying, corpus_counts,
                                          token_texts, type_variables)


def test_brackets_mirror_with_and_without_leading_space():
    texts = ["(", ")", " (", " )", "{", "}", "((", "))", "[", "x", "({", "})"]
    pairs = {tuple(p) for p in brackets(texts).pairs.tolist()}
    assert pairs == {(0, 1), (2, 3), (2, 1), (4, 5), (6, 7), (10, 11)}  # "[" has no "]" here


def test_accessors_map_to_the_field_tokens_seen_in_the_corpus():
    texts = ["getName", " name", "name", "setAge", " age", "isOk", "foo", "Name"]
    counts = np.array([3, 1, 1, 2, 1, 1, 1, 1])
    pairs = accessor_fields(texts, counts, max_pairs=10).pairs.tolist()
    assert pairs == [[0, 1], [0, 2], [3, 4]]  # most frequent accessor first; "ok" never occurs
    counts[2] = 0
    assert accessor_fields(texts, counts, max_pairs=10).pairs.tolist() == [[0, 1], [3, 4]]


def test_type_variables_need_a_declaration_end():
    texts = ["String", " name", " =", ";", " count", "int", "Map", " x", ")", " return"]
    corpus = np.array([[0, 1, 2, 6, 7, 3],  # String name =  /  Map x ;
                       [0, 1, 3, 0, 4, 4],  # String name ;  /  String count count (no end)
                       [6, 9, 3, 5, 4, 8]])  # Map return ; (a keyword)  /  int count ) (int is not capitalised)
    pairs = type_variables(texts, corpus, max_pairs=10).pairs.tolist()
    assert pairs == [[0, 1], [6, 7]]  # (String, name) twice, first


def test_copying_takes_the_most_frequent_corpus_tokens():
    counts = corpus_counts(np.array([[5, 5, 3, 0], [3, 5, 7, 0]]), 10, special_ids=[0])
    assert counts.tolist() == [0, 0, 0, 2, 0, 3, 0, 1, 0, 0]
    assert copying(counts, max_pairs=2).pairs.tolist() == [[5, 5], [3, 3]]


def test_code_relations_count_pairs_and_skip_empty_relations(tiny_tokenizer):
    ids = np.array([tiny_tokenizer.encode("int count = 0; while (count < 3) { count++; }")])
    texts = token_texts(tiny_tokenizer, len(tiny_tokenizer) + 4)
    assert texts[-4:] == [""] * 4 and texts[ids[0, 0]] == tiny_tokenizer.decode(ids[0, :1])
    found = code_relations(tiny_tokenizer, ids, vocab_size=len(tiny_tokenizer))
    names = [r.name for r in found.relations]
    assert names[:2] == ["copying", "brackets"]
    assert len(found.relations[0].pairs) == len(set(ids[0].tolist()))
    assert "accessor_field" in found.skipped and "mine from a larger corpus" in found.skipped["accessor_field"]


def test_unknown_relation_is_refused(tiny_tokenizer):
    with pytest.raises(ValueError, match="unknown"):
        code_relations(tiny_tokenizer, np.zeros((1, 4), dtype=int), vocab_size=10, names=["synonyms"])
