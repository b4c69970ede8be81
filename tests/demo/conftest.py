"""Fixtures of the demo tests: a small generated corpus, a tokenizer trained on it, a micro target."""

from __future__ import annotations

import pytest

MICRO = dict(hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=64)


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory):
    """60 generated files of corpus seed 0 with the build step's completion marker."""
    from apmae.demo.build import build_corpus

    out = tmp_path_factory.mktemp("demo") / "corpus"
    build_corpus(out, n_files=60, seed=0)
    return out


@pytest.fixture(scope="session")
def tokenizer_dir(corpus_dir, tmp_path_factory):
    from apmae.demo.build import build_tokenizer_dir

    out = tmp_path_factory.mktemp("demo") / "tokenizer"
    build_tokenizer_dir(corpus_dir, out, vocab_size=512)
    return out


@pytest.fixture(scope="session")
def demo_tokenizer(tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tokenizer_dir)
