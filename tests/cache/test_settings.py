"""ExtractionSettings / EncoderSettings: defaults, and errors that name the key to change."""

from __future__ import annotations

import pytest

from apmae.cache.extract import ensure_cache, extract
from apmae.datamodules.attention_cache import AttentionCacheDataModule
from apmae.cache.settings import ExtractionSettings
from apmae.encodings.settings import EncoderSettings


def test_defaults_are_the_documented_ones():
    x = ExtractionSettings()
    assert (x.batch_size, x.workers, x.dtype, x.device, x.progress) == (8, 2, "float32", "auto", True)
    assert (x.compression, x.encoding, x.pattern_kind) == ("none", "bfloat16-14bit", "attention")
    assert (x.heads, x.head_seed) == ("all", 0)
    e = EncoderSettings(path="enc")
    assert (e.path, e.precision, e.batch_size) == ("enc", "32", None)


def test_settings_are_values():
    """Frozen and compared by value: a config and a hand-built object mean the same run."""
    assert ExtractionSettings(dtype="bfloat16") == ExtractionSettings(dtype="bfloat16") != ExtractionSettings()
    with pytest.raises(AttributeError):
        ExtractionSettings().batch_size = 4  # type: ignore[misc]


@pytest.mark.parametrize("kwargs, message", [
    ({"batch_size": 0}, "extraction.batch_size=0 and extraction.workers=2 must both be at least 1"),
    ({"workers": 0}, "extraction.batch_size=8 and extraction.workers=0 must both be at least 1"),
    ({"dtype": "fp16"}, "extraction.dtype='fp16'; use one of ['float32', 'float16', 'bfloat16']"),
    ({"compression": "zstd"}, "extraction.compression='zstd'; use one of ['none', 'lzf', 'gzip']"),
    ({"encoding": "float16"}, "extraction.encoding='float16'; use one of ['bfloat16-14bit', 'bfloat16-bits']"),
    ({"pattern_kind": "value"}, "extraction.pattern_kind='value'; use one of ['attention', 'contribution']"),
    ({"device": "gpu"}, "extraction.device='gpu' is not a torch device; use auto, cpu, cuda or cuda:<index>"),
    ({"heads": "layerwise:0"}, "extraction.heads='layerwise:0'; use 'all' or 'layerwise:<fraction in (0, 1]>' "
                               "(e.g. layerwise:0.25)"),
    ({"head_seed": -1}, "extraction.head_seed=-1; use an integer >= 0"),
])
def test_bad_extraction_settings_name_the_key(kwargs, message):
    with pytest.raises(ValueError) as info:
        ExtractionSettings(**kwargs)
    assert str(info.value) == message


def test_any_torch_device_is_accepted_without_touching_it():
    assert [ExtractionSettings(device=d).device for d in ("cpu", "cuda", "cuda:1", "auto")] == [
        "cpu", "cuda", "cuda:1", "auto"]


@pytest.mark.parametrize("kwargs, message", [
    ({"path": ""}, "encoder.path is empty; give an exported AP-MAE directory or a LitAPMAE checkpoint"),
    ({"path": "enc", "precision": "bf16"}, "encoder.precision='bf16'; use one of ['32', 'bf16-mixed', '16-mixed']"),
    ({"path": "enc", "batch_size": 0},
     "encoder.batch_size=0; it must be at least 1 (or null for the DataModule's default)"),
])
def test_bad_encoder_settings_name_the_key(kwargs, message):
    with pytest.raises(ValueError) as info:
        EncoderSettings(**kwargs)
    assert str(info.value) == message


def test_a_bare_value_for_a_settings_argument_says_what_to_pass_and_a_dict_is_the_object(target_dir, scenarios_path,
                                                                                          tmp_path):
    common = dict(target=str(target_dir), scenarios=str(scenarios_path), cache_dir=str(tmp_path), mode="scenarios")
    with pytest.raises(TypeError) as info:
        AttentionCacheDataModule(encoder="artifacts/apmae", **common)  # type: ignore[arg-type]
    assert str(info.value) == ("encoder='artifacts/apmae': pass encoder=EncoderSettings(...) or a dict of its "
                               "fields (in a config, a nested mapping under encoder:)")
    # in Python as in a config, a mapping of the fields means the settings object
    dm = AttentionCacheDataModule(extraction={"dtype": "bfloat16"}, encoder={"path": "enc"}, **common)
    assert dm.extraction == ExtractionSettings(dtype="bfloat16") and dm.encoder == EncoderSettings(path="enc")
    with pytest.raises(TypeError, match=r"\['batchsize'\] are not ExtractionSettings fields"):
        AttentionCacheDataModule(extraction={"batchsize": 3}, **common)  # type: ignore[arg-type]


def test_extraction_settings_pass_whole_and_flat_arguments_name_the_object_to_pass():
    with pytest.raises(TypeError, match=r"pass settings=ExtractionSettings\(batch_size=4, workers=1\)"):
        extract(None, None, "x.h5", batch_size=4, workers=1)
    with pytest.raises(TypeError, match=r"pass settings=ExtractionSettings\(dtype='bfloat16'\)"):
        ensure_cache("model", None, "cache", dtype="bfloat16")
    with pytest.raises(TypeError, match=r"unexpected arguments \['batchsize'\]"):
        extract(None, None, "x.h5", batchsize=4)
    assert ExtractionSettings.of(None) == ExtractionSettings()
    assert ExtractionSettings.of({"batch_size": 3}) == ExtractionSettings(batch_size=3)


def test_the_datamodule_keeps_its_settings(target_dir, scenarios_path, tmp_path):
    extraction = ExtractionSettings(device="cpu", pattern_kind="contribution")
    encoder = EncoderSettings(path="enc", precision="16-mixed")
    dm = AttentionCacheDataModule(target=str(target_dir), scenarios=str(scenarios_path), cache_dir=str(tmp_path),
                                  mode="scenarios", extraction=extraction, encoder=encoder)
    assert dm.extraction is extraction and dm.encoder is encoder
    assert dm.cache_names == {dm.train_target_name: f"{dm.train_target_name}.contribution"}
