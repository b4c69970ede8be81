"""The demo tokenizer: exact round trip on generated Java, FIM tokens as single ids, reloadable."""

from __future__ import annotations

from pathlib import Path

import pytest

from apmae.demo.corpus import generate_corpus
from apmae.mining.fim import EOS, FIM_MIDDLE, FIM_PAD, FIM_PREFIX, FIM_SUFFIX, FimTokens


def test_round_trip_is_exact_on_generated_files(demo_tokenizer):
    for _, text in generate_corpus(12, seed=99):  # files the tokenizer was not trained on
        ids = demo_tokenizer(text, add_special_tokens=False)["input_ids"]
        assert demo_tokenizer.decode(ids) == text


def test_fim_tokens_are_single_ids_and_never_produced_by_code(demo_tokenizer):
    fim = FimTokens.from_tokenizer(demo_tokenizer)
    for token in (EOS, FIM_PREFIX, FIM_MIDDLE, FIM_SUFFIX, FIM_PAD):
        assert demo_tokenizer(token, add_special_tokens=False)["input_ids"] == [demo_tokenizer.convert_tokens_to_ids(token)]
    assert len({fim.prefix, fim.middle, fim.suffix, fim.pad, fim.eos}) == 5
    specials = {fim.prefix, fim.middle, fim.suffix, fim.pad, fim.eos}
    text = "".join(t for _, t in generate_corpus(5, seed=98))
    assert not specials & set(demo_tokenizer(text, add_special_tokens=False)["input_ids"])


def test_saved_directory_reloads_with_identical_encodings(tokenizer_dir, demo_tokenizer):
    from transformers import AutoTokenizer

    again = AutoTokenizer.from_pretrained(tokenizer_dir)
    text = generate_corpus(1, seed=97).__next__()[1]
    assert again(text)["input_ids"] == demo_tokenizer(text)["input_ids"]
    assert len(again) == len(demo_tokenizer) == 512
    assert again.eos_token == EOS


def test_the_saved_directory_encodes_like_the_tokenizer_before_saving(corpus_dir, tokenizer_dir):
    """Two loads of one directory would agree even if saving lost merges or specials: compare with the
    tokenizer as trained, never written to disk."""
    from transformers import AutoTokenizer  # import cost ~1 s, as in the test above

    from apmae.demo.tokenizer import train_tokenizer

    files = sorted(Path(corpus_dir).rglob("*.java"))
    trained = train_tokenizer((f.read_text(encoding="utf-8") for f in files), vocab_size=512)
    loaded = AutoTokenizer.from_pretrained(tokenizer_dir)
    assert loaded.get_vocab() == trained.get_vocab()
    for _, text in generate_corpus(4, seed=96):
        ids = trained(text + FIM_MIDDLE, add_special_tokens=False)["input_ids"]
        assert loaded(text + FIM_MIDDLE, add_special_tokens=False)["input_ids"] == ids
        assert ids[-1] == trained.convert_tokens_to_ids(FIM_MIDDLE) and len(ids) < len(text.encode())  # merges used
    assert loaded.all_special_tokens == trained.all_special_tokens


def test_too_small_vocabulary_raises():
    from apmae.demo.tokenizer import train_tokenizer

    with pytest.raises(ValueError, match="vocab_size"):
        train_tokenizer(["class A {}"], vocab_size=100)
