"""Fixtures: a micro StarCoder2 target and scenarios it completes half of, exactly or at the first token."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from apmae.interventions.sweep import InterventionScenarios
from apmae.mining.scenario_set import ScenarioSet
from tests.cache.helpers import micro_starcoder2, random_scenarios, save_target

SEQ_LEN = 16
N_SCENARIOS = 24
LAYERS, HEADS = 2, 4


def generate_without_cache(model, input_ids: torch.Tensor, n_tokens: int) -> torch.Tensor:
    """Greedy tokens (B, n_tokens) by re-running the whole sequence each step (no KV cache)."""
    seq = input_ids
    with torch.no_grad():
        for _ in range(n_tokens):
            nxt = model(input_ids=seq, use_cache=False).logits[:, -1].argmax(dim=-1)
            seq = torch.cat([seq, nxt[:, None]], dim=1)
    return seq[:, input_ids.shape[1]:]


def own_completions(model, scenarios: ScenarioSet) -> ScenarioSet:
    """Holes of every other scenario replaced by the model's own greedy completion (baseline exact match there)."""
    label_ids = scenarios.label_ids.copy()
    ids = torch.from_numpy(scenarios.input_ids).long()
    generated = generate_without_cache(model, ids, label_ids.shape[1]).numpy()
    even = np.arange(len(scenarios)) % 2 == 0
    label_ids[even] = np.where(np.arange(label_ids.shape[1])[None, :] < scenarios.label_len[even, None],
                               generated[even], 0)
    cols = {k: getattr(scenarios, k) for k in ("input_ids", "label_len", "middle_pos", "task", "source_id",
                                               "span_start", "span_end", "split")}
    return ScenarioSet(**cols, label_ids=label_ids, task_names=scenarios.task_names, meta=scenarios.meta)


def attentive_micro_starcoder2(vocab_size: int, *, seed: int = 3):
    """A micro StarCoder2 whose heads matter: value and output projections scaled up 5x.

    At random init the attention output is too small to change any prediction (every prompt
    ending with <fim_middle> gets the same first token); scaled, predictions depend on the context.
    """
    model = micro_starcoder2(vocab_size, layers=LAYERS, heads=HEADS, seed=seed)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.v_proj.weight.mul_(5.0)
            layer.self_attn.o_proj.weight.mul_(5.0)
    return model


@pytest.fixture(scope="session")
def micro_target_dir(tiny_tokenizer, tmp_path_factory):
    model = attentive_micro_starcoder2(len(tiny_tokenizer))
    return save_target(model, tiny_tokenizer, tmp_path_factory.mktemp("interv") / "micro-a")


@pytest.fixture(scope="session")
def micro_target(micro_target_dir):
    from apmae.target.access import load_target

    return load_target(micro_target_dir, device="cpu")


@pytest.fixture(scope="session")
def scenario_set(micro_target, tiny_tokenizer) -> ScenarioSet:
    fim_middle = tiny_tokenizer.convert_tokens_to_ids("<fim_middle>")
    return own_completions(micro_target.model, random_scenarios(N_SCENARIOS, SEQ_LEN, len(tiny_tokenizer),
                                                                fim_middle, seed=5))


@pytest.fixture(scope="session")
def scenario_set_path(scenario_set, tmp_path_factory):
    return scenario_set.save(tmp_path_factory.mktemp("interv-scenarios") / "scenarios.npz")


@pytest.fixture(scope="session")
def scenarios(scenario_set) -> InterventionScenarios:
    s = scenario_set
    return InterventionScenarios(input_ids=s.input_ids, label_ids=s.label_ids, label_len=s.label_len, task=s.task,
                                 task_names=s.task_names, scenario_index=np.arange(len(s)), source_id=s.source_id)


@pytest.fixture
def importance() -> np.ndarray:
    """A synthetic signed (L, H) ranking with distinct values."""
    return np.random.default_rng(7).normal(size=(LAYERS, HEADS))
