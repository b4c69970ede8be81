"""Where a causal LM keeps each attention head's value and output projections.

Glossary: B batch, S tokens, L layers, H query heads, Hkv key/value heads,
r = H / Hkv query heads per key/value head, hd head width, D model width,
V vocabulary.

:data:`ATTENTION_LAYOUTS` is the one registry of where model families keep
their attention modules. Every family names its per-layer output projection
(input: the heads' outputs side by side, (B, S, H*hd)), which is all head
interventions need (:func:`output_projections`). The head metrics also read each
head's values, so :func:`attention_layers` needs a layout with a separate value
projection: ``layers.<i>.self_attn`` with ``v_proj`` (D -> Hkv*hd) and
``o_proj`` (H*hd -> D) linear layers, as in StarCoder2, Llama, Mistral and
Qwen. Grouped-query attention: query head h reads key/value head ``h // r``
(Hugging Face's ``repeat_kv`` serves key/value head k to query heads
k*r .. k*r + r - 1).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable

import torch



@dataclass(frozen=True)
class AttentionLayout:
    """Where one model family keeps each layer's attention module and its projections."""

    families: str  # the model families with this layout, for messages
    module: re.Pattern[str]  # a layer's attention module's name; group 1 is the layer index
    output: str  # attribute of that module: the output projection, input (B, S, H*hd)
    value: str | None = None  # attribute: a separate value projection (D -> Hkv*hd); None when fused with Q, K


ATTENTION_LAYOUTS = (
    AttentionLayout("StarCoder2, Llama, Mistral, Qwen", re.compile(r"(?:^|\.)layers\.(\d+)\.self_attn$"),
                    output="o_proj", value="v_proj"),
    AttentionLayout("GPT-2 (Conv1D)", re.compile(r"(?:^|\.)h\.(\d+)\.attn$"), output="c_proj"),
    AttentionLayout("GPT-J, CodeGen", re.compile(r"(?:^|\.)h\.(\d+)\.attn$"), output="out_proj"),
    AttentionLayout("GPT-NeoX", re.compile(r"(?:^|\.)layers\.(\d+)\.attention$"), output="dense"),
    AttentionLayout("Falcon, Bloom", re.compile(r"(?:^|\.)h\.(\d+)\.self_attention$"), output="dense"),
)


@dataclass
class AttentionModules:
    """A model's attention modules in layer order and the layout they were found by."""

    layout: AttentionLayout
    modules: list[torch.nn.Module]  # modules[i]: layer i's attention module

    def output_projections(self) -> list[torch.nn.Module]:
        """Each layer's output projection, in layer order."""
        return [getattr(m, self.layout.output) for m in self.modules]


def find_attention(model: torch.nn.Module) -> AttentionModules | None:
    """The attention modules of the first layout in :data:`ATTENTION_LAYOUTS` that ``model`` has; None if none.

    Raises:
        ValueError: the layout's modules are found but not for every layer from 0 on.
    """
    for layout in ATTENTION_LAYOUTS:
        found = {}
        for name, module in model.named_modules():
            m = layout.module.search(name)
            if m and isinstance(getattr(module, layout.output, None), torch.nn.Module):
                found[int(m.group(1))] = module
        if found:
            if sorted(found) != list(range(len(found))):
                raise ValueError(f"attention modules of layers {sorted(found)} are not contiguous from 0")
            return AttentionModules(layout, [found[i] for i in range(len(found))])
    return None


def decoder_blocks(model: torch.nn.Module) -> list[torch.nn.Module] | None:
    """Each layer's whole block (the module holding its attention module: ``layers.<i>``, ``h.<i>``), in layer
    order; None when the model has no layout of :data:`ATTENTION_LAYOUTS` or an attention module sits at the top.
    """
    found = find_attention(model)
    if found is None:
        return None
    names = {id(module): name for name, module in model.named_modules()}
    modules = dict(model.named_modules())
    parents = [names[id(m)].rpartition(".")[0] for m in found.modules]
    if "" in parents:
        return None
    return [modules[name] for name in parents]


def output_projections(model: torch.nn.Module) -> list[torch.nn.Module]:
    """Each layer's attention output projection, in layer order (where head interventions act).

    Raises:
        ValueError: no module matches a layout of :data:`ATTENTION_LAYOUTS` (StarCoder2/Llama
            ``self_attn.o_proj``, GPT-2 ``attn.c_proj``, NeoX, Falcon, GPT-J), or layers missing.
    """
    found = find_attention(model)
    if found is None:
        raise ValueError(
            f"{type(model).__name__} has no recognisable per-layer attention output projection "
            "(expected e.g. layers.<i>.self_attn.o_proj or h.<i>.attn.c_proj); head interventions need one")
    return found.output_projections()


@dataclass
class AttentionLayer:
    """One layer's attention projections and head counts."""

    index: int
    v_proj: torch.nn.Linear  # weight (Hkv*hd, D)
    o_proj: torch.nn.Linear  # weight (D, H*hd)
    n_heads: int
    n_kv_heads: int
    head_dim: int

    @property
    def group(self) -> int:
        """Query heads per key/value head."""
        return self.n_heads // self.n_kv_heads

    def kv_head(self, head: int) -> int:
        """The key/value head query head ``head`` reads."""
        return head // self.group

    def value_weight(self) -> torch.Tensor:
        """(Hkv, hd, D): row block k of ``v_proj`` maps the residual to key/value head k's values."""
        return self.v_proj.weight.view(self.n_kv_heads, self.head_dim, -1)

    def output_weight(self) -> torch.Tensor:
        """(H, D, hd): column block h of ``o_proj``, head h's output projection W_O[h]."""
        w = self.o_proj.weight  # (D, H*hd)
        return w.view(w.shape[0], self.n_heads, self.head_dim).permute(1, 0, 2)

    def query_head_values(self, v_out: torch.Tensor) -> torch.Tensor:
        """``v_proj`` output (B, S, Hkv*hd) -> each query head's values (B, H, S, hd)."""
        b, s, _ = v_out.shape
        v = v_out.view(b, s, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, Hkv, S, hd)
        return v.repeat_interleave(self.group, dim=1)  # (B, H, S, hd)


def attention_layers(model: torch.nn.Module) -> list[AttentionLayer]:
    """Every layer's :class:`AttentionLayer`, in layer order.

    Raises:
        ValueError: no ``layers.<i>.self_attn`` module with ``v_proj`` and
            ``o_proj`` linear layers, layers missing, or projections whose
            sizes disagree with the config's head counts.
    """
    found = find_attention(model)
    if found is None or not _linear_value_and_output(found):
        raise ValueError(
            f"{type(model).__name__} has no recognised attention modules: contribution weights and MAPS need "
            "layers.<i>.self_attn with separate v_proj and o_proj linear layers (StarCoder2, Llama, Mistral, "
            "Qwen layouts); models with fused QKV projections are not supported")
    n_heads, n_kv_heads, head_dim = _head_counts(model.config)
    value, output = found.layout.value, found.layout.output
    layers = [AttentionLayer(i, getattr(m, value), getattr(m, output), n_heads, n_kv_heads, head_dim)
              for i, m in enumerate(found.modules)]
    first = layers[0]
    if first.v_proj.out_features != n_kv_heads * head_dim or first.o_proj.in_features != n_heads * head_dim:
        raise ValueError(f"v_proj ({first.v_proj.out_features} outputs) and o_proj ({first.o_proj.in_features} "
                         f"inputs) do not match {n_heads} heads / {n_kv_heads} key/value heads of width {head_dim} "
                         "in the model's config")
    return layers


def _linear_value_and_output(found: AttentionModules) -> bool:
    """Every attention module has a separate value projection and an output projection, both linear."""
    names = (found.layout.value, found.layout.output)
    return None not in names and all(isinstance(getattr(m, name, None), torch.nn.Linear)
                                     for m in found.modules for name in names)


def _head_counts(cfg: Any) -> tuple[int, int, int]:
    n_heads = int(cfg.num_attention_heads)
    n_kv_heads = int(getattr(cfg, "num_key_value_heads", None) or n_heads)
    head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // n_heads)
    if n_heads % n_kv_heads:
        raise ValueError(f"{n_heads} query heads are not a multiple of {n_kv_heads} key/value heads")
    return n_heads, n_kv_heads, head_dim


@dataclass
class VocabularyEnds:
    """The two ends of the residual stream that MAPS projects through."""

    embed: torch.Tensor  # (V, D) input embeddings
    unembed: torch.Tensor  # (V, D) output embeddings (logits = h @ unembed.T)
    final_scale: torch.Tensor  # (D,) elementwise scale of the final norm
    first_mlp: Callable[[torch.Tensor], torch.Tensor] | None  # (n, D) -> (n, D) residual after layer 0's MLP


def vocabulary_ends(model: torch.nn.Module) -> VocabularyEnds:
    """Embeddings, unembedding, the final norm's scale and layer 0's MLP block of ``model``.

    Raises:
        ValueError: no input/output embeddings or no final norm (``model.norm``) with a weight.
    """
    embed, unembed = model.get_input_embeddings(), model.get_output_embeddings()
    if embed is None or unembed is None:
        raise ValueError(f"{type(model).__name__} exposes no input/output embeddings; MAPS needs both")
    norm = getattr(getattr(model, "base_model", model), "norm", None)
    if getattr(norm, "weight", None) is None:
        raise ValueError(f"{type(model).__name__} has no final norm with a weight at model.norm; MAPS scales "
                         "the unembedding by it")
    return VocabularyEnds(embed=embed.weight, unembed=unembed.weight, final_scale=norm.weight,
                          first_mlp=_first_mlp(model))


def _first_mlp(model: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """Layer 0's MLP block as a residual update x + mlp(norm(x)), when the layout has one."""
    layer0 = dict(model.named_modules()).get(_layer0_name(model))
    mlp, norm = getattr(layer0, "mlp", None), getattr(layer0, "post_attention_layernorm", None)
    if mlp is None or norm is None:
        return None
    return lambda x: x + mlp(norm(x))


def _layer0_name(model: torch.nn.Module) -> str:
    for name, _ in model.named_modules():
        if re.search(r"(?:^|\.)layers\.0$", name):
            return name
    return ""
