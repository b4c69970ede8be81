"""Shared test settings: offline Hugging Face, no stray MLflow writes, small shared fixtures."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("JSONARGPARSE_DEPRECATION_WARNINGS", "off")

JAVA_SNIPPETS = [
    """package demo.util;

import java.util.List;
import java.util.ArrayList;

/** Keeps a running total. */
public class Counter {
    private int count = 0;
    private final String name;

    public Counter(String name) {
        this.name = name;
    }

    public int increment(int step) {
        count += step;
        return count;
    }

    public String getName() {
        return name;
    }
}
""",
    """package demo.shop;

public interface Priced {
    double price();
    default boolean isFree() { return price() == 0.0; }
}
""",
    """package demo.text;

import java.util.Map;
import java.util.HashMap;

public class Words {
    // counts words in a line
    public Map<String, Integer> count(String line) {
        Map<String, Integer> counts = new HashMap<>();
        for (String word : line.split(" ")) {
            if (word.isEmpty()) { continue; }
            counts.put(word, counts.getOrDefault(word, 0) + 1);
        }
        char sep = ',';
        long big = 0x1F_FFL;
        return counts;
    }
}
""",
]


@pytest.fixture(scope="session")
def tiny_tokenizer():
    """A byte-level BPE tokenizer with StarCoder2's FIM tokens, trained on a few snippets."""
    from apmae.demo.tokenizer import train_tokenizer

    return train_tokenizer(JAVA_SNIPPETS * 20, vocab_size=600)


@pytest.fixture(autouse=True)
def _mlflow_into_tmp(tmp_path, monkeypatch):
    """Any MLflow logging a test triggers goes to its own tmp store, never the repo's mlruns/."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")


def _causal_tokenizer(*, adds_bos: bool):
    """A byte-level BPE tokenizer without FIM tokens, like a Llama (adds ``<s>``) or a GPT-2 (adds nothing)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<s>", "</s>", "<pad>"] if adds_bos else ["<|endoftext|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(JAVA_SNIPPETS * 20, trainer=trainer)
    if adds_bos:
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                           special_tokens=[("<s>", tok.token_to_id("<s>"))])
        return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                       clean_up_tokenization_spaces=False, model_max_length=1 << 20)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                                   clean_up_tokenization_spaces=False, model_max_length=1 << 20)


@pytest.fixture(scope="session")
def llama_tokenizer():
    """No FIM tokens; puts a BOS token ``<s>`` in front of every text, as Llama and Gemma tokenizers do."""
    return _causal_tokenizer(adds_bos=True)


@pytest.fixture(scope="session")
def gpt2_tokenizer():
    """No FIM tokens and no BOS added, as GPT-2 style tokenizers."""
    return _causal_tokenizer(adds_bos=False)
