"""Attention caches with planted structure, written through the real cache writer.

Every scenario has L x H heads of S x S causal patterns. All heads are random
softmax patterns except the planted head, whose pattern is a previous-token
band when the scenario is "correct" and a first-token sink when it is not, so
``correct`` is predictable from that head alone.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from apmae.cache.store import CacheSpec, CacheWriter, cache_files
from apmae.cache.codec import encode_attentions
from apmae.mining.scenario_set import ScenarioSet

TASKS = ["identifiers", "eol", "noise"]


def planted_patterns(correct: np.ndarray, *, layers: int, heads: int, seq_len: int, planted: tuple[int, int],
                     seed: int) -> torch.Tensor:
    """(N, L, H, S, S) softmax patterns; head ``planted`` carries the label."""
    g = torch.Generator().manual_seed(seed)
    n = len(correct)
    scores = 1.5 * torch.randn(n, layers, heads, seq_len, seq_len, generator=g)
    q, k = torch.arange(seq_len).view(-1, 1), torch.arange(seq_len).view(1, -1)
    band = torch.where(q - k == 1, 6.0, 0.0) + torch.where((q == 0) & (k == 0), 6.0, 0.0)
    sink = torch.where(k == 0, 6.0, 0.0)
    layer, head = planted
    scores[:, layer, head] += torch.where(torch.as_tensor(correct).view(-1, 1, 1), band, sink)
    causal = torch.ones(seq_len, seq_len, dtype=torch.bool).tril()
    return scores.masked_fill(~causal, float("-inf")).softmax(-1)


def scenario_set(n: int, seq_len: int, *, seed: int) -> ScenarioSet:
    """Random prompts; two real tasks and noise; splits by source file (60/20/20)."""
    rng = np.random.default_rng(seed)
    source = np.arange(n) // 2
    split = np.select([source % 5 < 3, source % 5 == 3], [0, 1], 2).astype(np.int8)
    return ScenarioSet(
        input_ids=rng.integers(5, 100, size=(n, seq_len), dtype=np.int32),
        label_ids=rng.integers(5, 100, size=(n, 2), dtype=np.int32), label_len=np.ones(n, dtype=np.int32),
        middle_pos=np.full(n, seq_len - 1, dtype=np.int32), task=(np.arange(n) % 2).astype(np.int16),
        source_id=np.array([f"src/F{s}.java" for s in source]), span_start=np.zeros(n, dtype=np.int64),
        span_end=np.ones(n, dtype=np.int64), split=split, task_names=list(TASKS), meta={"seq_len": seq_len},
    )


def write_patterns_cache(cache_dir: Path, *, name: str, scenarios: ScenarioSet, patterns: torch.Tensor,
                         correct: np.ndarray, probability: np.ndarray) -> list[Path]:
    """A complete single-shard cache ``<name>.rank0.h5`` of (N, L, H, S, S) ``patterns``."""
    n, layers, heads = patterns.shape[:3]
    target = {"model": name, "model_type": "synthetic", "n_layers": layers, "n_heads": heads, "head_dim": 8,
              "vocab_size": 100, "dtype": "float32", "tokenizer": "", "tokenizer_vocab": 0}
    spec = CacheSpec(target=target, seq_len=patterns.shape[-1], scenario_fingerprint=scenarios.fingerprint(),
                     n_scenarios=n)
    with CacheWriter.open(Path(cache_dir) / f"{name}.rank0.h5", spec, scenarios) as writer:
        for lo in range(0, n, 16):
            batch = patterns[lo:lo + 16]
            bits = encode_attentions([batch[:, layer] for layer in range(layers)])
            hi = lo + len(batch)
            writer.append(writer.encode(bits), np.zeros(hi - lo), probability[lo:hi], correct[lo:hi],
                          np.ones(hi - lo))
    scenarios.save(Path(cache_dir) / f"{name}-scenarios.npz")
    return cache_files(cache_dir, name)


def write_planted_cache(cache_dir: Path, *, name: str = "synth", n: int = 120, layers: int = 2, heads: int = 4,
                        seq_len: int = 32, planted: tuple[int, int] = (1, 2), seed: int = 0) -> list[Path]:
    """A complete single-shard cache ``<name>.rank0.h5``; half of each task's scenarios correct."""
    scenarios = scenario_set(n, seq_len, seed=seed)
    rng = np.random.default_rng(seed + 1)
    correct = rng.permutation(np.arange(n) % 2 == 0)
    patterns = planted_patterns(correct, layers=layers, heads=heads, seq_len=seq_len, planted=planted, seed=seed)
    probability = np.where(correct, 0.6, 0.4).astype(np.float32) + rng.normal(0, 0.15, n).astype(np.float32)
    return write_patterns_cache(cache_dir, name=name, scenarios=scenarios, patterns=patterns, correct=correct,
                                probability=probability)
