"""JavaLMDataModule: FIM rows built by the shared FIM function, balanced context, exact holes."""

from __future__ import annotations

import random

import pytest
import torch

from apmae.mining.fim import FimTokens, balanced_context, fim_sequence
from apmae.datamodules.java_lm import IGNORE, FimSampler, JavaLMDataModule, collate_rows


@pytest.fixture()
def sampler(demo_tokenizer):
    return FimSampler(demo_tokenizer, seq_len=160, context_len=128)


def _long_doc(sampler, corpus_dir):
    texts = [p.read_text() for p in sorted(corpus_dir.rglob("*.java"))]
    return sampler.document(max(texts, key=len))


def test_balanced_context_exact_values():
    assert balanced_context(500, 500, 253) == (126, 127)
    assert balanced_context(10, 500, 253) == (10, 243)  # short prefix kept whole
    assert balanced_context(500, 20, 253) == (233, 20)
    assert balanced_context(10, 20, 253) == (10, 20)


def test_fim_rows_reassemble_the_text_around_the_hole(sampler, corpus_dir, demo_tokenizer):
    doc = _long_doc(sampler, corpus_dir)
    fim = FimTokens.from_tokenizer(demo_tokenizer)
    for seed in range(40):
        example = sampler.fim_example(doc, random.Random(seed))
        ids, m = example.ids, example.middle_pos
        assert ids[0] == fim.prefix and ids[m] == fim.middle and len(ids) <= 160
        assert ids[example.suffix_pos] == fim.suffix
        s = ids.index(fim.suffix)
        assert m == 127  # 128 context tokens: prefix + suffix + 3 FIM tokens, hole not counted
        assert ids == fim_sequence(ids[1:s], ids[s + 1:m], fim, ids[m + 1:])[:160]
        prefix, suffix = demo_tokenizer.decode(ids[1:s]), demo_tokenizer.decode(ids[s + 1:m])
        middle = demo_tokenizer.decode(example.middle_ids)
        assert middle and not middle[0].isspace()
        assert prefix + middle + suffix in doc.text
        if len(ids) < 160:
            assert ids[-1] == fim.eos and ids[m + 1:-1] == example.middle_ids


def test_holes_cover_single_lexemes_and_string_contents(sampler, corpus_dir):
    doc = _long_doc(sampler, corpus_dir)
    spans = [sampler.span(doc, random.Random(i)) for i in range(400)]
    holes = [doc.text[a:b] for a, b in spans]
    assert any(h in ("}", ")", ";") for h in holes)
    assert any(h in ("+=", "==", "<=", "&&", "||", "!=", "++") for h in holes)
    assert any(h.isidentifier() for h in holes)
    assert any(doc.text[a - 1] == doc.text[b] == '"' for a, b in spans)  # the inside of a string literal


def test_rows_are_deterministic_and_collated_with_ignored_padding(corpus_dir, tokenizer_dir):
    dm = JavaLMDataModule(corpus_dir=str(corpus_dir), tokenizer_dir=str(tokenizer_dir), seq_len=160,
                          context_len=128, batch_size=4, train_samples=32, val_samples=8, seed=3)
    dm.setup("fit")
    again = JavaLMDataModule(corpus_dir=str(corpus_dir), tokenizer_dir=str(tokenizer_dir), seq_len=160,
                             context_len=128, batch_size=4, train_samples=32, val_samples=8, seed=3)
    again.setup("fit")
    assert [dm.train_set[i] for i in range(32)] == [again.train_set[i] for i in range(32)]
    kinds = [dm.train_set[i][1] >= 0 for i in range(32)]
    assert 0 < sum(kinds) < 32  # both FIM and left-to-right rows
    assert all(dm.val_set[i][1] >= 0 for i in range(8))  # validation rows are all FIM
    rows = [dm.train_set[i] for i in range(4)]
    batch = collate_rows(rows, pad_id=dm.pad_id)
    width = max(len(ids) for ids, _, _ in rows)
    assert batch["input_ids"].shape == (4, width)
    fim = FimTokens.from_tokenizer(dm.train_set.sampler.tokenizer)
    for b, (ids, pos, suffix_pos) in enumerate(rows):
        assert batch["input_ids"][b, :len(ids)].tolist() == ids
        assert batch["suffix_pos"][b] == suffix_pos
        assert suffix_pos == pos == -1 or (ids[suffix_pos] == fim.suffix and ids[pos] == fim.middle)
        assert batch["attention_mask"][b].sum() == len(ids)
        assert (batch["labels"][b, len(ids):] == IGNORE).all()
        assert batch["middle_pos"][b] == pos
    assert torch.equal(next(iter(dm.val_dataloader()))["input_ids"], next(iter(dm.val_dataloader()))["input_ids"])


def test_bad_arguments_raise(corpus_dir, tokenizer_dir, tmp_path):
    with pytest.raises(ValueError, match="context_len"):
        JavaLMDataModule(corpus_dir=str(corpus_dir), tokenizer_dir=str(tokenizer_dir), seq_len=128, context_len=128)
    with pytest.raises(ValueError, match="fim_rate"):
        JavaLMDataModule(corpus_dir=str(corpus_dir), tokenizer_dir=str(tokenizer_dir), fim_rate=1.5)
    empty = JavaLMDataModule(corpus_dir=str(tmp_path), tokenizer_dir=str(tokenizer_dir))
    with pytest.raises(ValueError, match="build the demo corpus"):
        empty.setup("fit")


def test_min_context_len_shrinks_whole_batches_alike(corpus_dir, tokenizer_dir):
    dm = JavaLMDataModule(corpus_dir=str(corpus_dir), tokenizer_dir=str(tokenizer_dir), seq_len=160,
                          context_len=128, min_context_len=32, fim_rate=1.0, batch_size=4, train_samples=64,
                          val_samples=4)
    dm.setup("fit")
    positions = [dm.train_set[i][1] for i in range(64)]  # <fim_middle> index = context tokens - 1
    batches = [positions[b:b + 4] for b in range(0, 64, 4)]
    assert all(31 <= p <= 127 for p in positions)
    assert len({max(b) for b in batches}) > 3  # lengths vary between batches
    long_files = [b for b in batches if len(set(b)) == 1]
    assert len(long_files) >= 8  # a batch of long-enough files shares one length
    assert all(dm.val_set[i][1] == 127 for i in range(4))


def test_context_ramp_starts_short_and_reaches_the_full_context(corpus_dir, tokenizer_dir):
    dm = JavaLMDataModule(corpus_dir=str(corpus_dir), tokenizer_dir=str(tokenizer_dir), seq_len=160,
                          context_len=128, min_context_len=16, context_ramp_rows=64, fim_rate=1.0, batch_size=4,
                          train_samples=256, val_samples=4)
    dm.setup("fit")
    shrinks = [dm.train_set.shrink(i) for i in range(256)]
    assert shrinks[0] == 128 - 16  # row 0: the ramp allows min_context_len only
    assert all(128 - s <= 16 + (128 - 16) * i / 64 + 1 for i, s in enumerate(shrinks[:64]))
    assert max(128 - s for s in shrinks[64:]) > 112  # past the ramp the full range is drawn
    with pytest.raises(ValueError, match="context_ramp_rows"):
        JavaLMDataModule(corpus_dir=str(corpus_dir), tokenizer_dir=str(tokenizer_dir), min_context_len=32,
                         context_ramp_rows=-1)


def test_task_spans_are_the_scenario_miners_candidate_holes(demo_tokenizer, corpus_dir):
    from apmae.mining.miner import candidate_spans

    sampler = FimSampler(demo_tokenizer, seq_len=160, context_len=128, task_span_rate=1.0)
    text = max((p.read_text() for p in sorted(corpus_dir.rglob("*.java"))), key=len)
    doc = sampler.document(text)
    mined = candidate_spans(text, demo_tokenizer)  # ASCII text: byte spans = character spans
    assert len(doc.task_spans) == sum(1 for spans in mined.values() if spans) >= 10
    for name, spans in mined.items():
        if name != "random":  # the random task's spans are seeded by the file's id
            assert tuple(spans) in doc.task_spans, name
    holes = {sampler.span(doc, random.Random(i)) for i in range(300)}
    assert holes <= {span for spans in doc.task_spans for span in spans} and len(holes) > 50
    kinds = {doc.text[a:b] for a, b in holes}
    assert {"true", "false"} & kinds and {"(", ")", "{", "}", ";"} & kinds  # literals and brackets among them
    plain = FimSampler(demo_tokenizer, seq_len=160, context_len=128)
    assert plain.document(text).task_spans == ()  # parsed only when used
    with pytest.raises(ValueError, match="task_span_rate=1.5"):
        FimSampler(demo_tokenizer, seq_len=160, context_len=128, task_span_rate=1.5)
