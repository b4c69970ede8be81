"""GGUF checkpoints as targets: converted once to a Hugging Face directory, then loaded like any other.

Many models are shared as GGUF files (llama.cpp's format, often quantised). A target given as
``path/model.gguf`` is read through transformers' own GGUF support (it dequantises to float32;
it needs the ``gguf`` and ``accelerate`` packages, the ``gguf`` extra), and its weights and
tokenizer are saved as a safetensors directory under ``<cache>/<file stem>-<sha256 prefix>``.
A later run finds that directory by the file's content hash and loads it directly, so the
conversion (tens of seconds for a 135M model on a CPU) happens once per file.

transformers refuses ``save_pretrained`` on a GGUF-loaded model ("quantized with gguf and is
not serializable"); its state dict, loaded into a model built from the same config without the
quantisation entry, saves normally. The conversion checks that every key matched.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from apmae.common.atomic import atomic_dir
from apmae.common.files import file_sha256
from apmae.common.optional import require

GGUF_MAGIC = b"GGUF"
_HEADER_BYTES = 24  # magic, version (uint32), tensor count and metadata count (uint64 each)
GGUF_VERSIONS = (2, 3)  # the versions the gguf reader transformers uses can read
_SOURCE_FILE = "gguf_source.json"  # written last into a converted directory: the file it came from
DEFAULT_CACHE = Path(os.environ.get("APMAE_GGUF_CACHE", Path.home() / ".cache" / "apmae" / "gguf"))


def is_gguf(name_or_path: str | Path) -> bool:
    """True for a path naming a ``.gguf`` file (the suffix decides; the file is checked on conversion)."""
    return str(name_or_path).lower().endswith(".gguf")


def check_gguf_file(path: Path) -> None:
    """Raise ``ValueError`` unless ``path`` exists and starts like a GGUF file."""
    if not path.is_file():
        raise ValueError(f"GGUF file {str(path)!r} does not exist; give the path of a .gguf checkpoint")
    with path.open("rb") as f:
        head = f.read(_HEADER_BYTES)
    if head[:4] != GGUF_MAGIC:
        raise ValueError(f"{path} is not a GGUF file (it starts with {head[:4]!r}, not {GGUF_MAGIC!r}); "
                         "give a .gguf checkpoint, or a Hugging Face model directory without the .gguf suffix")
    if len(head) < _HEADER_BYTES:
        raise ValueError(f"GGUF file {path} is truncated ({path.stat().st_size} bytes, less than its header); "
                         "download or write it again")
    version = int.from_bytes(head[4:8], "little")
    if version not in GGUF_VERSIONS:
        raise ValueError(f"GGUF file {path} is GGUF version {version}; the gguf reader reads versions "
                         f"{list(GGUF_VERSIONS)}: convert the model again with a llama.cpp that writes one of "
                         "them, or upgrade the gguf package if the version is newer")


def converted_dir(path: str | Path, cache_dir: str | Path | None = None) -> Path:
    """Where the conversion of the GGUF file ``path`` lives (or will live)."""
    path = Path(path)
    return _cache_entry(path, file_sha256(path), cache_dir)


def _cache_entry(path: Path, sha256: str, cache_dir: str | Path | None) -> Path:
    return Path(cache_dir or DEFAULT_CACHE) / f"{path.stem}-{sha256[:16]}"


def convert_gguf(path: str | Path, *, cache_dir: str | Path | None = None, out: str | Path | None = None) -> Path:
    """The Hugging Face directory of a GGUF checkpoint: converted on the first call, reused after.

    The directory is ``<cache_dir>/<file stem>-<sha256 prefix>``, or ``out`` when given (the demo
    keeps its target beside its other inputs); an ``out`` converted from another file is refused.

    Raises:
        ValueError: not a GGUF file, a truncated or damaged one, an architecture transformers'
            GGUF loader does not support, or an ``out`` that holds the conversion of another file.
        apmae.common.optional.MissingExtraError: ``gguf`` or ``accelerate`` is not installed.
    """
    path = Path(path)
    check_gguf_file(path)
    sha256 = file_sha256(path)
    out = Path(out) if out is not None else _cache_entry(path, sha256, cache_dir)
    source = out / _SOURCE_FILE
    if source.is_file():
        if json.loads(source.read_text()).get("sha256") != sha256:
            raise ValueError(f"{out} holds the conversion of another GGUF file than {path}; remove it "
                             "or give another output directory")
        return out
    model, tokenizer = _load_gguf(path)
    with atomic_dir(out) as tmp:
        _resave(model).save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / _SOURCE_FILE).write_text(json.dumps({"gguf": path.name, "sha256": sha256}) + "\n")
    return out


def _load_gguf(path: Path):
    """(model, tokenizer) through transformers' GGUF loader, float32, with errors that say what to do."""
    for module, package in (("gguf", "gguf"), ("accelerate", "accelerate")):
        require(module, extra="gguf", purpose="loading a GGUF checkpoint", package=package)
    from transformers import AutoModelForCausalLM, AutoTokenizer  # import cost ~5 s: GGUF targets only

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    except ValueError as e:
        if "not supported" in str(e).lower():
            raise ValueError(f"{path}: {e} transformers' GGUF loader cannot read this architecture; convert the "
                             "model to a Hugging Face directory and give that directory as the target") from e
        raise ValueError(f"cannot read GGUF file {path}: {e}; it may be truncated or damaged: "
                         "download or write it again") from e
    except Exception as e:  # the GGUF reader fails in many ways on a damaged file (struct, mmap, index errors)
        raise ValueError(f"cannot read GGUF file {path} ({type(e).__name__}: {e}); it may be truncated or "
                         "damaged: download or write it again") from e
    return model, tokenizer


def _resave(model):
    """A model of the same config without the GGUF quantisation entry, holding the same weights."""
    from transformers import AutoModelForCausalLM  # import cost, as above

    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    fresh = AutoModelForCausalLM.from_config(config)
    fresh.load_state_dict(model.state_dict(), strict=True)  # every key must match
    return fresh.eval()


__all__ = ["DEFAULT_CACHE", "check_gguf_file", "convert_gguf", "converted_dir", "is_gguf"]
