"""Token relations for MAPS that make sense for code and work with any tokenizer.

Glossary: V vocabulary, N scenarios, S tokens, P pairs of a relation.

A relation is a set of (source token, target token) id pairs; a head
"implements" it when its OV circuit maps each source's embedding to logits
that rank the target high (:mod:`apmae.head_metrics.maps`). Relations:

- ``copying``: every token to itself, over the tokens of the scenario corpus
  (most frequent first), top-1;
- ``brackets``: tokens made of opening brackets ``(`` ``[`` ``{`` (with any
  leading whitespace) to the token with the mirrored closing brackets
  (``(`` -> ``)``, ``({`` -> ``})``), with and without that whitespace, top-10;
- ``accessor_field``, mined from the corpus: a token ``get<Name>`` /
  ``set<Name>`` / ``is<Name>`` to the tokens spelling ``<name>``, top-10;
- ``type_variable``, mined from the corpus: a capitalised type token
  directly followed by a lower-case variable token that is followed by
  ``=``, ``;``, ``,`` or ``)`` (a declaration such as ``String name =``),
  top-10.

Tokens are compared by their decoded text, so byte-level BPE space markers
and sentencepiece word markers need no special case. A relation without any
pair (its words are not single tokens of this tokenizer, or the corpus holds
none) is skipped and reported, not scored.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Sequence, TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # annotations only: the classes' modules import torch or transformers
    from transformers import PreTrainedTokenizerBase

RELATIONS = ("copying", "brackets", "accessor_field", "type_variable")
_CLOSING = {"(": ")", "[": "]", "{": "}"}
_ACCESSOR = re.compile(r"(?:get|set|is)([A-Z][A-Za-z0-9_]*)")
_TYPE = re.compile(r"[A-Z][A-Za-z0-9_]*")
_VARIABLE = re.compile(r"\s[a-z][A-Za-z0-9_]*")
_NOT_VARIABLES = {"extends", "implements", "throws", "instanceof", "new", "return", "super", "this"}


@dataclass
class Relation:
    """(source, target) token pairs scored as one operation."""

    name: str
    pairs: np.ndarray  # (P, 2) int64 source id, target id
    k: int  # a pair is a hit when its target is in the top-k of the source's projected row
    description: str = ""


@dataclass
class RelationSet:
    """The relations that have pairs, and those skipped with what to change."""

    relations: list[Relation]
    texts: list[str]  # (V,) decoded text of every token id, for labelling pairs
    skipped: dict[str, str] = field(default_factory=dict)  # name -> why it has no pair


def token_texts(tokenizer: PreTrainedTokenizerBase, vocab_size: int) -> list[str]:
    """The decoded text of every token id below ``vocab_size`` (ids the tokenizer lacks decode to '')."""
    n = min(vocab_size, len(tokenizer))
    texts = tokenizer.batch_decode([[i] for i in range(n)], skip_special_tokens=False,
                                   clean_up_tokenization_spaces=False)
    return list(texts) + [""] * (vocab_size - n)


def corpus_counts(corpus_ids: np.ndarray, vocab_size: int, special_ids: Sequence[int] = ()) -> np.ndarray:
    """(N, S) token ids -> (V,) occurrence counts, special tokens set to 0."""
    ids = np.asarray(corpus_ids).reshape(-1)
    counts = np.bincount(ids[(ids >= 0) & (ids < vocab_size)], minlength=vocab_size)
    counts[[i for i in special_ids if 0 <= i < vocab_size]] = 0
    return counts


def copying(counts: np.ndarray, *, max_pairs: int) -> Relation:
    """Each of the ``max_pairs`` most frequent corpus tokens to itself."""
    order = np.argsort(-counts, kind="stable")
    tokens = order[counts[order] > 0][:max_pairs]
    return Relation("copying", np.stack([tokens, tokens], axis=1).astype(np.int64), k=1,
                    description="each corpus token to itself")


def brackets(texts: Sequence[str]) -> Relation:
    """Opening-bracket tokens to the tokens of their mirrored closing brackets (vocabulary-wide)."""
    index = _text_index(texts)
    pairs = set()
    for source, text in enumerate(texts):
        body = text.lstrip()
        if not body or any(c not in _CLOSING for c in body):
            continue
        mirrored = "".join(_CLOSING[c] for c in reversed(body))
        for target_text in (text[: len(text) - len(body)] + mirrored, mirrored):
            if target_text in index:
                pairs.add((source, index[target_text]))
    return Relation("brackets", _pair_array(sorted(pairs)), k=10, description="( [ { to ) ] }, mirrored")


def accessor_fields(texts: Sequence[str], counts: np.ndarray, *, max_pairs: int) -> Relation:
    """Corpus tokens get<Name>/set<Name>/is<Name> to the corpus tokens spelling <name>."""
    by_word: dict[str, list[int]] = {}
    for i in np.flatnonzero(counts):
        by_word.setdefault(texts[i].strip(), []).append(int(i))
    pairs = []
    for source in np.argsort(-counts, kind="stable"):
        m = _ACCESSOR.fullmatch(texts[source].strip()) if counts[source] else None
        if m:
            word = m.group(1)[0].lower() + m.group(1)[1:]
            pairs += [(int(source), t) for t in by_word.get(word, [])]
    return Relation("accessor_field", _pair_array(pairs[:max_pairs]), k=10,
                    description="get<Name>/set<Name>/is<Name> to <name>")


def type_variables(texts: Sequence[str], corpus_ids: np.ndarray, *, max_pairs: int) -> Relation:
    """Declarations ``Type name`` followed by = ; , or ): the type token to the variable token, most frequent first."""
    is_type = np.array([bool(_TYPE.fullmatch(t.strip())) and t.strip() == t.lstrip() for t in texts])
    is_var = np.array([bool(_VARIABLE.fullmatch(t)) and t.strip() not in _NOT_VARIABLES for t in texts])
    is_end = np.array([t.lstrip()[:1] in ("=", ";", ",", ")") and t.strip() != "" for t in texts])
    ids = np.asarray(corpus_ids, dtype=np.int64)
    ids = np.where((ids >= 0) & (ids < len(texts)), ids, 0)
    hit = is_type[ids[:, :-2]] & is_var[ids[:, 1:-1]] & is_end[ids[:, 2:]]  # (N, S - 2)
    found = np.stack([ids[:, :-2][hit], ids[:, 1:-1][hit]], axis=1)  # (n, 2)
    if not len(found):
        return Relation("type_variable", _pair_array([]), k=10, description="Type name = / ; / , / )")
    unique, count = np.unique(found, axis=0, return_counts=True)
    order = np.lexsort((unique[:, 1], unique[:, 0], -count))[:max_pairs]
    return Relation("type_variable", unique[order], k=10, description="Type name = / ; / , / )")


def _text_index(texts: Sequence[str]) -> dict[str, int]:
    index: dict[str, int] = {}
    for i, t in enumerate(texts):
        index.setdefault(t, i)
    return index


def _pair_array(pairs: Sequence[tuple[int, int]]) -> np.ndarray:
    return np.asarray(pairs, dtype=np.int64).reshape(-1, 2)


def code_relations(tokenizer: PreTrainedTokenizerBase, corpus_ids: np.ndarray, *, vocab_size: int,
                   names: Sequence[str] = RELATIONS, max_pairs: int = 2000) -> RelationSet:
    """The named relations for ``tokenizer``, mined from the (N, S) corpus token ids where they need it.

    Raises:
        ValueError: an unknown relation name or ``max_pairs`` < 1.
    """
    unknown = sorted(set(names) - set(RELATIONS))
    if unknown or max_pairs < 1:
        raise ValueError(f"relations {unknown} are unknown (use {list(RELATIONS)}) or max_pairs={max_pairs} < 1")
    texts = token_texts(tokenizer, vocab_size)
    counts = corpus_counts(corpus_ids, vocab_size, getattr(tokenizer, "all_special_ids", ()))
    build = {"copying": lambda: copying(counts, max_pairs=max_pairs), "brackets": lambda: brackets(texts),
             "accessor_field": lambda: accessor_fields(texts, counts, max_pairs=max_pairs),
             "type_variable": lambda: type_variables(texts, corpus_ids, max_pairs=max_pairs)}
    out = RelationSet(relations=[], texts=texts)
    for name in names:
        relation = build[name]()
        if len(relation.pairs):
            out.relations.append(relation)
        else:
            out.skipped[name] = (f"no ({relation.description}) pair of single tokens in this tokenizer and corpus; "
                                 "mine from a larger corpus or drop it from the relations")
    return out
