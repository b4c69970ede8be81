"""Micro target models and random scenario sets for the cache tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from apmae.mining.scenario_set import ScenarioSet

TASKS = ["identifiers", "closing_bracket", "noise"]


def micro_starcoder2(vocab_size: int, *, layers: int = 2, heads: int = 4, kv_heads: int = 2, hidden: int = 32, seed: int = 0):
    """A random-init StarCoder2 causal LM small enough for unit tests."""
    import torch
    from transformers import Starcoder2Config, Starcoder2ForCausalLM

    torch.manual_seed(seed)
    cfg = Starcoder2Config(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden,
                           num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                           max_position_embeddings=512, bos_token_id=0, eos_token_id=0, pad_token_id=0,
                           attn_implementation="eager")
    return Starcoder2ForCausalLM(cfg).eval()


def save_target(model, tokenizer, out_dir: Path) -> Path:
    """Save like a hub model: weights, config and tokenizer in one directory."""
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def random_scenarios(n: int, seq_len: int, vocab_size: int, fim_middle: int, *, seed: int = 0) -> ScenarioSet:
    """Random prompts ending with <fim_middle>, three tasks, splits by source file."""
    rng = np.random.default_rng(seed)
    input_ids = rng.integers(5, vocab_size, size=(n, seq_len), dtype=np.int32)
    input_ids[:, -1] = fim_middle
    label_len = rng.integers(1, 4, size=n).astype(np.int32)
    label_ids = rng.integers(5, vocab_size, size=(n, 3), dtype=np.int32)
    label_ids[np.arange(3)[None, :] >= label_len[:, None]] = 0
    source = rng.integers(0, max(n // 3, 1), size=n)
    return ScenarioSet(
        input_ids=input_ids, label_ids=label_ids, label_len=label_len,
        middle_pos=np.full(n, seq_len - 1, dtype=np.int32),
        task=rng.integers(0, len(TASKS), size=n).astype(np.int16),
        source_id=np.array([f"src/File{s}.java" for s in source]),
        span_start=rng.integers(0, 100, size=n).astype(np.int64), span_end=rng.integers(100, 200, size=n).astype(np.int64),
        split=(source % 3).astype(np.int8), task_names=list(TASKS), meta={"seq_len": seq_len, "seed": seed},
    )


def make_half_correct(target, scenarios: ScenarioSet) -> ScenarioSet:
    """Set the first label token of every other scenario to the model's own prediction."""
    import torch

    from apmae.target.access import run_batch

    out = run_batch(target, torch.from_numpy(scenarios.input_ids), torch.from_numpy(scenarios.label_ids[:, 0]))
    pred = out.prediction.numpy()
    label_ids = scenarios.label_ids.copy()
    even = np.arange(len(scenarios)) % 2 == 0
    label_ids[even, 0] = pred[even]
    label_ids[~even, 0] = np.where(pred[~even] == label_ids[~even, 0], (label_ids[~even, 0] + 1) % 500 + 5,
                                   label_ids[~even, 0])
    cols = {k: getattr(scenarios, k) for k in ("input_ids", "label_len", "middle_pos", "task", "source_id",
                                               "span_start", "span_end", "split")}
    return ScenarioSet(**cols, label_ids=label_ids, task_names=scenarios.task_names, meta=scenarios.meta)
