"""Tiny targets of each layout, saved like hub models, with causal scenarios mined for them."""

from __future__ import annotations

import pytest

from apmae.mining.settings import MiningConfig
from apmae.mining.miner import mine_scenarios
from tests.cache.helpers import save_target
from tests.mining.conftest import write_corpus
from tests.target.tiny_models import tiny_gpt2, tiny_llama

SEQ_LEN = 32


@pytest.fixture(scope="session")
def java_corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("java")
    write_corpus(root, n_copies=2)
    return root


@pytest.fixture(scope="session")
def llama_dir(llama_tokenizer, tmp_path_factory):
    return save_target(tiny_llama(llama_tokenizer), llama_tokenizer, tmp_path_factory.mktemp("llama"))


@pytest.fixture(scope="session")
def gpt2_dir(gpt2_tokenizer, tmp_path_factory):
    return save_target(tiny_gpt2(gpt2_tokenizer), gpt2_tokenizer, tmp_path_factory.mktemp("gpt2"))


def mine_causal(corpus, tokenizer, tasks=("identifiers", "closing_bracket", "noise")):
    return mine_scenarios(corpus, tokenizer,
                          MiningConfig(
            tasks=list(tasks),
            seq_len=SEQ_LEN,
            n_per_task=6,
            max_per_file=2,
            seed=0,
            prompt_format="auto",
            max_label_tokens=8,
        ),
                          progress=False).scenarios
