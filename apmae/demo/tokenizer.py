"""Byte-level BPE tokenizer for the embedded demo, with StarCoder2's special tokens."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from apmae.mining.fim import EOS, FIM_MIDDLE, FIM_PAD, FIM_PREFIX, FIM_SUFFIX

SPECIAL_TOKENS = [EOS, FIM_PREFIX, FIM_MIDDLE, FIM_SUFFIX, FIM_PAD]


def train_tokenizer(texts: Iterable[str], *, vocab_size: int = 4096, min_frequency: int = 2):
    """Train a byte-level BPE tokenizer on ``texts``.

    Returns a ``transformers.PreTrainedTokenizerFast`` whose special tokens are
    single ids: ``<|endoftext|>`` (0, also bos/pad), ``<fim_prefix>``,
    ``<fim_middle>``, ``<fim_suffix>``, ``<fim_pad>``. Decoding an encoding
    gives back the exact text (byte-level, no normalisation, no added space).
    """
    # import cost ~0.6 s (transformers): only the demo build trains a tokenizer
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast  # import cost, as above

    if vocab_size < 256 + len(SPECIAL_TOKENS):
        raise ValueError(f"vocab_size={vocab_size} is below the 256 byte symbols + {len(SPECIAL_TOKENS)} special tokens")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=EOS,
        eos_token=EOS,
        unk_token=EOS,
        pad_token=EOS,
        additional_special_tokens=[FIM_PREFIX, FIM_MIDDLE, FIM_SUFFIX, FIM_PAD],
        clean_up_tokenization_spaces=False,
        model_max_length=1 << 20,
    )


def build_tokenizer(corpus_dir: str | Path, out_dir: str | Path, *, vocab_size: int = 4096):
    """Train on every ``*.java`` file under ``corpus_dir`` and save to ``out_dir``.

    The directory loads with ``AutoTokenizer.from_pretrained(out_dir)``.
    """
    files = sorted(Path(corpus_dir).rglob("*.java"))
    if not files:
        raise ValueError(f"no *.java files under {corpus_dir}; build the demo corpus first")
    tokenizer = train_tokenizer((f.read_text(encoding="utf-8") for f in files), vocab_size=vocab_size)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(out_dir)
    return tokenizer
