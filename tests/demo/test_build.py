"""``python -m apmae.demo.build``: idempotent steps, atomic outputs, the CLI fit + export of a target."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from apmae.demo.build import build_corpus, build_tokenizer_dir, is_complete, main

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "demo"


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_corpus_step_is_idempotent_and_replaces_an_incomplete_directory(tmp_path):
    out = tmp_path / "corpus"
    out.mkdir()
    (out / "half-written.java").write_text("class")  # an interrupted earlier attempt: no marker
    assert build_corpus(out, n_files=5, seed=1) is True
    first = _snapshot(out)
    assert "half-written.java" not in first
    assert json.loads(first["MANIFEST.json"])["n_files"] == 5
    assert build_corpus(out, n_files=5, seed=1) is False
    assert _snapshot(out) == first
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dirs left


def test_tokenizer_step_needs_a_complete_corpus_and_skips_when_done(tmp_path, corpus_dir, capsys):
    with pytest.raises(ValueError, match="corpus"):
        build_tokenizer_dir(tmp_path / "missing", tmp_path / "tok", vocab_size=400)
    assert main(["tokenizer", "--corpus", str(corpus_dir), "--out", str(tmp_path / "tok"), "--vocab-size", "400"]) == 0
    assert is_complete("tokenizer", tmp_path / "tok")
    assert main(["tokenizer", "--corpus", str(corpus_dir), "--out", str(tmp_path / "tok")]) == 0
    built, skipped = capsys.readouterr().out.splitlines()
    assert built.startswith("tokenizer: built in ") and built.endswith(f" s -> {tmp_path / 'tok'}")
    assert skipped == f"tokenizer: already complete -> {tmp_path / 'tok'}"


def _resolved(capsys, *configs: Path) -> dict:
    """The config ``apmae fit`` resolves from stacked files (``--print_config``)."""
    import yaml

    from apmae.cli import cli_main

    with pytest.raises(SystemExit) as info:
        cli_main(["fit", *(a for c in configs for a in ("--config", str(c))), "--print_config"])
    assert info.value.code == 0
    return yaml.safe_load(capsys.readouterr().out)


def test_demo_configs_differ_in_size_and_seed(capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["python -m apmae"])
    a = _resolved(capsys, CONFIGS / "target_lm.yaml")
    b = _resolved(capsys, CONFIGS / "target_lm.yaml", CONFIGS / "target_lm_b.yaml")  # b is an overlay on a
    assert a["model"]["class_path"] == b["model"]["class_path"] == "apmae.lit_models.target_lm.TargetLM"
    size = ("hidden_size", "num_layers", "num_heads")
    assert [a["model"]["init_args"][k] for k in size] != [b["model"]["init_args"][k] for k in size]
    assert a["model"]["init_args"]["seed"] != b["model"]["init_args"]["seed"]
    # one recipe for both (b overlays only size and seed): 30 warm-up steps of 600, then cosine
    assert a["model"]["init_args"]["recipe"] == b["model"]["init_args"]["recipe"]
    assert [x["trainer"]["max_steps"] for x in (a, b)] == [600, 600]
    assert int(a["model"]["init_args"]["recipe"]["warmup_fraction"] * a["trainer"]["max_steps"]) == 30
    apmae = _resolved(capsys, CONFIGS / "apmae.yaml")
    scenario_len = apmae["data"]["init_args"]["scenarios"]["init_args"]["mining"]["seq_len"]
    # both targets are trained for exactly the FIM prompt length the demo's scenarios have
    assert a["data"]["init_args"]["context_len"] == b["data"]["init_args"]["context_len"] == scenario_len == 128


@pytest.mark.slow
def test_target_step_trains_through_the_cli_and_exports(tmp_path, corpus_dir, tokenizer_dir, monkeypatch):
    """`apmae fit` with the demo config (shrunk to a micro model) exports a loadable model, logged to MLflow."""
    from transformers import AutoModelForCausalLM

    monkeypatch.setattr(sys, "argv", ["python -m apmae.demo.build"])
    out = tmp_path / "target"
    overrides = ["--trainer.max_steps=4", "--trainer.val_check_interval=4", "--trainer.limit_val_batches=1",
                 "--model.init_args.hidden_size=32", "--model.init_args.num_layers=2",
                 "--model.init_args.num_heads=4", "--model.init_args.intermediate_size=64",
                 "--model.init_args.recipe.warmup_fraction=0.25", "--data.init_args.seq_len=160",
                 "--data.init_args.context_len=128", "--data.init_args.batch_size=2"]
    args = ["target", "--config", str(CONFIGS / "target_lm.yaml"), "--corpus", str(corpus_dir),
            "--tokenizer", str(tokenizer_dir), "--out", str(out), *overrides]
    assert main(args) == 0
    assert is_complete("target", out)
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.num_hidden_layers == 2 and model.config._attn_implementation == "eager"
    assert model.config.max_position_embeddings >= 160
    before = _snapshot(out)
    assert main(args) == 0  # already complete: nothing retrained
    assert _snapshot(out) == before
    import mlflow

    runs = mlflow.search_runs(experiment_names=["demo-target"])
    assert len(runs) == 1 and "metrics.val/first_token_acc" in runs.columns


def test_a_failing_step_leaves_no_output_and_no_temp_dir(tmp_path):
    from apmae.common.atomic import atomic_dir
    from apmae.demo.build import build_target

    with pytest.raises(RuntimeError, match="boom"):
        with atomic_dir(tmp_path / "out") as tmp:
            (tmp / "partial.bin").write_bytes(b"x")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="run the `corpus` step first"):
        build_target("unused.yaml", corpus_dir=tmp_path / "c", tokenizer_dir=tmp_path / "t", out_dir=tmp_path / "m")
