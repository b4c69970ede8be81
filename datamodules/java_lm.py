"""Language-model batches (FIM and left-to-right) from a directory of Java files.

Glossary: B batch, S ``seq_len`` (tokens per training row), C FIM prompt
tokens (``context_len``, prefix + suffix + the three FIM tokens).

A FIM row is ``<fim_prefix> prefix <fim_suffix> suffix <fim_middle> middle
<|endoftext|>`` built by :func:`apmae.mining.fim.fim_sequence`, the function the
scenario miner uses, with the same context cut, :func:`apmae.mining.fim.balanced_context`:
up to C tokens balanced around the hole, the shorter side kept whole. Holes start and end on lexeme
boundaries (identifiers, literals, operators, brackets, ``;\\n``) or on token
boundaries, which covers the spans scenario tasks cut. Every other row is a
plain window of a file (left-to-right LM). Row ``i`` is a pure function of
``(seed, i)``, so runs repeat exactly and workers need no coordination.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from pathlib import Path
from functools import partial

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Dataset

from apmae.mining.fim import FimTokens, balanced_context, fim_sequence
from apmae.mining.miner import FileMiner, FileSettings
from apmae.mining.offsets import byte_to_char
from apmae.mining.tasks import get_tasks

# one lexeme: a word, a number, a string or char literal, an operator, or one other symbol
LEXEME = re.compile(
    r"[A-Za-z_]\w*|\d[\w.]*|\"[^\"\n]*\"|'[^'\n]*'"
    r"|>>>=|<<=|>>=|&&|\|\||\+\+|--|[-+*/%&|^!=<>]=|\S"
)
IGNORE = -100  # label of padding; cross entropy skips it


@dataclass(frozen=True)
class Document:
    """One source file, tokenized once."""

    text: str
    ids: list[int]
    offsets: list[tuple[int, int]]  # character span of each token
    task_spans: tuple[tuple[tuple[int, int], ...], ...] = ()  # character spans per scenario task with any


@dataclass(frozen=True)
class FimExample:
    """A FIM row and where its hole is."""

    ids: list[int]  # <fim_prefix> ... <fim_middle> middle <eos>
    middle_pos: int  # index of <fim_middle> in ids
    suffix_pos: int  # index of <fim_suffix> in ids (right after the prefix)
    middle_ids: list[int]


class FimSampler:
    """Builds FIM and left-to-right rows from tokenized documents."""

    def __init__(self, tokenizer, *, seq_len: int, context_len: int, token_span_rate: float = 0.3,
                 task_span_rate: float = 0.0, max_middle_tokens: int = 24) -> None:
        if context_len < 8 or context_len >= seq_len:
            raise ValueError(f"context_len={context_len} must be in [8, seq_len={seq_len}) so the hole fits")
        for name, rate in (("token_span_rate", token_span_rate), ("task_span_rate", task_span_rate)):
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"{name}={rate} must be a probability in [0, 1]")
        self.tokenizer = tokenizer
        self.fim = FimTokens.from_tokenizer(tokenizer)
        if self.fim.eos is None:
            raise ValueError("the tokenizer has no <|endoftext|> token; build it with apmae.demo.tokenizer")
        self.seq_len = seq_len
        self.context_len = context_len
        self.token_span_rate = token_span_rate
        self.task_span_rate = task_span_rate
        self.max_middle_tokens = max_middle_tokens
        self._miner = None  # built on first use (tree-sitter objects do not pickle to workers)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def document(self, text: str) -> Document:
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        spans = self.task_spans(text) if self.task_span_rate > 0 else ()
        return Document(text, list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]], spans)

    def task_spans(self, text: str) -> tuple[tuple[tuple[int, int], ...], ...]:
        """Character spans of every scenario task's candidate holes in ``text`` (tasks without any left out).

        The scenario miner's own tree-sitter queries find them, so these holes
        are the syntactic units the scenarios cut (AST-aware FIM); a file that
        does not parse simply contributes fewer spans.
        """
        if self._miner is None:
            tasks = [t for t in get_tasks() if t.needs_source]
            self._miner = FileMiner(FileSettings(fim=self.fim), tasks, self.tokenizer.backend_tokenizer.to_str())
        to_char = byte_to_char(text.encode("utf-8"), text)
        found = self._miner.text_candidates(text, source_id="lm")
        return tuple(tuple((to_char(s), to_char(e)) for s, e in spans if e > s)
                     for spans in found.values() if spans)

    def span(self, doc: Document, rng: random.Random) -> tuple[int, int]:
        """Character span of a hole.

        With probability ``task_span_rate`` a candidate hole of a scenario task
        (a task drawn uniformly among those the file has, then one of its
        holes); otherwise 1-10 tokens starting a word, or 1-8 whole lexemes,
        where a lone string literal loses its quotes most of the time
        (string-literal scenarios hide the content). No hole starts with whitespace.
        """
        if doc.task_spans and rng.random() < self.task_span_rate:
            return rng.choice(rng.choice(doc.task_spans))
        if rng.random() < self.token_span_rate:
            for _ in range(20):
                first = rng.randrange(len(doc.ids))
                if not doc.text[doc.offsets[first][0]].isspace():
                    last = min(len(doc.ids), first + rng.randint(1, 10)) - 1
                    return doc.offsets[first][0], doc.offsets[last][1]
        lexemes = [m.span() for m in LEXEME.finditer(doc.text)]
        first = rng.randrange(len(lexemes))
        if rng.random() < 0.6:
            start, end = lexemes[first]
            if doc.text[start] in "\"'" and end - start > 2 and rng.random() < 0.7:
                return start + 1, end - 1
            return start, end
        return lexemes[first][0], lexemes[min(len(lexemes), first + rng.randint(2, 8)) - 1][1]

    def fim_example(self, doc: Document, rng: random.Random, shrink: int = 0) -> FimExample:
        """A FIM row with ``context_len - shrink`` context tokens (at most ``seq_len - shrink`` in all)."""
        start, end = self.span(doc, rng)
        context_len, seq_len = self.context_len - shrink, self.seq_len - shrink
        # tokenize a generous window only: tokens far from the hole are cut anyway
        window = 8 * context_len
        prefix = self.encode(doc.text[max(0, start - window):start])
        suffix = self.encode(doc.text[end:end + window])
        middle = self.encode(doc.text[start:end])[: self.max_middle_tokens]
        n_left, n_right = balanced_context(len(prefix), len(suffix), context_len - 3)
        ids = fim_sequence(prefix[len(prefix) - n_left:], suffix[:n_right], self.fim, [*middle, self.fim.eos])
        return FimExample(ids=ids[:seq_len], middle_pos=n_left + n_right + 2, suffix_pos=n_left + 1,
                          middle_ids=middle)

    def plain_example(self, doc: Document, rng: random.Random, shrink: int = 0) -> list[int]:
        """A window of ``seq_len - shrink`` tokens of the file (ending with end of text at the file's end)."""
        ids, seq_len = doc.ids + [self.fim.eos], self.seq_len - shrink
        start = rng.randrange(max(1, len(ids) - seq_len + 1))
        return ids[start:start + seq_len]


class JavaLMDataset(Dataset):
    """``length`` rows; row ``i`` is FIM with probability ``fim_rate``, else a file window.

    With ``min_context_len``, each run of ``batch_size`` consecutive rows (one
    batch: the loader does not shuffle, rows are random already) shares a
    context length drawn in ``[min_context_len, context_len]``: short rows are
    cheap FIM practice, and a batch never pads one length up to another.
    Files are tokenized on first use (a run touches only the files it samples).
    """

    def __init__(self, texts: list[str], sampler: FimSampler, *, length: int, fim_rate: float, seed: int,
                 min_context_len: int | None = None, batch_size: int = 1, context_ramp_rows: int = 0) -> None:
        if not texts:
            raise ValueError("no documents: the corpus directory holds no *.java files")
        self.texts, self.sampler = texts, sampler
        self.length, self.fim_rate, self.seed = length, fim_rate, seed
        self.min_context_len, self.batch_size = min_context_len, batch_size
        self.context_ramp_rows = context_ramp_rows
        self._docs: dict[int, Document] = {}

    def __len__(self) -> int:
        return self.length

    def document(self, k: int) -> Document:
        if k not in self._docs:
            self._docs[k] = self.sampler.document(self.texts[k])
        return self._docs[k]

    def shrink(self, i: int) -> int:
        """Context tokens row ``i`` gives up (the same for every row of its batch).

        With ``context_ramp_rows`` the longest context drawn grows linearly from
        ``min_context_len`` (row 0) to ``context_len`` (that row on): the hole's
        first token must be read from the end of the prefix, and that attention
        is found far sooner when the prefix end is a few tokens away.
        """
        if self.min_context_len is None:
            return 0
        batch_rng = random.Random(self.seed * 7_000_003 + i // self.batch_size)
        full, low = self.sampler.context_len, self.min_context_len
        high = full if not self.context_ramp_rows else low + round((full - low) * min(1.0, i / self.context_ramp_rows))
        return full - batch_rng.randint(low, high)

    def __getitem__(self, i: int) -> tuple[list[int], int, int]:
        """Token ids of row ``i``, positions of its ``<fim_middle>`` and ``<fim_suffix>`` (-1, -1 for a plain row)."""
        rng = random.Random(self.seed * 1_000_003 + i)
        doc = self.document(rng.randrange(len(self.texts)))
        if rng.random() < self.fim_rate:
            example = self.sampler.fim_example(doc, rng, self.shrink(i))
            return example.ids, example.middle_pos, example.suffix_pos
        return self.sampler.plain_example(doc, rng, self.shrink(i)), -1, -1


def collate_rows(rows: list[tuple[list[int], int, int]], *, pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad rows into ``input_ids``/``attention_mask``/``labels`` (B, S_max), ``middle_pos`` and
    ``suffix_pos`` (B,).

    Padding is never learned (label -100).
    """
    width = max(len(row[0]) for row in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for b, (ids, *_) in enumerate(rows):
        input_ids[b, : len(ids)] = torch.tensor(ids)
        mask[b, : len(ids)] = 1
    labels = input_ids.masked_fill(mask == 0, IGNORE)
    middle_pos = torch.tensor([row[1] for row in rows], dtype=torch.long)
    suffix_pos = torch.tensor([row[2] for row in rows], dtype=torch.long)
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels, "middle_pos": middle_pos,
            "suffix_pos": suffix_pos}


class JavaLMDataModule(pl.LightningDataModule):
    """FIM / left-to-right LM batches from ``*.java`` files under ``corpus_dir``.

    The last ``val_fraction`` of the files (sorted by path) are held out for
    validation, where every row is FIM so ``val/first_token_acc`` measures the
    scenario criterion.
    """

    def __init__(
        self,
        *,
        corpus_dir: str,
        tokenizer_dir: str,
        seq_len: int = 320,
        context_len: int = 256,
        min_context_len: int | None = None,
        context_ramp_rows: int = 0,
        fim_rate: float = 0.7,
        token_span_rate: float = 0.3,
        task_span_rate: float = 0.0,
        train_samples: int = 16384,
        val_samples: int = 256,
        val_fraction: float = 0.05,
        batch_size: int = 16,
        num_workers: int = 0,
        max_files: int | None = None,
        seed: int = 0,
    ) -> None:
        """
        Args:
            corpus_dir: directory searched recursively for ``*.java`` files.
            tokenizer_dir: Hugging Face tokenizer directory with the FIM special tokens.
            seq_len: tokens per training row (FIM rows: context + hole + end of text).
            context_len: tokens of a FIM prompt (prefix + suffix + 3 FIM tokens), as the scenarios use.
            min_context_len: when set, each training batch draws its context length in
                ``[min_context_len, context_len]`` (rows shrink by as much); validation keeps ``context_len``.
            context_ramp_rows: with ``min_context_len``, a curriculum: the longest context drawn grows
                linearly from ``min_context_len`` to ``context_len`` over this many training rows (0: no ramp).
            fim_rate: fraction of training rows in FIM format; the rest are plain file windows.
            token_span_rate: fraction of the other holes cut on token rather than lexeme boundaries.
            task_span_rate: fraction of FIM holes cut where the scenario tasks cut (a candidate hole of
                a task drawn uniformly: identifiers, literals, calls, brackets, operators, ...);
                0 keeps random lexeme/token spans only.
            train_samples: rows per training epoch.
            val_samples: FIM rows of the validation set.
            val_fraction: fraction of files held out for validation.
            batch_size: rows per batch.
            num_workers: DataLoader worker processes.
            max_files: use only the first files (sorted by path); None uses all.
            seed: seed of the row sampling.
        """
        super().__init__()
        if not 0.0 <= fim_rate <= 1.0:
            raise ValueError(f"fim_rate={fim_rate} must be a probability in [0, 1]")
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"val_fraction={val_fraction} must be in (0, 1) so both splits have files")
        if context_len >= seq_len:
            raise ValueError(f"context_len={context_len} leaves no room for the hole in seq_len={seq_len}; "
                             "raise seq_len")
        if min_context_len is not None and not 8 <= min_context_len <= context_len:
            raise ValueError(f"min_context_len={min_context_len} must be in [8, context_len={context_len}]")
        if context_ramp_rows < 0:
            raise ValueError(f"context_ramp_rows={context_ramp_rows} must be >= 0 (0: no ramp)")
        self.save_hyperparameters()
        self.corpus_dir, self.tokenizer_dir = corpus_dir, tokenizer_dir
        self.seq_len, self.context_len = seq_len, context_len
        self.batch_size, self.num_workers = batch_size, num_workers
        self.train_set: JavaLMDataset | None = None
        self.val_set: JavaLMDataset | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        from transformers import AutoTokenizer  # import cost ~1 s: only when a tokenizer is named

        hp = self.hparams
        files = sorted(Path(self.corpus_dir).rglob("*.java"))[: hp.max_files]
        if len(files) < 2:
            raise ValueError(f"{self.corpus_dir} holds {len(files)} *.java files; build the demo corpus first")
        tokenizer = AutoTokenizer.from_pretrained(self.tokenizer_dir)
        sampler = FimSampler(tokenizer, seq_len=self.seq_len, context_len=self.context_len,
                             token_span_rate=hp.token_span_rate, task_span_rate=hp.task_span_rate)
        self.pad_id = sampler.fim.pad if sampler.fim.pad is not None else sampler.fim.eos
        texts = [f.read_text(encoding="utf-8") for f in files]
        n_val = max(1, round(len(texts) * hp.val_fraction))
        self.train_set = JavaLMDataset(texts[:-n_val], sampler, length=hp.train_samples, fim_rate=hp.fim_rate,
                                       seed=hp.seed, min_context_len=hp.min_context_len, batch_size=self.batch_size,
                                       context_ramp_rows=hp.context_ramp_rows)
        self.val_set = JavaLMDataset(texts[-n_val:], sampler, length=hp.val_samples, fim_rate=1.0,
                                     seed=hp.seed + 1)

    def _loader(self, dataset: Dataset, shuffle: bool) -> DataLoader:
        return DataLoader(dataset, batch_size=self.batch_size, shuffle=shuffle, num_workers=self.num_workers,
                          collate_fn=partial(collate_rows, pad_id=self.pad_id))

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=False)  # rows are random functions of their index

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False)
