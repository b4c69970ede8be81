"""Fixtures: a micro StarCoder2 saved like a hub model, and scenario sets for it."""

from __future__ import annotations

import pytest

from tests.cache.helpers import make_half_correct, micro_starcoder2, random_scenarios, save_target

SEQ_LEN = 24
N_SCENARIOS = 30


@pytest.fixture(scope="session")
def target_dir(tiny_tokenizer, tmp_path_factory):
    model = micro_starcoder2(len(tiny_tokenizer))
    return save_target(model, tiny_tokenizer, tmp_path_factory.mktemp("target-a"))


@pytest.fixture(scope="session")
def target_b_dir(tiny_tokenizer, tmp_path_factory):
    model = micro_starcoder2(len(tiny_tokenizer), seed=1)
    return save_target(model, tiny_tokenizer, tmp_path_factory.mktemp("target-b"))


@pytest.fixture(scope="session")
def target(target_dir):
    from apmae.target.access import load_target

    return load_target(target_dir, device="cpu")


@pytest.fixture(scope="session")
def scenarios(target, tiny_tokenizer):
    fim_middle = tiny_tokenizer.convert_tokens_to_ids("<fim_middle>")
    return make_half_correct(target, random_scenarios(N_SCENARIOS, SEQ_LEN, len(tiny_tokenizer), fim_middle))


@pytest.fixture(scope="session")
def scenarios_path(scenarios, tmp_path_factory):
    return scenarios.save(tmp_path_factory.mktemp("scenarios") / "scenarios.npz")
