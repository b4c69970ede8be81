"""Every config under configs/ instantiates (model, data, trainer; no training), so none rots."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from apmae.cli import APMAECLI
from apmae.model.net import APMAEConfig
from apmae.lit_models.probe_module import LitProbe

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
PAPER_BASE = CONFIGS / "paper" / "base.yaml"
# Overlays and the config each one is checked on top of: paper model files on the paper base (which every
# one of them exercises), target-b's on target-a's, the probe, the AP-MAE variant, the data overlay
# that serves encodings and the study's AP-MAE on the demo AP-MAE config; everything else stands alone.
BASES = {CONFIGS / "demo" / "target_lm_b.yaml": CONFIGS / "demo" / "target_lm.yaml",
         CONFIGS / "demo" / "encode.yaml": CONFIGS / "demo" / "apmae.yaml",
         CONFIGS / "demo" / "probe.yaml": CONFIGS / "demo" / "apmae.yaml",
         CONFIGS / "demo" / "apmae_row_emphasis.yaml": CONFIGS / "demo" / "apmae.yaml",
         CONFIGS / "study" / "apmae.yaml": CONFIGS / "demo" / "apmae.yaml"}
# The paper probe stacks on the paper base and the StarCoder2-3B overlay, as its header says.
PAPER_STACKS = {CONFIGS / "paper" / "probe_starcoder2_3b.yaml": [PAPER_BASE, CONFIGS / "paper" / "starcoder2_3b.yaml"]}


def _stack(path: Path) -> list[Path]:
    if path in PAPER_STACKS:
        return [*PAPER_STACKS[path], path]
    base = PAPER_BASE if path.parent.name == "paper" else BASES.get(path)
    return [base, path] if base else [path]


STACKS = [_stack(p) for p in sorted(CONFIGS.rglob("*.yaml")) if p != PAPER_BASE]
PAPER = {"starcoder2_3b.yaml": ("bigcode/starcoder2-3b", "bigcode/starcoder2-7b"),
         "starcoder2_7b.yaml": ("bigcode/starcoder2-7b", "bigcode/starcoder2-3b"),
         "starcoder2_15b.yaml": ("bigcode/starcoder2-15b", "bigcode/starcoder2-3b")}
# The GPU settings of the paper configs, swapped for a CPU without changing anything else.
ON_CPU = ["--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.strategy", "auto"]


@pytest.fixture(scope="module")
def tokenizer_dir(tiny_tokenizer, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tokenizer")
    tiny_tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory) -> Path:
    """A saved AP-MAE shaped like the one the demo exports (S = 128, 16-pixel patches), for the probe config."""
    from apmae.model.net import APMAE

    return APMAE.from_preset("tiny", seq_len=128, patch_size=16).save(tmp_path_factory.mktemp("apmae"))


@pytest.fixture(scope="module")
def paper_encoder_dir(tmp_path_factory) -> Path:
    """A small saved AP-MAE at the paper's S = 256 and 32-pixel patches, for the paper probe config."""
    from apmae.model.net import APMAE

    return APMAE.from_preset("tiny", seq_len=256, patch_size=32).save(tmp_path_factory.mktemp("apmae256"))


def _instantiate(stack: list[Path], extra: list[str]) -> APMAECLI:
    args = [a for p in stack for a in ("--config", str(p))]
    return APMAECLI(args=[*args, *ON_CPU, *extra], run=False)


def test_every_config_is_covered():
    names = {str(p.relative_to(CONFIGS)) for s in STACKS for p in s}
    assert {"smoke.yaml", "demo/apmae.yaml", "paper/base.yaml", "paper/starcoder2_3b.yaml",
            "paper/starcoder2_7b.yaml", "paper/starcoder2_15b.yaml", "paper/encode_starcoder2_3b.yaml",
            "demo/encode.yaml", "demo/probe.yaml", "paper/probe_starcoder2_3b.yaml"} <= names


@pytest.mark.parametrize("stack", STACKS, ids=lambda s: str(s[-1].relative_to(CONFIGS)))
def test_config_instantiates_with_linked_seq_len(stack, tokenizer_dir, encoder_dir, paper_encoder_dir):
    extra = []
    if stack[-1].name.startswith("target_lm"):  # the target LM reads its tokenizer when built
        extra = ["--model.init_args.tokenizer_dir", str(tokenizer_dir),
                 "--data.init_args.tokenizer_dir", str(tokenizer_dir)]
    if stack[-1].name == "probe.yaml":  # the probe loads the exported AP-MAE when built
        extra = ["--model.init_args.encoder", str(encoder_dir)]
    if stack[-1].name == "probe_starcoder2_3b.yaml":
        extra = ["--model.init_args.encoder", str(paper_encoder_dir)]
    cli = _instantiate(stack, extra)
    assert cli.model.hparams.seq_len == cli.datamodule.seq_len
    if hasattr(cli.model, "net"):
        assert cli.model.net.config.seq_len == cli.datamodule.seq_len
    if stack[-1].name in PAPER:
        _check_paper_settings(cli, stack[-1].name)
    if stack[-1].name.startswith("probe"):
        _check_probe_settings(cli, paper=stack[-1].parent.name == "paper")
    if stack[-1].name.startswith("encode"):
        _check_encode_settings(cli, paper=stack[-1].parent.name == "paper")


def _check_probe_settings(cli: APMAECLI, *, paper: bool) -> None:
    """Probe overlays: whole scenarios of both classes, balanced, every head, a frozen encoder."""
    data, hp = cli.datamodule, cli.model.hparams
    assert isinstance(cli.model, LitProbe)
    # the AP-MAE base config's model settings that LitProbe does not take are gone, not carried over
    assert set(cli.config.model.init_args.as_dict()) <= set(inspect.signature(LitProbe).parameters)
    assert (hp.finetune_encoder, data.mode, data.head_selection) == (False, "scenarios", "all")
    assert (data.correct_only, data.balance, data.extra_targets) == (False, True, [])
    assert data.encoder.path == hp.encoder
    assert all(p.requires_grad is False for p in cli.model.net.parameters())
    if paper:
        assert (data.target, data.seq_len) == ("bigcode/starcoder2-3b", 256)
        assert cli.config.trainer.precision == "bf16-mixed"


def _check_encode_settings(cli: APMAECLI, *, paper: bool) -> None:
    """Encodings overlays stream by default, keep both classes for the probe, and paper scale means 10,000+."""
    from apmae.datamodules.encodings import EncodingsDataModule

    data = cli.datamodule
    assert isinstance(data, EncodingsDataModule)
    assert (data.stream, data.correct_only, data.balance, data.scaler) == (True, False, True, "log_normalize")
    if paper:
        scenarios = data.scenarios
        assert (data.target, scenarios.tokenizer, data.seq_len) == ("bigcode/starcoder2-3b",) * 2 + (256,)
        assert scenarios.mining.n_per_task * 14 >= 10_000 and scenarios.mining.tasks is None  # all 14 tasks


def _check_paper_settings(cli: APMAECLI, name: str) -> None:
    target, extra_target = PAPER[name]
    assert cli.model.net.config == APMAEConfig.preset("paper")  # the published architecture, S = 256
    assert round(cli.model.net.num_parameters() / 1e6) == 127  # the paper's ~127 M parameters
    data = cli.datamodule
    assert (data.target, data.extra_targets, data.scenarios.tokenizer) == (target, [extra_target], target)
    assert (data.head_selection, data.correct_only, data.scaler) == ("layerwise:0.25", True, "log_normalize")
    assert cli.config.trainer.precision == "bf16-mixed"
    assert cli.config.run_name == "starcoder2-" + name.split("_")[1].split(".")[0]
    r = cli.model.recipe
    assert (r.base_lr, r.lr_reference_batch, tuple(r.betas), r.weight_decay) == (1.5e-4, 50, (0.9, 0.95), 0.05)


def _printed(capsys, args: list[str]) -> dict:
    """The config ``apmae fit`` resolves (``--print_config``), as a dict."""
    import yaml

    from apmae.cli import cli_main

    with pytest.raises(SystemExit) as info:
        cli_main(["fit", *args, "--print_config"])
    assert info.value.code == 0
    return yaml.safe_load(capsys.readouterr().out)


def test_nested_settings_merge_field_by_field_and_round_trip_through_the_cli(tmp_path, capsys, monkeypatch):
    """Overlays and command-line keys set single fields of ``extraction`` / ``encoder``; the rest is kept."""
    import yaml

    from apmae.cache.settings import ExtractionSettings
    from apmae.encodings.settings import EncoderSettings

    monkeypatch.setattr("sys.argv", ["python -m apmae"])
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text("data:\n  init_args:\n    extraction: {dtype: bfloat16}\n    encoder: {precision: bf16-mixed}\n")
    args = ["--config", str(CONFIGS / "demo" / "apmae.yaml"), "--config", str(CONFIGS / "demo" / "encode.yaml"),
            "--config", str(overlay), "--data.init_args.extraction.workers", "3"]
    printed = _printed(capsys, args)["data"]["init_args"]
    # batch_size from encode.yaml, device from encode.yaml, dtype from the overlay, workers from the command line
    assert printed["extraction"] == {"batch_size": 8, "workers": 3, "dtype": "bfloat16", "device": "cpu",
                                     "compression": "none", "encoding": "bfloat16-14bit",
                                     "pattern_kind": "attention", "heads": "all", "head_seed": 0,
                                     "progress": True}
    assert printed["encoder"] == {"path": "artifacts/demo/apmae", "precision": "bf16-mixed", "batch_size": None}
    again = tmp_path / "printed.yaml"
    again.write_text(yaml.safe_dump({"data": {"class_path": "apmae.datamodules.encodings.EncodingsDataModule",
                                              "init_args": printed}}))
    assert _printed(capsys, [*args[:2], "--config", str(again)])["data"]["init_args"] == printed
    data = _instantiate([CONFIGS / "demo" / "apmae.yaml", again], []).datamodule
    assert data.extraction == ExtractionSettings(batch_size=8, workers=3, dtype="bfloat16", device="cpu")
    assert data.encoder == EncoderSettings(path="artifacts/demo/apmae", precision="bf16-mixed")


@pytest.mark.parametrize("key, value, message", [
    ("extraction.dtype", "fp32", "extraction.dtype='fp32'; use one of ['float32', 'float16', 'bfloat16']"),
    ("extraction.batch_size", "0", "extraction.batch_size=0 and extraction.workers=2 must both be at least 1"),
    ("encoder.precision", "bf16", "encoder.precision='bf16'; use one of ['32', 'bf16-mixed', '16-mixed']"),
])
def test_a_bad_nested_setting_is_named_in_the_cli_error(key, value, message, capsys, monkeypatch):
    from apmae.cli import cli_main

    monkeypatch.setattr("sys.argv", ["python -m apmae"])
    with pytest.raises(SystemExit) as info:
        cli_main(["fit", "--config", str(CONFIGS / "demo" / "apmae.yaml"), "--config",
                  str(CONFIGS / "demo" / "encode.yaml"), *ON_CPU, f"--data.init_args.{key}", value])
    assert info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"error: invalid configuration: {message}"
