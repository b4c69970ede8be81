"""The README's Python examples run as written, against small local stand-ins of what they name.

Every ```python block of README.md is executed. The blocks name a hub model, a user's corpus
and the demo's artifacts; the workspace below provides each of them locally and small:

- ``bigcode/starcoder2-3b``: a micro StarCoder2 saved with its tokenizer, like a hub model, whose
  output always predicts ``;``: the end-of-line holes are then right, so ``correct_only=True``
  leaves training images (a random model is right on almost none);
- ``my/java``: a generated Java corpus;
- ``artifacts/demo/target-a``, ``artifacts/demo/cache/target-a.rank*.h5``, ``artifacts/demo/apmae``:
  that micro target, its attention cache and a tiny exported AP-MAE.

The variables the examples leave to the reader (``input_ids``, ``label_first``, ``patterns``) are
given as the prose around them describes them. Every call, argument and attribute runs as written;
only the hub name is swapped for the local directory, since nothing may be downloaded here.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from apmae.cache.settings import ExtractionSettings
from apmae.cache.extract import extract
from apmae.demo.corpus import write_corpus
from apmae.mining.tasks import TASKS
from apmae.model.net import APMAE, APMAEConfig
from apmae.target.access import load_target
from tests.cache.helpers import make_half_correct, micro_starcoder2, random_scenarios, save_target

README = Path(__file__).resolve().parents[2] / "README.md"
HUB_MODEL = "bigcode/starcoder2-3b"
SEQ_LEN = 32  # the cache's and the exported AP-MAE's S (the scenario example mines at its own S)


def python_blocks() -> list[str]:
    """The ```python blocks of the README, in order."""
    return re.findall(r"^```python\n(.*?)^```", README.read_text(encoding="utf-8"), flags=re.S | re.M)


@pytest.fixture(scope="module")
def workspace(tiny_tokenizer, tmp_path_factory) -> Path:
    """A folder holding everything the examples name, small."""
    root = tmp_path_factory.mktemp("readme")
    # 3 layers x 8 heads: the examples read layer 2, head 5 and zero heads of layers 1 and 2
    model = micro_starcoder2(len(tiny_tokenizer), layers=3, heads=8, kv_heads=2, hidden=32)
    save_target(always_predicts(";", tiny_tokenizer), tiny_tokenizer, root / "hub" / HUB_MODEL)
    target_dir = save_target(model, tiny_tokenizer, root / "artifacts" / "demo" / "target-a")
    write_corpus(root / "my" / "java", n_files=6, seed=0)  # a few hundred scenarios at S = 256
    target = load_target(target_dir, device="cpu")
    fim_middle = tiny_tokenizer.convert_tokens_to_ids("<fim_middle>")
    scenarios = make_half_correct(target, random_scenarios(12, SEQ_LEN, len(tiny_tokenizer), fim_middle))
    extract(target, scenarios, root / "artifacts" / "demo" / "cache" / "target-a.rank0.h5",
            ExtractionSettings(progress=False))
    torch.manual_seed(0)
    APMAE(APMAEConfig.preset("tiny", seq_len=SEQ_LEN, patch_size=8)).save(root / "artifacts" / "demo" / "apmae")
    return root


def always_predicts(token: str, tokenizer):
    """A micro StarCoder2 whose next token is ``token`` at every position.

    The final LayerNorm's weight is zeroed and its bias is a unit vector, so every position
    ends in the same hidden state; the (untied) output row of ``token`` is the only one that
    reads that direction.
    """
    model = micro_starcoder2(len(tokenizer), layers=3, heads=8, kv_heads=2, hidden=32)
    model.config.tie_word_embeddings = False
    model.lm_head.weight = torch.nn.Parameter(torch.zeros_like(model.lm_head.weight))
    with torch.no_grad():
        model.model.norm.weight.zero_()
        model.model.norm.bias.zero_()
        model.model.norm.bias[0] = 1.0
        model.lm_head.weight[tokenizer.convert_tokens_to_ids(token), 0] = 10.0
    return model


@pytest.fixture
def reader_inputs(workspace, tiny_tokenizer) -> dict:
    """What the prose gives the examples: a batch of prompts, their first label tokens, raw patterns."""
    rng = np.random.default_rng(0)
    input_ids = torch.from_numpy(rng.integers(5, len(tiny_tokenizer), size=(2, SEQ_LEN)))
    label_first = torch.from_numpy(rng.integers(5, len(tiny_tokenizer), size=2))
    causal = torch.tril(torch.rand(2, 1, SEQ_LEN, SEQ_LEN, generator=torch.Generator().manual_seed(0)))
    patterns = causal / causal.sum(dim=-1, keepdim=True)  # (B, 1, S, S), rows sum to 1 like attention
    return {"input_ids": input_ids, "label_first": label_first, "patterns": patterns}


def test_the_readme_has_its_examples():
    blocks = python_blocks()
    assert len(blocks) >= 5, "README.md lost its Python examples"
    assert all(block.strip() for block in blocks)


@pytest.mark.slow
def test_every_python_example_of_the_readme_runs_as_written(workspace, reader_inputs, monkeypatch):
    monkeypatch.chdir(workspace)
    before = set(TASKS)
    namespace = dict(reader_inputs)  # one session, top to bottom, as a reader runs them: a block may go on
    try:                                 # from the one before it
        for i, block in enumerate(python_blocks()):
            code = block.replace(f'"{HUB_MODEL}"', repr(str(workspace / "hub" / HUB_MODEL)))
            seen = dict(namespace)
            exec(compile(code, f"README.md python block {i + 1}", "exec"), namespace)  # noqa: S102
            _check({k: v for k, v in namespace.items() if k not in seen or seen[k] is not v})  # what it made
            for name in set(TASKS) - before:  # a registered example task does not leak into the next block
                del TASKS[name]
    finally:
        for name in set(TASKS) - before:
            del TASKS[name]


def _check(ns: dict) -> None:
    """What each example promises in its comments, checked on the values the block just made."""
    if "full" in ns:  # the model core: reconstruction keeps exact zeros above the diagonal
        upper = torch.triu(torch.ones(SEQ_LEN, SEQ_LEN, dtype=torch.bool), diagonal=1)
        assert ns["full"].shape == ns["images"].shape == (2, 1, SEQ_LEN, SEQ_LEN)
        assert torch.all(ns["full"][..., upper] == 0)
        assert ns["emb"].cls.shape == (2, ns["net"].config.enc_dim)
    if "cache" in ns:  # the cache reader: one pattern, one scenario, metadata arrays
        cache = ns["cache"]
        assert cache.pattern(0, layer=2, head=5).shape == (SEQ_LEN, SEQ_LEN)
        assert cache.scenario(0).shape == (3, 8, SEQ_LEN, SEQ_LEN)
        assert len(cache.correct) == len(cache.task) == 12
    if "target" in ns:  # head zeroing: the batch ran with heads zeroed, one outcome each
        assert ns["out"].prediction.shape == (2,)
    if "batch" in ns:  # the DataModules: every head of a scenario, raw attention (scaler none): rows sum to 1
        images, batch = ns["batch"]["images"], ns["batch"]
        assert images.ndim == 5 and images.shape[1:3] == (3 * 8, 1)
        torch.testing.assert_close(images.sum(-1), torch.ones(images.shape[:-1]), atol=1e-2, rtol=0)
        assert batch["stats"].shape == (len(images), 3, 8, 4)
        assert {"scenario", "row", "task", "correct", "probability"} <= set(batch)
    if getattr(ns.get("data"), "encoder", None) is not None:  # settings: nested, typed, as given
        assert ns["data"].extraction.dtype == "bfloat16" and ns["data"].encoder.precision == "bf16-mixed"
    if "register_task" in ns:
        assert TASKS["lambda_params"].query is not None
