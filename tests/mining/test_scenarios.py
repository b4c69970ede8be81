"""Scenario assembly and sampling: exact prompts, round trips, determinism, splits, skips."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from apmae.mining.settings import MiningConfig
from apmae.mining.fim import FimTokens
from apmae.mining.scenario_set import SPLITS
from apmae.mining.miner import mine_scenarios, split_of
from apmae.mining.tasks import task_names
from tests.mining.conftest import LEDGER, write_corpus

S = 64  # short prompts keep the hand-written corpus big enough


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("corpus")
    write_corpus(root, n_copies=4)
    return root


@pytest.fixture(scope="module")
def mined(corpus, tiny_tokenizer):
    return mine_scenarios(
        corpus, tiny_tokenizer, MiningConfig(seq_len=S, n_per_task=6, max_per_file=2, seed=0), progress=False
    )


def _encode(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def _parts(ids, fim):
    """(prefix ids, suffix ids) of a prompt ``<fim_prefix> P <fim_suffix> Q <fim_middle>``."""
    ids = list(ids)
    start = ids.index(fim.prefix)
    cut = ids.index(fim.suffix)
    return ids[start + 1:cut], ids[cut + 1:-1]


def _file_text(root, source_id):
    return (root / source_id.rsplit("@", 1)[0]).read_bytes()


def test_prompts_have_exactly_seq_len_tokens_and_fim_structure(mined, tiny_tokenizer):
    sc, fim = mined.scenarios, FimTokens.from_tokenizer(tiny_tokenizer)
    assert sc.input_ids.shape == (len(sc), S) and sc.input_ids.dtype == np.int32
    assert (sc.input_ids[:, 0] == fim.prefix).all() and (sc.input_ids[:, -1] == fim.middle).all()
    assert ((sc.input_ids == fim.suffix).sum(axis=1) == 1).all()
    assert (sc.middle_pos == S - 1).all()
    padding = np.arange(sc.label_ids.shape[1])[None, :] >= sc.label_len[:, None]
    assert (sc.label_len >= 1).all() and (sc.label_ids[padding] == 0).all()
    assert sc.meta["seq_len"] == S and sc.meta["tasks"] == sc.task_names == task_names()


def test_round_trip_and_agreement_with_direct_tokenization(mined, corpus, tiny_tokenizer):
    """Prefix/suffix tokens equal encoding the text before/after the hole; decoding gives the file back."""
    sc, fim, tok = mined.scenarios, FimTokens.from_tokenizer(tiny_tokenizer), tiny_tokenizer
    checked = 0
    for i in np.flatnonzero(sc.source_id != ""):
        data = _file_text(corpus, sc.source_id[i])
        before = data[: sc.span_start[i]].decode()
        hole = data[sc.span_start[i]: sc.span_end[i]].decode()
        after = data[sc.span_end[i]:].decode()
        prefix, suffix = _parts(sc.input_ids[i], fim)
        assert sc.labels(i) == _encode(tok, hole)
        assert prefix == _encode(tok, before)[len(_encode(tok, before)) - len(prefix):]
        assert suffix == _encode(tok, after)[: len(suffix)]
        assert before.endswith(tok.decode(prefix)) and after.startswith(tok.decode(suffix))
        checked += 1
    assert checked == len(sc) - 6  # every scenario but the noise ones


def test_agreement_with_a_starcoder_style_tokenizer(tmp_path):
    """Digits split one by one + byte-level BPE + offset-trimming post-processor, as StarCoder2's."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    from apmae.demo.tokenizer import SPECIAL_TOKENS

    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False)])
    raw.post_processor = processors.ByteLevel(trim_offsets=True)
    raw.train_from_iterator([LEDGER] * 5, trainers.BpeTrainer(
        vocab_size=500, special_tokens=SPECIAL_TOKENS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, additional_special_tokens=SPECIAL_TOKENS[1:])
    text = LEDGER.replace("10_000L", "10_000L + 1234567890").replace("    private", "\t private  ")
    (tmp_path / "L.java").write_text(text)
    res = mine_scenarios(tmp_path, tok,
                         MiningConfig(
            tasks=["identifiers", "numeric_literals", "eol", "random"], seq_len=S, n_per_task=25, max_per_file=25
        ),
                         progress=False)
    sc, fim, data = res.scenarios, FimTokens.from_tokenizer(tok), text.encode()
    assert len(sc) > 60
    for i in range(len(sc)):
        before, after = data[: sc.span_start[i]].decode(), data[sc.span_end[i]:].decode()
        prefix, suffix = _parts(sc.input_ids[i], fim)
        assert prefix == _encode(tok, before)[len(_encode(tok, before)) - len(prefix):]
        assert suffix == _encode(tok, after)[: len(suffix)]


def test_context_is_balanced_or_keeps_the_short_side_whole(mined, corpus, tiny_tokenizer):
    sc, fim, tok = mined.scenarios, FimTokens.from_tokenizer(tiny_tokenizer), tiny_tokenizer
    kinds = Counter()
    for i in np.flatnonzero(sc.source_id != ""):
        data = _file_text(corpus, sc.source_id[i])
        n_before = len(_encode(tok, data[: sc.span_start[i]].decode()))
        n_after = len(_encode(tok, data[sc.span_end[i]:].decode()))
        prefix, suffix = _parts(sc.input_ids[i], fim)
        if n_before < (S - 3) // 2:
            assert len(prefix) == n_before
            kinds["short prefix"] += 1
        elif n_after < S - 3 - (S - 3) // 2:
            assert len(suffix) == n_after
            kinds["short suffix"] += 1
        else:
            assert (len(prefix), len(suffix)) == ((S - 3) // 2, S - 3 - (S - 3) // 2)  # ASCII: no shift
            kinds["balanced"] += 1
    assert set(kinds) == {"short prefix", "short suffix", "balanced"}


def test_multibyte_characters_before_the_hole(tmp_path, tiny_tokenizer):
    text = LEDGER.replace("/** A ledger", "/** Ein Kassenbuch für Beträge – 日本 ✓ / a ledger").replace(
        '"ledger is frozen or amount is zero"', '"Konto gesperrt – Betrag null"')
    (tmp_path / "Ledger.java").write_text(text, encoding="utf-8")
    assert len(text.encode()) > len(text)
    res = mine_scenarios(tmp_path,
                         tiny_tokenizer,
                         MiningConfig(tasks=["identifiers", "string_literals", "eol"], seq_len=S, n_per_task=40,
                                      max_per_file=40),
                         progress=False)
    sc, fim, data = res.scenarios, FimTokens.from_tokenizer(tiny_tokenizer), text.encode()
    first_non_ascii = data.index("ü".encode())
    assert (sc.span_start > first_non_ascii).sum() > 30
    for i in range(len(sc)):
        hole = data[sc.span_start[i]: sc.span_end[i]].decode()  # byte offsets land on character boundaries
        prefix, suffix = _parts(sc.input_ids[i], fim)
        assert tiny_tokenizer.decode(sc.labels(i)) == hole
        assert data[: sc.span_start[i]].decode().endswith(tiny_tokenizer.decode(prefix))
        assert data[sc.span_end[i]:].decode().startswith(tiny_tokenizer.decode(suffix))
    holes = {data[s:e].decode() for s, e in zip(sc.span_start, sc.span_end)}
    assert "Konto gesperrt – Betrag null" in holes


def test_balanced_quota_and_per_file_cap(mined):
    sc = mined.scenarios
    assert Counter(sc.task.tolist()) == {t: 6 for t in range(len(sc.task_names))}
    per_file = Counter(zip(sc.task.tolist(), sc.source_id.tolist()))
    assert max(n for (t, src), n in per_file.items() if src) <= 2
    assert all(r.kept == 6 for r in mined.report.tasks)


def test_deterministic_for_a_seed(corpus, tiny_tokenizer, mined):
    again = mine_scenarios(
        corpus, tiny_tokenizer, MiningConfig(seq_len=S, n_per_task=6, max_per_file=2, seed=0), progress=False
    )
    other = mine_scenarios(
        corpus, tiny_tokenizer, MiningConfig(seq_len=S, n_per_task=6, max_per_file=2, seed=1), progress=False
    )
    assert again.scenarios.fingerprint() == mined.scenarios.fingerprint()
    assert other.scenarios.fingerprint() != mined.scenarios.fingerprint()


@pytest.mark.slow
def test_same_scenarios_for_any_number_of_workers(corpus, tiny_tokenizer, mined):
    par = mine_scenarios(corpus, tiny_tokenizer, MiningConfig(seq_len=S, n_per_task=6, max_per_file=2, seed=0),
                         num_workers=2, progress=False)
    assert par.scenarios.fingerprint() == mined.scenarios.fingerprint()
    assert par.report.summary().splitlines()[1:] == mined.report.summary().splitlines()[1:]


def test_splits_are_by_file_and_stable_when_the_corpus_grows(tmp_path, tiny_tokenizer):
    settings = MiningConfig(tasks=["identifiers", "keywords"], seq_len=S, n_per_task=500, max_per_file=3,
                            splits=(0.5, 0.25, 0.25))
    write_corpus(tmp_path / "c", n_copies=6)
    small = mine_scenarios(tmp_path / "c", tiny_tokenizer, settings, progress=False).scenarios
    write_corpus(tmp_path / "c", n_copies=12)  # six more copies of every file
    big = mine_scenarios(tmp_path / "c", tiny_tokenizer, settings, progress=False).scenarios
    for sc in (small, big):
        owner = {}
        for src, split in zip(sc.source_id.tolist(), sc.split.tolist()):
            assert owner.setdefault(src, split) == split  # no file in two splits
        assert set(owner.values()) == {0, 1, 2}
    small_split = dict(zip(small.source_id.tolist(), small.split.tolist()))
    big_split = dict(zip(big.source_id.tolist(), big.split.tolist()))
    assert len(big_split) > len(small_split)
    assert all(big_split[s] == small_split[s] for s in small_split if s in big_split)


def test_split_fractions_follow_the_hash():
    splits = Counter(split_of(f"dir/F{i}.java@{i:012x}", (0.8, 0.1, 0.1)) for i in range(20_000))
    assert abs(splits[0] / 20_000 - 0.8) < 0.01 and abs(splits[2] / 20_000 - 0.1) < 0.01
    assert split_of("a@1", (0.0, 0.0, 1.0)) == SPLITS.index("test")


def test_skip_reasons_and_broken_code(tmp_path, tiny_tokenizer):
    root = tmp_path / "bad"
    root.mkdir()
    (root / "A.java").write_text(LEDGER)
    (root / "B.java").write_text(LEDGER)  # duplicate
    (root / "C.java").write_bytes("class Caf\xe9 {}".encode("latin-1"))
    (root / "D.java").write_bytes(b"class D {\0}")
    (root / "E.java").write_text("")
    (root / "F.java").write_text("class F { int x = 1; }")  # shorter than a prompt
    broken = LEDGER.replace("    public long balance() {", "    public long balance( {{ ) = ;")
    (root / "G.java").write_text(broken)
    res = mine_scenarios(root, tiny_tokenizer,
                         MiningConfig(tasks=["identifiers", "eol"], seq_len=S, n_per_task=100, max_per_file=5),
                         progress=False)
    assert dict(res.report.skipped) == {"duplicate": 1, "non_utf8": 1, "binary": 1, "empty": 1, "too_short": 1}
    assert res.report.files_seen == 7 and res.report.files_mined == 2
    from_broken = res.scenarios.source_id == f"G.java@{__import__('hashlib').sha1(broken.encode()).hexdigest()[:12]}"
    assert from_broken.sum() == 10  # the valid parts of the broken file still give 5 per task
    assert "too_short=1" in res.report.summary()


def test_pad_policy_keeps_short_files(tmp_path, tiny_tokenizer):
    (tmp_path / "F.java").write_text("class F {\n    int x = 1;\n    int y = x + 2;\n}\n")
    fim = FimTokens.from_tokenizer(tiny_tokenizer)
    skipped = mine_scenarios(
        tmp_path, tiny_tokenizer, MiningConfig(tasks=["identifiers"], seq_len=S, n_per_task=3), progress=False
    )
    assert len(skipped.scenarios) == 0 and skipped.report.skipped["too_short"] == 1
    padded = mine_scenarios(tmp_path, tiny_tokenizer,
                            MiningConfig(tasks=["identifiers"], seq_len=S, n_per_task=3, max_per_file=3, pad=True),
                            progress=False).scenarios
    assert len(padded) == 3 and padded.input_ids.shape == (3, S)
    for row in padded.input_ids:
        start = int(np.flatnonzero(row == fim.prefix)[0])
        assert start > 0 and (row[:start] == fim.pad).all()


def test_noise_scenarios(mined, tiny_tokenizer):
    sc, fim = mined.scenarios, FimTokens.from_tokenizer(tiny_tokenizer)
    noise = np.flatnonzero(sc.task == sc.task_names.index("noise"))
    assert len(noise) == 6
    special = set(tiny_tokenizer.all_special_ids)
    for i in noise:
        assert sc.source_id[i] == "" and sc.span_start[i] == -1 and sc.span_end[i] == -1
        assert 3 <= sc.label_len[i] <= 10
        prefix, suffix = _parts(sc.input_ids[i], fim)
        assert len(prefix) + len(suffix) == S - 3
        assert not special & set(prefix + suffix + sc.labels(i))


def test_proportions_and_bad_arguments(corpus, tiny_tokenizer):
    res = mine_scenarios(corpus, tiny_tokenizer,
                         MiningConfig(
            tasks=["identifiers", "keywords", "noise"],
            seq_len=S,
            n_per_task=4,
            proportions={"identifiers": 2, "keywords": 1, "noise": 1},
        ),
                         progress=False)
    assert Counter(res.scenarios.task.tolist()) == {0: 6, 1: 3, 2: 3}
    with pytest.raises(ValueError, match="splits"):
        mine_scenarios(corpus, tiny_tokenizer, MiningConfig(splits=(0.5, 0.5, 0.5)), progress=False)
    with pytest.raises(ValueError, match="n_per_task mapping"):
        mine_scenarios(corpus, tiny_tokenizer, MiningConfig(tasks=["eol"], n_per_task={"keywords": 3}), progress=False)
    with pytest.raises(ValueError, match="seq_len"):
        mine_scenarios(corpus, tiny_tokenizer, MiningConfig(seq_len=8), progress=False)


def test_tokenizer_without_fim_tokens_fails_clearly(corpus):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.train_from_iterator([LEDGER], trainers.BpeTrainer(vocab_size=300, show_progress=False))
    with pytest.raises(ValueError, match="no FIM special tokens"):
        mine_scenarios(corpus, PreTrainedTokenizerFast(tokenizer_object=raw), progress=False)
