"""Target-model access: load a causal LM, run scenarios, zero heads.

Glossary: B scenarios in a batch, S prompt tokens, L layers, H query heads,
hd head width, V vocabulary, T = S(S+1)/2 lower-triangle entries.

Any Hugging Face causal LM works (hub name or local directory); attention is
read with eager attention because the fused kernels return no patterns. Where
a model keeps its heads' outputs (the input of each layer's attention output
projection, which :func:`zero_heads` masks) is :mod:`apmae.target.layout`'s
registry.
"""

from __future__ import annotations

import contextlib
import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import torch
from safetensors import SafetensorError

from apmae.common.precision import warn_emulated_bf16
from apmae.common.triangle import lower_triangle_index
from apmae.target.gguf import convert_gguf, is_gguf
from apmae.target.layout import output_projections

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class Target:
    """A loaded target model with its tokenizer and the facts the cache records."""

    model: Any  # transformers PreTrainedModel, eval mode, eager attention
    tokenizer: Any  # transformers tokenizer (None when loaded without one)
    name: str  # hub name or directory it was loaded from
    n_layers: int
    n_heads: int  # query heads (GQA key/value heads already expanded in patterns)
    head_dim: int
    dtype: str  # one of DTYPES

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def summary(self) -> dict[str, Any]:
        """What identifies this target in a cache's attributes."""
        tok = self.tokenizer
        return {
            "model": self.name,
            "model_type": str(getattr(self.model.config, "model_type", "")),
            "n_layers": self.n_layers,
            "n_heads": self.n_heads,
            "head_dim": self.head_dim,
            "vocab_size": int(self.model.config.vocab_size),
            "dtype": self.dtype,
            "tokenizer": "" if tok is None else str(getattr(tok, "name_or_path", "")),
            "tokenizer_vocab": 0 if tok is None else len(tok),
        }


@dataclass
class FirstToken:
    """The first-token outcome of each scenario of a batch (the scenarios' correctness criterion)."""

    prediction: torch.Tensor  # (B,) long, argmax at <fim_middle>
    probability: torch.Tensor  # (B,) float32, softmax probability of the prediction
    label: torch.Tensor  # (B,) long, the hole's first token
    correct: torch.Tensor  # (B,) bool, prediction == label
    loss: torch.Tensor  # (B,) float32, cross-entropy of the label's first token


@dataclass
class TargetOutput(FirstToken):
    """:func:`run_batch`: the outcome and every head's full pattern."""

    attentions: torch.Tensor  # (B, L, H, S, S) in the model's dtype, on its device


@dataclass
class TriangleOutput(FirstToken):
    """:func:`run_batch_triangles`: the outcome and every head's lower triangle."""

    triangles: torch.Tensor  # (B, L, H, T) row-major (apmae.common.triangle), model dtype and device


def resolve_device(device: str) -> torch.device:
    """``auto`` means the first CUDA device when there is one, else CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def load_target(name_or_path: str | Path, *, dtype: str = "float32", device: str = "auto",
                gguf_cache: str | Path | None = None) -> Target:
    """Load a causal LM (hub name, local directory or ``.gguf`` file) with eager attention.

    A ``.gguf`` file is converted once to a Hugging Face directory under ``gguf_cache``
    (default ``~/.cache/apmae/gguf``, or ``$APMAE_GGUF_CACHE``) and loaded from there
    (:mod:`apmae.target.gguf`); the target keeps the file's path as its name.

    Raises:
        ValueError: unknown dtype, unloadable model, a damaged GGUF file, or a model
            without a recognisable per-layer attention output projection.
    """
    from transformers import AutoModelForCausalLM  # import cost ~5 s: only when a target is loaded

    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r} is not supported; use one of {sorted(DTYPES)}")
    if dtype == "bfloat16" and resolve_device(device).type == "cpu":
        warn_emulated_bf16(f"the target {name_or_path} (dtype bfloat16)", "dtype float32 (extraction.dtype: float32)")
    name = str(name_or_path)
    if name.startswith(("/", "./", "../", "~")) and not Path(name).expanduser().exists():
        raise ValueError(f"cannot load target model {name!r}: it does not exist; give a model directory, a .gguf "
                         "file or a hub name")
    source = _loadable(name, gguf_cache)
    try:
        model, info = AutoModelForCausalLM.from_pretrained(source, dtype=DTYPES[dtype], attn_implementation="eager",
                                                           output_loading_info=True)
    except (OSError, ValueError, SafetensorError) as e:
        raise ValueError(f"cannot load target model {name!r}: {e}; if its weights or config are truncated or "
                         "damaged, download or save the model again") from e
    _check_loaded_weights(name, info)
    tokenizer = load_target_tokenizer(source)  # None is fine: patterns need only ids
    model.to(resolve_device(device)).eval()
    return wrap_model(model, tokenizer=tokenizer, name=name, dtype=dtype)


def _check_loaded_weights(name: str, info: Mapping[str, Any]) -> None:
    """Refuse weights that left parameters at their random initialisation (transformers only warns)."""
    missing = sorted(info.get("missing_keys") or [])
    if missing:
        raise ValueError(f"target model {name!r} has no weights for {len(missing)} parameters ({missing[:3]} ...): "
                         "its weights file belongs to another model or is incomplete; download or save the model again")


def load_target_tokenizer(name_or_path: str | Path, *, gguf_cache: str | Path | None = None) -> Any:
    """The tokenizer of a target (hub name, directory or ``.gguf`` file), or None when it has none."""
    from transformers import AutoTokenizer  # import cost ~1 s: only when a target is loaded

    try:
        return AutoTokenizer.from_pretrained(_loadable(str(name_or_path), gguf_cache))
    except (OSError, ValueError):
        return None


def _loadable(name: str, gguf_cache: str | Path | None) -> str:
    """What ``from_pretrained`` reads for a target: a ``.gguf`` file's converted directory, else the name itself."""
    return str(convert_gguf(name, cache_dir=gguf_cache)) if is_gguf(name) else name


def wrap_model(model: Any, *, tokenizer: Any = None, name: str = "", dtype: str = "float32") -> Target:
    """A :class:`Target` around an already loaded model (switched to eager attention)."""
    if getattr(model.config, "_attn_implementation", "eager") != "eager":
        model.set_attn_implementation("eager")
    n_layers = len(output_projections(model))
    cfg = model.config
    n_heads = int(cfg.num_attention_heads)
    head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // n_heads)
    return Target(model=model, tokenizer=tokenizer, name=name or str(getattr(cfg, "name_or_path", "")),
                  n_layers=n_layers, n_heads=n_heads, head_dim=head_dim, dtype=dtype)


def accepts_argument(model: Any, name: str) -> bool:
    """Whether ``model.forward`` takes the keyword argument ``name``.

    Optional speed-ups differ between architectures and transformers versions
    (``logits_to_keep`` skips the lm_head at positions no one reads): pass them
    only to models that take them.
    """
    return name in inspect.signature(model.forward).parameters


@torch.inference_mode()
def run_batch(
    target: Target, input_ids: torch.Tensor, label_first: torch.Tensor, *, middle_pos: torch.Tensor | None = None
) -> TargetOutput:
    """One forward pass over ``input_ids`` (B, S): the first-token outcome and full attentions (B, L, H, S, S).

    ``label_first`` (B,) is the first token of each hole; ``middle_pos`` (B,)
    the ``<fim_middle>`` position (default: the last one).

    Raises:
        ValueError: the model returned no attention patterns.
    """
    attentions, outcome = forward_attentions(target, input_ids, label_first, middle_pos)
    return TargetOutput(**vars(outcome), attentions=torch.stack(attentions, dim=1))


@torch.inference_mode()
def run_batch_triangles(
    target: Target, input_ids: torch.Tensor, label_first: torch.Tensor, *, middle_pos: torch.Tensor | None = None
) -> TriangleOutput:
    """:func:`run_batch` with each head's lower triangle (B, L, H, T) instead of its full pattern.

    The triangles are gathered layer by layer on the model's device, so the
    full (B, L, H, S, S) stack is never built.
    """
    attentions, outcome = forward_attentions(target, input_ids, label_first, middle_pos)
    index = torch.tensor(lower_triangle_index(input_ids.shape[1]), device=attentions[0].device)
    triangles = torch.stack([a.flatten(-2).index_select(-1, index) for a in attentions], dim=1)  # (B, L, H, T)
    return TriangleOutput(**vars(outcome), triangles=triangles)


def forward_attentions(target: Target, input_ids: torch.Tensor, label_first: torch.Tensor,
                       middle_pos: torch.Tensor | None) -> tuple[tuple[torch.Tensor, ...], FirstToken]:
    """The eager forward pass: per-layer attentions (B, H, S, S) and the first-token outcome.

    What :func:`run_batch` and :func:`run_batch_triangles` read, and what the cache stores
    (:func:`apmae.cache.gather.run_batch_stored`). Call it under ``torch.inference_mode``.
    """
    model, device = target.model, target.device
    input_ids = input_ids.to(device=device, dtype=torch.long)
    seq_len = input_ids.shape[1]
    pos = torch.full((len(input_ids),), seq_len - 1, device=device) if middle_pos is None else middle_pos.to(device)
    kwargs: dict[str, Any] = {"output_attentions": True, "use_cache": False}
    all_last = bool((pos == seq_len - 1).all())
    if all_last and accepts_argument(model, "logits_to_keep"):
        kwargs["logits_to_keep"] = 1  # the lm_head over all S positions would cost more than the layers
    out = model(input_ids=input_ids, **kwargs)
    if not out.attentions:
        raise ValueError(
            f"target {target.name!r} returned no attention patterns; load it with "
            "attn_implementation='eager' (fused sdpa/flash kernels do not return them)"
        )
    logits = out.logits[:, -1] if out.logits.shape[1] == 1 else out.logits[torch.arange(len(pos), device=device), pos]
    return tuple(out.attentions), first_token_outcome(logits.float(), label_first.to(device=device, dtype=torch.long))


def first_token_outcome(logits: torch.Tensor, label: torch.Tensor) -> FirstToken:
    """First-token prediction, its probability, correctness and the label's cross-entropy."""
    logp = torch.log_softmax(logits, dim=-1)  # (B, V)
    prediction = logp.argmax(dim=-1)
    return FirstToken(
        prediction=prediction,
        probability=logp.gather(1, prediction[:, None])[:, 0].exp(),
        label=label,
        correct=prediction == label,
        loss=-logp.gather(1, label[:, None])[:, 0],
    )


def validate_heads(target_or_model: Target | torch.nn.Module, heads: Mapping[int, Sequence[int]]) -> dict[int, list[int]]:
    """Check ``{layer: [heads]}`` against the model; returns it with plain ints.

    Raises:
        ValueError: a layer or head index out of range.
    """
    target = target_or_model if isinstance(target_or_model, Target) else wrap_model(target_or_model)
    clean: dict[int, list[int]] = {}
    for layer, hs in heads.items():
        if not 0 <= int(layer) < target.n_layers:
            raise ValueError(f"layer {layer} is out of range: the model has layers 0..{target.n_layers - 1}")
        bad = [h for h in hs if not 0 <= int(h) < target.n_heads]
        if bad:
            raise ValueError(f"heads {bad} of layer {layer} are out of range: the model has heads 0..{target.n_heads - 1}")
        clean[int(layer)] = sorted({int(h) for h in hs})
    return clean


@contextlib.contextmanager
def zero_heads(target_or_model: Target | torch.nn.Module, heads: Mapping[int, Sequence[int]]) -> Iterator[None]:
    """Zero chosen heads' outputs, ``{layer: [heads]}``, inside the ``with`` block.

    A head's output is its slice ``[h*hd:(h+1)*hd]`` of the input to the
    layer's attention output projection; a forward pre-hook multiplies that
    input by a 0/1 mask. Works with grouped-query attention because the
    projection's input has one slice per query head. Hooks are removed on exit,
    also when the block raises.

    Raises:
        ValueError: a layer or head index out of range.
    """
    target = target_or_model if isinstance(target_or_model, Target) else wrap_model(target_or_model)
    clean = validate_heads(target, heads)
    projections = output_projections(target.model)
    handles = []
    try:
        for layer, hs in clean.items():
            if hs:
                handles.append(projections[layer].register_forward_pre_hook(_head_mask_hook(hs, target)))
        yield
    finally:
        for handle in handles:
            handle.remove()


def _head_mask_hook(heads: list[int], target: Target):
    mask = torch.ones(target.n_heads, target.head_dim)
    mask[heads] = 0.0
    flat = mask.flatten()  # (H*hd,) 0 on the zeroed heads' slices

    def hook(module: torch.nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        x = args[0]  # (B, S, H*hd)
        return (x * flat.to(device=x.device, dtype=x.dtype), *args[1:])

    return hook
