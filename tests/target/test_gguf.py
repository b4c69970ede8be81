"""GGUF checkpoints as targets: converted once through transformers, reused by hash, clear errors."""

from __future__ import annotations

import sys

import pytest
import torch

import apmae.target.gguf as gguf_module
from apmae.common.optional import MissingExtraError
from apmae.target.access import load_target
from apmae.target.gguf import convert_gguf, converted_dir
from tests.target.tiny_models import tiny_llama, write_llama_gguf

TEXT = "public long balance() { return total + 1; }"


@pytest.fixture(scope="module")
def llama_model(llama_tokenizer):
    return tiny_llama(llama_tokenizer, seed=3)


@pytest.fixture(scope="module")
def gguf_file(llama_model, llama_tokenizer, tmp_path_factory):
    return write_llama_gguf(llama_model, llama_tokenizer, tmp_path_factory.mktemp("gguf") / "tiny-llama.gguf")


def test_a_gguf_target_computes_what_the_original_model_computes(gguf_file, llama_model, llama_tokenizer, tmp_path):
    target = load_target(gguf_file, device="cpu", gguf_cache=tmp_path)
    assert target.name == str(gguf_file) and (target.n_layers, target.n_heads) == (2, 4)
    ids = llama_tokenizer(TEXT)["input_ids"]
    assert target.tokenizer(TEXT)["input_ids"] == ids and ids[0] == llama_tokenizer.bos_token_id
    x = torch.tensor([ids])
    with torch.no_grad():
        want = llama_model(input_ids=x, output_attentions=True)
        got = target.model(input_ids=x, output_attentions=True)
    torch.testing.assert_close(got.logits, want.logits, rtol=1e-5, atol=1e-5)
    for a, b in zip(got.attentions, want.attentions):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_the_conversion_is_kept_by_content_hash_and_reused(gguf_file, tmp_path, monkeypatch):
    out = convert_gguf(gguf_file, cache_dir=tmp_path)
    assert out == converted_dir(gguf_file, tmp_path) and (out / "model.safetensors").is_file()
    assert (out / "tokenizer.json").is_file()

    def never(path):
        raise AssertionError("a converted file must not be read again")

    monkeypatch.setattr(gguf_module, "_load_gguf", never)
    assert convert_gguf(gguf_file, cache_dir=tmp_path) == out
    assert load_target(gguf_file, device="cpu", gguf_cache=tmp_path).n_layers == 2


def test_a_conversion_into_a_chosen_folder_is_reused_and_kept_to_its_file(gguf_file, llama_model, llama_tokenizer,
                                                                            tmp_path, monkeypatch):
    from apmae.demo import build

    out = tmp_path / "smollm2"
    monkeypatch.setattr(build, "smollm2_gguf", lambda: gguf_file)  # the demo's step on the tiny GGUF
    assert build.build_smollm2(out) and build.is_complete("smollm2", out)
    assert load_target(out, device="cpu").n_layers == 2 and (out / "tokenizer.json").is_file()
    monkeypatch.setattr(gguf_module, "_load_gguf", lambda path: pytest.fail("converted twice"))
    assert not build.build_smollm2(out) and convert_gguf(gguf_file, out=out) == out
    other = write_llama_gguf(tiny_llama(llama_tokenizer, seed=4), llama_tokenizer, tmp_path / "other.gguf")
    with pytest.raises(ValueError, match="conversion of another GGUF file"):
        convert_gguf(other, out=out)


def test_a_truncated_gguf_file_is_refused_with_what_to_do(gguf_file, tmp_path):
    data = gguf_file.read_bytes()
    for size in (10, len(data) // 2):
        cut = tmp_path / f"cut{size}.gguf"
        cut.write_bytes(data[:size])
        with pytest.raises(ValueError, match=r"truncated.*(download|write) it again"):
            load_target(cut, device="cpu", gguf_cache=tmp_path / "cache")


def test_a_file_that_is_not_gguf_is_refused(tmp_path):
    fake = tmp_path / "model.gguf"
    fake.write_text('{"architectures": ["LlamaForCausalLM"]}')
    with pytest.raises(ValueError, match="is not a GGUF file"):
        load_target(fake, device="cpu", gguf_cache=tmp_path)
    with pytest.raises(ValueError, match="does not exist"):
        load_target(tmp_path / "missing.gguf", device="cpu", gguf_cache=tmp_path)


def test_an_architecture_transformers_cannot_read_is_named(tmp_path):
    import gguf

    path = tmp_path / "odd.gguf"
    writer = gguf.GGUFWriter(str(path), "oddformer")
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", torch.zeros(4, 4).numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ValueError, match="oddformer"):
        load_target(path, device="cpu", gguf_cache=tmp_path / "cache")


def test_without_the_gguf_packages_the_error_names_the_extra(gguf_file, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "gguf", None)  # as if not installed
    with pytest.raises(MissingExtraError, match=r"apmae\[gguf\]"):
        convert_gguf(gguf_file, cache_dir=tmp_path)


def test_a_gguf_file_of_another_version_is_named(gguf_file, tmp_path):
    data = bytearray(gguf_file.read_bytes())
    data[4:8] = (99).to_bytes(4, "little")
    future = tmp_path / "future.gguf"
    future.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"is GGUF version 99; the gguf reader reads versions \[2, 3\]"):
        load_target(future, device="cpu", gguf_cache=tmp_path / "cache")


def test_a_damaged_gguf_header_is_named(gguf_file, tmp_path):
    data = bytearray(gguf_file.read_bytes())
    data[24:40] = bytes(b ^ 0x5A for b in data[24:40])  # the first metadata key's length and name
    damaged = tmp_path / "damaged.gguf"
    damaged.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"cannot read GGUF file .*damaged.gguf.*(download|write) it again"):
        load_target(damaged, device="cpu", gguf_cache=tmp_path / "cache")
