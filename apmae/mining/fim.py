"""Fill-in-the-middle (FIM) formatting shared by scenario mining and target training.

PSM order (StarCoder2 convention)::

    <fim_prefix> prefix <fim_suffix> suffix <fim_middle> [middle]

One function builds every FIM sequence in the project and one cuts its
context, so the prompts the demo target is trained on and the prompts it is
evaluated on cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: the classes' modules import torch or transformers
    from transformers import PreTrainedTokenizerBase

FIM_PREFIX = "<fim_prefix>"
FIM_MIDDLE = "<fim_middle>"
FIM_SUFFIX = "<fim_suffix>"
FIM_PAD = "<fim_pad>"
EOS = "<|endoftext|>"


@dataclass(frozen=True)
class FimTokens:
    """Ids of the FIM special tokens of one tokenizer."""

    prefix: int
    middle: int
    suffix: int
    pad: int | None = None  # <fim_pad>, optional
    eos: int | None = None  # end of text, optional

    @classmethod
    def from_tokenizer(cls, tokenizer: PreTrainedTokenizerBase) -> "FimTokens":
        """Read the FIM token ids of a Hugging Face tokenizer.

        Raises:
            ValueError: the tokenizer has no single-id ``<fim_prefix>``,
                ``<fim_middle>`` or ``<fim_suffix>`` token.
        """
        vocab = tokenizer.get_vocab()
        missing = [t for t in (FIM_PREFIX, FIM_MIDDLE, FIM_SUFFIX) if t not in vocab]
        if missing:
            name = getattr(tokenizer, "name_or_path", type(tokenizer).__name__)
            raise ValueError(
                f"tokenizer {name!r} has no FIM special tokens {missing}; FIM scenarios need a "
                "tokenizer trained with <fim_prefix>/<fim_suffix>/<fim_middle> (e.g. StarCoder2's "
                "or the embedded demo tokenizer)"
            )
        return cls(
            prefix=vocab[FIM_PREFIX],
            middle=vocab[FIM_MIDDLE],
            suffix=vocab[FIM_SUFFIX],
            pad=vocab.get(FIM_PAD),
            eos=vocab.get(EOS),
        )


def fim_sequence(
    prefix_ids: Sequence[int],
    suffix_ids: Sequence[int],
    fim: FimTokens,
    middle_ids: Sequence[int] = (),
) -> list[int]:
    """Token ids of ``<fim_prefix> prefix <fim_suffix> suffix <fim_middle> middle`` (PSM).

    With empty ``middle_ids`` this is the prompt whose last position predicts
    the first token of the hole; with the hole's tokens it is a training example.
    """
    return [fim.prefix, *prefix_ids, fim.suffix, *suffix_ids, fim.middle, *middle_ids]


def balanced_context(n_prefix: int, n_suffix: int, budget: int) -> tuple[int, int]:
    """Context tokens kept left and right of a hole: half the budget each, a short side whole.

    ``budget`` tokens are split evenly (the suffix gets the odd one); when one
    side has fewer tokens than its half, all of it is kept and the other side
    takes the rest of the budget, as far as it reaches. Scenario mining and the
    demo target's FIM rows cut their context with this one function.
    """
    left = min(n_prefix, max(budget // 2, budget - n_suffix))
    right = min(n_suffix, budget - left)
    return left, right
