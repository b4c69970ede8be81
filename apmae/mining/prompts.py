"""Prompt formats of completion scenarios: fill-in-the-middle, or left context only.

Glossary: S prompt tokens (``seq_len``), Cp prefix tokens kept, Cs suffix tokens kept.

- ``fim`` (StarCoder2 and other FIM-trained models)::

      <fim_prefix> prefix[-Cp:] <fim_suffix> suffix[:Cs] <fim_middle>      Cp + Cs = S - 3

- ``causal`` (any causal LM: Llama, Gemma, Qwen, SmolLM, GPT-2 ...)::

      [BOS] prefix[-(S - b):]                                               b = 1 with a BOS, else 0

  the last S tokens of left context, ending right before the hole. A model whose
  tokenizer adds a BOS token (Llama, Gemma) was trained with it at position 0, so it
  gets it exactly once, and the prompt stays exactly S tokens long.

In both, the hole's tokens are the label and the prediction at the last prompt
position (``middle_pos = S - 1``) is scored. ``auto`` picks ``fim`` when the
tokenizer has the FIM tokens, else ``causal``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, TYPE_CHECKING

from apmae.mining.fim import FIM_MIDDLE, FIM_PREFIX, FIM_SUFFIX, FimTokens

if TYPE_CHECKING:  # annotations only: the classes' modules import torch or transformers
    from transformers import PreTrainedTokenizerBase

PROMPT_FORMATS = ("fim", "causal", "auto")
FIM_OVERHEAD = 3  # <fim_prefix>, <fim_suffix>, <fim_middle>


def has_fim_tokens(tokenizer: PreTrainedTokenizerBase) -> bool:
    """True when the tokenizer has single-id ``<fim_prefix>``, ``<fim_suffix>`` and ``<fim_middle>``."""
    vocab = tokenizer.get_vocab()
    return all(t in vocab for t in (FIM_PREFIX, FIM_SUFFIX, FIM_MIDDLE))


def bos_id(tokenizer: PreTrainedTokenizerBase) -> int | None:
    """The BOS id the tokenizer puts in front of every text, or None when it adds none.

    Read from what the tokenizer does, not from its config: Llama and Gemma tokenizers add
    their ``bos_token``; GPT-2 and StarCoder2 tokenizers have one but do not add it.
    """
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return None
    ids = tokenizer("x", add_special_tokens=True)["input_ids"]
    return int(bos) if len(ids) > 0 and ids[0] == bos else None


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    """What decides a tokenizer's ids, hashed: vocabulary, merges, pre-tokenizer, special tokens, BOS handling.

    Two loads of one tokenizer, or copies saved beside different models, agree; truncation and
    padding settings, which change no id, are left out.
    """
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    for key in ("truncation", "padding"):
        spec.pop(key, None)
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class PromptFormat:
    """How prompts are built for one tokenizer: the resolved format and its special ids."""

    name: str  # "fim" or "causal" (never "auto")
    fim: FimTokens | None = None  # the FIM ids (fim only)
    bos: int | None = None  # BOS put first (causal only, when the tokenizer adds one)

    @property
    def overhead(self) -> int:
        """Prompt tokens that are not context."""
        return FIM_OVERHEAD if self.name == "fim" else int(self.bos is not None)

    def describe(self) -> dict[str, Any]:
        """What a scenario set's metadata records of the format."""
        if self.name == "fim":
            return {"prompt_format": "fim",
                    "fim": {"prefix": self.fim.prefix, "suffix": self.fim.suffix, "middle": self.fim.middle}}
        return {"prompt_format": "causal", "bos": self.bos}


def resolve_prompt_format(prompt_format: str, tokenizer: PreTrainedTokenizerBase) -> PromptFormat:
    """The format for ``tokenizer``: ``auto`` becomes ``fim`` or ``causal``.

    Raises:
        ValueError: an unknown format, or ``fim`` with a tokenizer that has no FIM tokens.
    """
    if prompt_format not in PROMPT_FORMATS:
        raise ValueError(f"prompt_format={prompt_format!r}; use one of {PROMPT_FORMATS}")
    if prompt_format == "auto":
        prompt_format = "fim" if has_fim_tokens(tokenizer) else "causal"
    if prompt_format == "fim":
        if not has_fim_tokens(tokenizer):
            name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
            raise ValueError(f"tokenizer {name!r} has no FIM special tokens (<fim_prefix>, <fim_suffix>, "
                             "<fim_middle>), which prompt_format: fim needs; use prompt_format: causal (left "
                             "context only) or auto (fim when the tokenizer has the FIM tokens, else causal)")
        return PromptFormat("fim", fim=FimTokens.from_tokenizer(tokenizer))
    return PromptFormat("causal", bos=bos_id(tokenizer))
