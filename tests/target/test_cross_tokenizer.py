"""Cross-model validation over targets with different tokenizers: the same holes, each in its own tokens."""

from __future__ import annotations

import numpy as np
import pytest

from apmae.mining.settings import MiningConfig
from apmae.cache.store import AttentionCache
from apmae.datamodules.attention_cache import AttentionCacheDataModule
from apmae.datamodules.java_scenarios import JavaScenarioDataModule
from tests.cache.helpers import micro_starcoder2, save_target

S = 32


@pytest.fixture(scope="module")
def starcoder2_dir(tiny_tokenizer, tmp_path_factory):
    return save_target(micro_starcoder2(len(tiny_tokenizer)), tiny_tokenizer, tmp_path_factory.mktemp("sc2"))


def _scenarios(corpus, tokenizer_dir, tmp_path, prompt_format="auto"):
    return JavaScenarioDataModule(sources=str(corpus),
                                  tokenizer=str(tokenizer_dir),
                                  mining=MiningConfig(seq_len=S, n_per_task=6, max_per_file=2, max_label_tokens=8,
                                                      splits=(0.5, 0.5, 0.0),
                                                      tasks=["identifiers", "closing_bracket", "noise"],
                                                      prompt_format=prompt_format),
                                  progress=False,
                                  cache_dir=str(tmp_path / "sc"))


def test_each_extra_target_reads_the_same_holes_in_its_own_tokens(java_corpus, starcoder2_dir, llama_dir, gpt2_dir,
                                                                    llama_tokenizer, tmp_path):
    scenarios = _scenarios(java_corpus, starcoder2_dir, tmp_path)
    data = AttentionCacheDataModule(target=str(starcoder2_dir), scenarios=scenarios, cache_dir=str(tmp_path / "c"),
                                    extra_targets=[str(llama_dir), str(gpt2_dir)], batch_size=4)
    data.prepare_data()
    data.setup("fit")
    base = scenarios.scenario_set()
    assert base.prompt_format == "fim"
    sets = {name: data.scenario_set_of(m) for name, m in zip(data.val_target_names,
                                                             [str(starcoder2_dir), str(llama_dir), str(gpt2_dir)])}
    holes = {(s, a, b) for s, a, b in zip(base.source_id, base.span_start, base.span_end) if s}
    for name, sc in sets.items():
        cache = data.caches[name]
        assert cache.identity["scenario_fingerprint"] == sc.fingerprint()
        np.testing.assert_array_equal(cache.input_ids, sc.input_ids[cache.scenario_index])
        assert {(s, a, b) for s, a, b in zip(sc.source_id, sc.span_start, sc.span_end) if s} <= holes
    llama = sets[data.val_target_names[1]]
    assert llama.prompt_format == "causal" and (llama.input_ids[:, 0] == llama_tokenizer.bos_token_id).all()
    assert sets[data.val_target_names[2]].prompt_format == "causal"
    assert len(data.val_dataloader()) == 3
    again = AttentionCacheDataModule(target=str(starcoder2_dir), scenarios=scenarios, cache_dir=str(tmp_path / "c"),
                                     extra_targets=[str(llama_dir)])
    assert again.scenario_set_of(str(llama_dir)).fingerprint() == llama.fingerprint()  # stored and reused


def test_a_shared_tokenizer_keeps_the_single_scenario_set(java_corpus, starcoder2_dir, tiny_tokenizer, tmp_path):
    twin = save_target(micro_starcoder2(len(tiny_tokenizer), seed=1), tiny_tokenizer, tmp_path / "twin")
    scenarios = _scenarios(java_corpus, starcoder2_dir, tmp_path)
    data = AttentionCacheDataModule(target=str(starcoder2_dir), scenarios=scenarios, cache_dir=str(tmp_path / "c"),
                                    extra_targets=[str(twin)])
    assert data.scenario_set_of(str(twin)) is not None
    assert data.scenario_set_of(str(twin)).fingerprint() == scenarios.scenario_set().fingerprint()
    assert not list((tmp_path / "sc").glob("scenarios-*.*.npz"))  # no re-cut set written


def test_extra_targets_whose_scenarios_cannot_be_built_are_named(java_corpus, starcoder2_dir, llama_dir, tmp_path):
    fim = _scenarios(java_corpus, starcoder2_dir, tmp_path, prompt_format="fim")
    data = AttentionCacheDataModule(target=str(starcoder2_dir), scenarios=fim, cache_dir=str(tmp_path / "c"),
                                    extra_targets=[str(llama_dir)])
    with pytest.raises(ValueError, match=r"extra target .*llama.*cannot be built.*no FIM special tokens"):
        data.prepare_data()
    saved = fim.scenario_set().save(tmp_path / "saved.npz")
    data = AttentionCacheDataModule(target=str(starcoder2_dir), scenarios=str(saved), cache_dir=str(tmp_path / "c2"),
                                    extra_targets=[str(llama_dir)])
    with pytest.raises(ValueError, match="another tokenizer than the saved scenario set.*JavaScenarioDataModule"):
        data.prepare_data()
    legacy = fim.scenario_set()
    legacy.meta.pop("tokenizer_fingerprint")
    legacy_path = legacy.save(tmp_path / "legacy.npz")  # a set saved before tokenizers were recorded
    data = AttentionCacheDataModule(target=str(starcoder2_dir), scenarios=str(legacy_path),
                                    cache_dir=str(tmp_path / "c3"), extra_targets=[str(llama_dir)])
    with pytest.warns(UserWarning, match="records no tokenizer"):
        assert data.scenario_set_of(str(llama_dir)).fingerprint() == legacy.fingerprint()
