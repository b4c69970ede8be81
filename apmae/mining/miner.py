"""Mining completion scenarios from Java sources, as FIM or left-context (causal) prompts.

Glossary: S prompt tokens (``seq_len``), Cp / Cs prefix / suffix tokens kept
around the hole (FIM: Cp + Cs = S - 3, split by :func:`apmae.mining.fim.balanced_context`;
causal: Cp = S, or S - 1 after a BOS; see :mod:`apmae.mining.prompts`).

For each file: tokenize once, parse once, run every task's query in one pass,
draw at most ``max_per_file`` candidate spans per task with an RNG seeded from
(seed, source id, task), and assemble each into exactly ``S`` tokens::

    <fim_prefix> prefix[-Cp:] <fim_suffix> suffix[:Cs] <fim_middle>     label = hole tokens
    [BOS] prefix[-Cp:]                                                  (prompt_format causal)

Prefix, hole and suffix are tokenized separately (as a FIM user would), so
decoding prefix + label + suffix gives back the file's text around the hole.
Every file's result depends only on the file and the settings, so mining is
identical for any number of worker processes. Scenarios then compete per task
by a hash key (bottom-k sampling); splits are by a hash of the source id.
"""

from __future__ import annotations

import bisect
import hashlib
import heapq
import logging
import multiprocessing
import random
import time
from collections import Counter, deque
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
from tokenizers import Tokenizer
from tqdm import tqdm
from tree_sitter import Parser, QueryCursor

from apmae.mining.fim import FimTokens, balanced_context, fim_sequence
from apmae.mining.offsets import byte_to_char, code_points, is_whitespace
from apmae.mining.prompts import PromptFormat, resolve_prompt_format, tokenizer_fingerprint
from apmae.mining.scenario_set import SPLITS, ScenarioSet
from apmae.mining.settings import DEFAULTS, MiningConfig, moved_to_mining
from apmae.mining.sources import JavaSources, Source, SourceError, SourceFile
from apmae.mining.tasks import NON_CODE_QUERY, FileContext, Span, Task, compile_query, get_tasks, java_language

log = logging.getLogger(__name__)

FILE_SKIPS = ("too_short",)  # file-level reasons added by mining (sources count the others)
TINY_SPLIT = 10  # a split with a positive fraction but fewer rows is warned about at mining time
SCENARIO_SKIPS = ("label_length", "short_context")


@dataclass(frozen=True)
class FileSettings:
    """Per-file mining settings, resolved against the tokenizer (sent to worker processes).

    The user's settings are :class:`apmae.mining.settings.MiningConfig`; the defaults here are its own.
    """

    seq_len: int = DEFAULTS.seq_len  # prompt tokens S
    max_per_file: int = DEFAULTS.max_per_file  # scenarios per task per file, at most
    max_label_tokens: int = DEFAULTS.max_label_tokens  # longer holes are rejected (label_length)
    seed: int = DEFAULTS.seed
    pad: bool = DEFAULTS.pad  # left-pad short contexts with <fim_pad> instead of skipping them
    pad_id: int | None = None
    fim: FimTokens | None = None  # the FIM ids (prompt_format fim)
    prompt_format: str = DEFAULTS.prompt_format  # "fim" or "causal" (resolved, see apmae.mining.prompts)
    bos: int | None = None  # causal: the BOS id put first, when the tokenizer adds one

    @property
    def prompt(self) -> PromptFormat:
        """The resolved prompt format these fields describe."""
        return PromptFormat(self.prompt_format, fim=self.fim, bos=self.bos)

    @property
    def overhead(self) -> int:
        """Prompt tokens that are not context: three FIM tokens, or the causal BOS."""
        return self.prompt.overhead


@dataclass
class Mined:
    """One assembled scenario before sampling."""

    task: int
    span_start: int  # bytes
    span_end: int
    input_ids: np.ndarray  # (S,) int32
    label_ids: np.ndarray  # (T_i,) int32


@dataclass
class FileResult:
    """What one file produced (returned by workers in corpus order)."""

    source_id: str
    n_tasks: int
    skip: str | None = None  # file-level skip reason
    candidates: list[int] = field(default_factory=list)  # per task
    rejected: list[Counter] = field(default_factory=list)  # per task: scenario skip reason -> count
    scenarios: list[Mined] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.candidates = self.candidates or [0] * self.n_tasks
        self.rejected = self.rejected or [Counter() for _ in range(self.n_tasks)]


@dataclass
class TaskReport:
    """Per-task counts of one mining run."""

    name: str
    files_scanned: int = 0  # files parsed for this task
    files_with_candidates: int = 0
    candidates: int = 0  # spans found
    assembled: int = 0  # scenarios built (after the per-file cap)
    kept: int = 0  # scenarios in the final set
    rejected: Counter = field(default_factory=Counter)  # scenario skip reason -> count
    quota: int = 0


@dataclass
class MiningReport:
    """Summary of a mining run: per-task counts and file skips by reason."""

    tasks: list[TaskReport]
    files_seen: int = 0
    files_mined: int = 0
    skipped: Counter = field(default_factory=Counter)  # file skip reason -> count
    stopped_early: bool = False  # every quota was filled before the corpus ended
    seconds: float = 0.0
    num_workers: int = 0
    split_rows: dict[str, int] = field(default_factory=dict)  # split name -> scenarios
    split_files: dict[str, int] = field(default_factory=dict)  # split name -> source files with scenarios

    def summary(self) -> str:
        """A plain-text table for logs and terminals."""
        rate = self.files_mined / self.seconds if self.seconds else 0.0
        lines = [f"mined {self.files_mined}/{self.files_seen} files in {self.seconds:.1f} s "
                 f"({rate:.1f} files/s, {self.num_workers} workers)"
                 + (", stopped once every quota was filled" if self.stopped_early else ""),
                 "skipped files: " + (", ".join(f"{k}={v}" for k, v in sorted(self.skipped.items())) or "none"),
                 "splits (by source file): " + (", ".join(f"{k}={v} scenarios from {self.split_files.get(k, 0)} files"
                                                          for k, v in self.split_rows.items()) or "none"),
                 f"{'task':<24}{'files':>8}{'w/cand':>8}{'cands':>9}{'built':>8}{'kept':>7}{'quota':>7}  rejected"]
        for t in self.tasks:
            rej = ", ".join(f"{k}={v}" for k, v in sorted(t.rejected.items()))
            lines.append(f"{t.name:<24}{t.files_scanned:>8}{t.files_with_candidates:>8}{t.candidates:>9}"
                         f"{t.assembled:>8}{t.kept:>7}{t.quota:>7}  {rej}")
        return "\n".join(lines)


@dataclass
class MiningResult:
    scenarios: ScenarioSet
    report: MiningReport


# --- per file -----------------------------------------------------------------------------


class FileMiner:
    """Mines one file at a time: the unit of work of a worker process."""

    def __init__(self, config: FileSettings, tasks: Sequence[Task], tokenizer_json: str) -> None:
        self.config = config
        self.tasks = tuple(tasks)
        self.tokenizer = Tokenizer.from_str(tokenizer_json)
        self.tokenizer.no_truncation()  # a saved tokenizer may carry truncation/padding settings
        self.tokenizer.no_padding()
        # Without special tokens a post-processor changes no ids, but ByteLevel(trim_offsets=True)
        # (StarCoder-style tokenizers) would shift offsets off the real token starts.
        self.tokenizer.post_processor = None
        self.parser = Parser(java_language())
        self.query, self.pattern_task = _combined_query(self.tasks)

    def mine(self, file: SourceFile) -> FileResult:
        cfg = self.config
        result = FileResult(file.source_id, len(self.tasks))
        enc = self.tokenizer.encode(file.text, add_special_tokens=False)
        if len(enc.ids) < cfg.seq_len - cfg.overhead and not cfg.pad:
            result.skip = "too_short"
            return result
        chosen: list[tuple[int, Span]] = []
        for ti, cands in self.candidates(file, enc).items():
            rng = random.Random(_stable_int(cfg.seed, file.source_id, self.tasks[ti].name, "pick"))
            result.candidates[ti] = len(cands)
            picked = rng.sample(cands, min(cfg.max_per_file, len(cands)))
            chosen.extend((ti, span) for span in sorted(picked))
        self.assemble(file, enc, chosen, result)
        return result

    def candidates(self, file: SourceFile, enc: Any) -> dict[int, list[Span]]:
        """Sorted, distinct candidate byte spans per task index (tasks with a source only)."""
        tree = self.parser.parse(file.data)
        spans = self._query_spans(tree, file.data)
        out = {}
        for ti, task in enumerate(self.tasks):
            if not task.needs_source:
                continue
            if task.fn is not None:
                rng = random.Random(_stable_int(self.config.seed, file.source_id, task.name))
                ctx = FileContext(file.source_id, file.data, file.text, tree, enc.offsets, rng)
                spans[ti] = [(int(s), int(e)) for s, e in task.fn(ctx)]
            out[ti] = sorted(set(spans.get(ti, ())))
        return out

    def text_candidates(self, text: str, source_id: str = "text") -> dict[str, list[Span]]:
        """:meth:`candidates` of one Java text, by task name (byte spans; ``source_id`` seeds the random task)."""
        file = SourceFile(source_id, text.encode("utf-8"), text)
        found = self.candidates(file, self.tokenizer.encode(text, add_special_tokens=False))
        return {self.tasks[ti].name: spans for ti, spans in found.items()}

    def _query_spans(self, tree: Any, data: bytes) -> dict[int, list[Span]]:
        """Candidate byte spans per task index from one pass of the combined query."""
        spans: dict[int, list[Span]] = {}
        non_code: list[Span] = []
        for pattern, captures in QueryCursor(self.query).matches(tree.root_node):
            ti = self.pattern_task[pattern]
            for name, nodes in captures.items():
                if ti < 0:
                    non_code.extend((n.start_byte, n.end_byte) for n in nodes)
                elif not name.startswith("_"):
                    spans.setdefault(ti, []).extend((n.start_byte, n.end_byte) for n in nodes)
        for ti, found in spans.items():
            task = self.tasks[ti]
            if task.code_only:
                found = _outside(found, non_code)
            spans[ti] = task.refine(data, found) if task.refine else found
        return spans

    def assemble(self, file: SourceFile, enc: Any, chosen: list[tuple[int, Span]], result: FileResult) -> None:
        """Prompts for the ``chosen`` (task index, byte span) holes of ``file`` (``enc``: its encoding) into
        ``result``: built ones as scenarios, the others counted by reason."""
        if not chosen:
            return
        to_char = byte_to_char(file.data, file.text)
        char_spans = [(to_char(s), to_char(e)) for _, (s, e) in chosen]
        splice = _Splicer(file.text, enc)
        texts = []
        for cs, ce in char_spans:
            texts += [file.text[cs:ce], *splice.pieces(cs, ce)]
        encs = self.tokenizer.encode_batch(texts, add_special_tokens=False)  # 3 short texts per hole
        for k, ((ti, (bs, be)), (cs, ce)) in enumerate(zip(chosen, char_spans)):
            label, tail, head = encs[3 * k: 3 * k + 3]
            built = self._assemble(self.tasks[ti], label.ids, *splice.sides(cs, ce, tail, head))
            if isinstance(built, str):
                result.rejected[ti][built] += 1
            else:
                result.scenarios.append(Mined(ti, bs, be, built, np.asarray(label.ids, dtype=np.int32)))

    def _assemble(self, task: Task, label: list[int], left: "_Side", right: "_Side") -> np.ndarray | str:
        """The (S,) prompt for one hole, or the reason it was rejected."""
        cfg = self.config
        lo, hi = task.label_tokens or (1, cfg.max_label_tokens)
        if not lo <= len(label) <= hi:
            return "label_length"
        budget = cfg.seq_len - cfg.overhead  # the hole is not in the prompt: S = overhead + context
        if cfg.prompt_format == "causal":
            n_left, n_right = _left_only(budget, left), 0
        else:
            n_left, n_right = _balance(budget, left, right)
        pad = budget - n_left - n_right
        if pad and not cfg.pad:
            return "short_context"
        left_ids = left.ids[len(left.ids) - n_left:] if n_left else []
        if cfg.prompt_format == "causal":
            prompt = [cfg.pad_id] * pad + ([cfg.bos] if cfg.bos is not None else []) + left_ids
        else:
            prompt = [cfg.pad_id] * pad + fim_sequence(left_ids, right.ids[:n_right], cfg.fim)
        return np.asarray(prompt, dtype=np.int32)


class _Splicer:
    """Prefix / suffix tokens of a hole from the file's own tokens plus one short re-tokenized piece.

    Tokenizing ``text[:cs]`` and ``text[ce:]`` for every hole would cost a whole-file
    encode each. Instead: at a *safe* position p (a token starts at p, ``text[p]`` is
    whitespace, ``text[p-1]`` is not), no pre-token of a byte-level BPE (GPT-2 /
    StarCoder regex, no look-behind) can straddle p, in the file or in any slice
    containing p's neighbourhood. So ``encode(text[:cs]) == ids[:k(a)] + encode(text[a:cs])``
    for the last safe a <= cs, and ``encode(text[ce:]) == encode(text[ce:b]) + ids[k(b):]``
    for the first safe b >= ce (checked against direct encoding in the tests).
    """

    def __init__(self, text: str, enc: Any) -> None:
        self.text, self.ids, self.offsets = text, enc.ids, enc.offsets
        off = np.asarray(self.offsets, dtype=np.int64).reshape(-1, 2)  # (n, 2) char offsets
        blank = is_whitespace(code_points(text))
        blank = np.append(blank, False)  # a sentinel so that p == len(text) indexes safely
        p = off[1:, 0]
        safe = (off[:-1, 1] <= p) & (p < len(text)) & blank[p] & ~blank[p - 1]
        self.safe_tok: list[int] = (np.flatnonzero(safe) + 1).tolist()  # token index k starting at p
        self.safe_pos: list[int] = p[safe].tolist()

    def _left_cut(self, cs: int) -> tuple[int, int]:
        i = bisect.bisect_right(self.safe_pos, cs) - 1
        return (self.safe_pos[i], self.safe_tok[i]) if i >= 0 else (0, 0)

    def _right_cut(self, ce: int) -> tuple[int, int]:
        j = bisect.bisect_left(self.safe_pos, ce)
        return (self.safe_pos[j], self.safe_tok[j]) if j < len(self.safe_pos) else (len(self.text), len(self.ids))

    def pieces(self, cs: int, ce: int) -> tuple[str, str]:
        """The texts to tokenize for one hole: from the left cut to the hole, from the hole to the right cut."""
        return self.text[self._left_cut(cs)[0]:cs], self.text[ce:self._right_cut(ce)[0]]

    def sides(self, cs: int, ce: int, tail: Any, head: Any) -> tuple["_Side", "_Side"]:
        a, ka = self._left_cut(cs)
        b, kb = self._right_cut(ce)
        left = _Side(self.ids[:ka] + tail.ids, self.offsets[:ka] + [(s + a, e + a) for s, e in tail.offsets], True)
        right = _Side(head.ids + self.ids[kb:], [(s + ce, e + ce) for s, e in head.offsets] + self.offsets[kb:], False)
        return left, right


class _Side:
    """All tokens on one side of a hole (prefix: ending at it, suffix: starting at it)."""

    def __init__(self, ids: list[int], offsets: list[tuple[int, int]], left: bool) -> None:
        self.ids, self.offsets, self.left = ids, offsets, left

    @property
    def available(self) -> int:
        return len(self.ids)

    def clean_cut(self, n: int) -> bool:
        """True when keeping ``n`` tokens next to the hole does not split a character."""
        offsets = self.offsets
        i = len(offsets) - n if self.left else n  # index of the first token after the cut
        return n == 0 or i <= 0 or i >= len(offsets) or offsets[i][0] >= offsets[i - 1][1]


def _balance(budget: int, left: _Side, right: _Side) -> tuple[int, int]:
    """(prefix, suffix) tokens kept: :func:`apmae.mining.fim.balanced_context`, then off any split character."""
    n_left, n_right = balanced_context(left.available, right.available, budget)
    for shift in (0, 1, -1, 2, -2, 3, -3):  # move the cut off a split multi-byte character
        a, b = n_left - shift, n_right + shift
        if 0 <= a <= left.available and 0 <= b <= right.available and left.clean_cut(a) and right.clean_cut(b):
            return a, b
    return n_left, n_right


def _left_only(budget: int, left: _Side) -> int:
    """Prefix tokens kept by a causal prompt: the budget, or fewer to start on a whole character."""
    n = min(left.available, budget)
    for shift in range(4):  # a UTF-8 character spans at most 4 byte-level tokens
        if n - shift >= 0 and left.clean_cut(n - shift):
            return n - shift
    return n


def candidate_spans(text: str, tokenizer: Any, tasks: Sequence[str] | None = None, *,
                    seed: int = 0) -> dict[str, list[Span]]:
    """Every candidate hole of each task in one Java text, as byte spans (to inspect a task)."""
    _, tok_json, prompt = load_tokenizer(tokenizer, "auto")
    task_objs = get_tasks(tasks)
    return FileMiner(FileSettings(seed=seed, fim=prompt.fim, prompt_format=prompt.name, bos=prompt.bos), task_objs,
                     tok_json).text_candidates(text)


def _outside(spans: list[Span], regions: list[Span]) -> list[Span]:
    """Spans not inside any region; strings and comments never nest, so regions are disjoint."""
    if not regions:
        return spans
    regions.sort()
    starts = [r[0] for r in regions]
    out = []
    for s, e in spans:
        i = bisect.bisect_right(starts, s) - 1  # the last region starting at or before s
        if i < 0 or regions[i][1] < e:
            out.append((s, e))
    return out


def _combined_query(tasks: Sequence[Task]) -> tuple[Any, list[int]]:
    """One query holding every query task's patterns; pattern index -> task index (-1: non-code)."""
    sources, owner = [NON_CODE_QUERY], [-1] * compile_query(NON_CODE_QUERY).pattern_count
    for ti, task in enumerate(tasks):
        if task.query is not None:
            sources.append(task.query)
            owner += [ti] * compile_query(task.query).pattern_count
    return compile_query("\n".join(sources)), owner


def _stable_int(*parts: Any) -> int:
    """A 64-bit integer hash of ``parts`` that is the same in every process and Python run."""
    digest = hashlib.blake2b("\0".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


# --- corpus level --------------------------------------------------------------------------


def mine_scenarios(
    sources: Source | Sequence[Source] | JavaSources,
    tokenizer: Any,
    settings: MiningConfig | Mapping[str, Any] | None = None,
    *,
    num_workers: int = 0,
    progress: bool = True,
    **moved: Any,
) -> MiningResult:
    """Mine completion scenarios from Java ``sources`` into a :class:`ScenarioSet`.

    Args:
        sources: directories, archives, JSONL/Parquet files, ``hf:NAME?split=...``
            (see :mod:`apmae.mining.sources`), or a ready :class:`JavaSources` (which then
            keeps its own ``max_bytes``).
        tokenizer: a fast Hugging Face tokenizer (with FIM tokens for ``fim``), or its hub name / local directory.
        settings: what to mine (:class:`apmae.mining.settings.MiningConfig`, or a dict of its fields;
            None: its defaults). The same corpus and settings give the same scenarios for any
            ``num_workers``.
        num_workers: processes mining files in parallel (0: in this process).
        progress: show a progress bar and print the summary.

    Raises:
        TypeError: a setting passed on its own (``seq_len=...``) rather than inside ``settings``.
    """
    moved_to_mining("mine_scenarios", moved, param="settings")
    settings = MiningConfig.of(settings)
    tasks, seq_len, n_per_task = settings.tasks, settings.seq_len, settings.n_per_task
    max_per_file, max_label_tokens, seed, pad = (settings.max_per_file, settings.max_label_tokens, settings.seed,
                                                 settings.pad)
    task_objs = get_tasks(tasks)
    quotas = _quotas(task_objs, n_per_task, settings.proportions)
    fractions = settings.splits
    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers}")
    hf_tok, tok_json, prompt = load_tokenizer(tokenizer, settings.prompt_format)
    pad_id = pad_id_of(hf_tok, prompt) if pad else None
    if pad and pad_id is None:
        raise ValueError("pad=True needs a <fim_pad>, pad or end-of-text token in the tokenizer")
    config = FileSettings(seq_len=seq_len, max_per_file=max_per_file, max_label_tokens=max_label_tokens,
                          seed=seed, pad=pad, pad_id=pad_id, fim=prompt.fim, prompt_format=prompt.name,
                          bos=prompt.bos)
    files = sources if isinstance(sources, JavaSources) else JavaSources(sources, max_bytes=settings.max_bytes)
    report = MiningReport([TaskReport(t.name, quota=quotas[t.name]) for t in task_objs], num_workers=num_workers)
    start = time.perf_counter()
    heaps = _collect(files, (config, task_objs, tok_json), quotas, report, num_workers, progress,
                     settings.max_files, settings.exhaustive)
    if files.yielded == 0 and any(t.needs_source and quotas[t.name] > 0 for t in task_objs):
        skipped = ", ".join(f"{k} {v}" for k, v in sorted(files.skipped.items())) or "no .java file found"
        raise SourceError(f"no Java file could be read from {files.describe()} ({skipped}): every task but the "
                          "noise control needs source files; pass a folder, archive or JSONL/Parquet file of Java "
                          "sources")
    noise = [(ti, noise_scenarios(config, t, quotas[t.name], noise_vocab(hf_tok, prompt.fim)))
             for ti, t in enumerate(task_objs) if not t.needs_source]
    scenarios = _to_set(heaps, noise, task_objs, fractions, seed)
    report.seconds = time.perf_counter() - start
    report.skipped.update(files.skipped)
    report.files_seen += sum(files.skipped.values())
    for tr, ti in zip(report.tasks, range(len(task_objs))):
        tr.kept = int((scenarios.task == ti).sum())
        if tr.kept < tr.quota:
            log.warning("task %s: only %d of %d scenarios (corpus too small or too few candidates)",
                        tr.name, tr.kept, tr.quota)
    _count_splits(scenarios, report, fractions)
    scenarios.meta.update(_meta(hf_tok, files, config, task_objs, quotas, fractions))
    log.info("scenario mining summary\n%s", report.summary())
    if progress:
        print(report.summary())
    return MiningResult(scenarios, report)


def _count_splits(scenarios: ScenarioSet, report: MiningReport, fractions: Sequence[float]) -> None:
    """Rows and source files per split into the report; a warning for each split left empty or tiny.

    Splits are drawn per source file, so a corpus whose scenarios come from few files can leave a
    split with a positive fraction empty: the validation of a later stage would then have no rows.
    """
    for k, name in enumerate(SPLITS):
        rows = scenarios.split == k
        report.split_rows[name] = int(rows.sum())
        report.split_files[name] = len(set(scenarios.source_id[rows]) - {""})
    n_files = len(set(scenarios.source_id) - {""})
    for name, fraction in zip(SPLITS, fractions):
        if fraction > 0 and report.split_rows[name] < TINY_SPLIT:
            log.warning("split %s holds %d scenarios (fraction %.2f; rows per split: %s): splits are drawn per "
                        "source file and the scenarios come from %d files; add source files, raise n_per_task or "
                        "max_per_file, or raise the %s fraction", name, report.split_rows[name], fraction,
                        report.split_rows, n_files, name)


def _collect(files: JavaSources, miner_args: tuple, quotas: dict[str, int], report: MiningReport,
             num_workers: int, progress: bool, max_files: int | None, exhaustive: bool) -> list[list]:
    """Per task, a max-heap of the ``quota`` scenarios with the smallest hash keys."""
    tasks: tuple[Task, ...] = miner_args[1]
    heaps: list[list] = [[] for _ in tasks]
    mined = [ti for ti, t in enumerate(tasks) if t.needs_source and quotas[t.name] > 0]
    if not mined:  # only source-less tasks (noise): nothing to read
        return heaps
    file_iter = _limit(iter(files), max_files)
    bar = tqdm(desc="mining scenarios", unit="file", disable=not progress, mininterval=0.5)
    results = _results(file_iter, miner_args, num_workers)
    try:
        for n, res in enumerate(results, 1):
            report.files_seen += 1
            bar.update()
            _add_file(res, heaps, tasks, quotas, report, miner_args[0].seed)
            if n % 64 == 0:
                bar.set_postfix(kept=sum(len(h) for h in heaps), refresh=False)
            if not exhaustive and all(len(heaps[ti]) >= quotas[tasks[ti].name] for ti in mined):
                report.stopped_early = True
                break
    finally:
        results.close()
        bar.close()
    return heaps


def _add_file(res: FileResult, heaps: list[list], tasks: Sequence[Task], quotas: dict[str, int],
              report: MiningReport, seed: int) -> None:
    """Count one file's result and let its scenarios compete for their task's quota."""
    if res.skip is not None:
        report.skipped[res.skip] += 1
        return
    report.files_mined += 1
    for ti, task in enumerate(tasks):
        if task.needs_source:
            tr = report.tasks[ti]
            tr.files_scanned += 1
            tr.files_with_candidates += res.candidates[ti] > 0
            tr.candidates += res.candidates[ti]
            tr.rejected.update(res.rejected[ti])
    for m in res.scenarios:
        report.tasks[m.task].assembled += 1
        quota = quotas[tasks[m.task].name]
        key = _stable_int(seed, tasks[m.task].name, res.source_id, m.span_start, m.span_end)
        item = (-key, res.source_id, m.span_start, m.span_end, m)
        heap = heaps[m.task]
        if len(heap) < quota:
            heapq.heappush(heap, item)
        elif quota and -key > heap[0][0]:
            heapq.heapreplace(heap, item)


def _limit(files: Iterator[SourceFile], max_files: int | None) -> Iterator[SourceFile]:
    for i, f in enumerate(files):
        if max_files is not None and i >= max_files:
            return
        yield f


_WORKER: FileMiner | None = None


def _init_worker(*miner_args: Any) -> None:
    global _WORKER
    _WORKER = FileMiner(*miner_args)


def _mine_batch(files: list[SourceFile]) -> list[FileResult]:
    assert _WORKER is not None, "worker not initialised"
    return [_WORKER.mine(f) for f in files]


def _results(files: Iterator[SourceFile], miner_args: tuple, num_workers: int,
             chunk: int = 8) -> Iterator[FileResult]:
    """FileResults in corpus order, mined here or by ``num_workers`` processes.

    At most ``2 * num_workers`` chunks are in flight, so a huge corpus is never read ahead
    into memory, and order (hence every choice) does not depend on the worker count.
    """
    if num_workers == 0:
        miner = FileMiner(*miner_args)
        for f in files:
            yield miner.mine(f)
        return

    # spawn: workers start clean (no inherited tokenizer threads); they only import numpy,
    # tree-sitter and tokenizers, so start-up stays well under a second
    pool = ProcessPoolExecutor(num_workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_init_worker, initargs=miner_args)
    pending: deque = deque()
    try:
        batch: list[SourceFile] = []
        for f in files:
            batch.append(f)
            if len(batch) == chunk:
                pending.append(pool.submit(_mine_batch, batch))
                batch = []
            while len(pending) >= 2 * num_workers:
                yield from pending.popleft().result()
        if batch:
            pending.append(pool.submit(_mine_batch, batch))
        while pending:
            yield from pending.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _quotas(tasks: Sequence[Task], n_per_task: int | Mapping[str, int],
            proportions: Mapping[str, float] | None) -> dict[str, int]:
    """Scenarios wanted per task name."""
    names = [t.name for t in tasks]
    if proportions is not None:
        if not isinstance(n_per_task, int) or set(proportions) != set(names) or min(proportions.values()) < 0:
            raise ValueError(f"proportions must give a non-negative weight to exactly the tasks {names} "
                             "and n_per_task must be an int (the total is n_per_task x number of tasks)")
        total, weight = n_per_task * len(names), sum(proportions.values())
        if weight <= 0:
            raise ValueError("proportions must not all be zero")
        exact = {n: total * proportions[n] / weight for n in names}
        quotas = {n: int(v) for n, v in exact.items()}
        # largest remainders get the leftover scenarios, ties broken by task order
        for n in sorted(names, key=lambda n: -(exact[n] - quotas[n]))[: total - sum(quotas.values())]:
            quotas[n] += 1
        return quotas
    if isinstance(n_per_task, Mapping):
        if set(n_per_task) != set(names):
            raise ValueError(f"n_per_task mapping must name exactly the tasks {names}, got {sorted(n_per_task)}")
        quotas = {n: int(n_per_task[n]) for n in names}
    else:
        quotas = {n: int(n_per_task) for n in names}
    if min(quotas.values()) < 0:
        raise ValueError(f"n_per_task must be >= 0, got {quotas}")
    return quotas


def split_of(source_id: str, fractions: Sequence[float]) -> int:
    """Split index of a source file: a hash of its id, so it never moves when the corpus grows."""
    u = _stable_int("split", source_id) / 2.0**64
    edges = np.cumsum(fractions)
    return int(min(np.searchsorted(edges, u, side="right"), len(fractions) - 1))


def load_tokenizer(tokenizer: Any, prompt_format: str) -> tuple[Any, str, PromptFormat]:
    """(HF tokenizer, its backend as JSON for workers, prompt format); a name or directory is loaded."""
    if isinstance(tokenizer, str):
        from transformers import AutoTokenizer  # import cost ~1 s: only when a name or directory is given

        try:
            tokenizer = AutoTokenizer.from_pretrained(tokenizer)
        except (OSError, ValueError) as e:
            raise ValueError(f"cannot load tokenizer {tokenizer!r}: {e}") from e
    prompt = resolve_prompt_format(prompt_format, tokenizer)
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ValueError(f"tokenizer {getattr(tokenizer, 'name_or_path', tokenizer)!r} is not a fast "
                         "(Rust) tokenizer; load it with use_fast=True")
    return tokenizer, backend.to_str(), prompt


def pad_id_of(tokenizer: Any, prompt: PromptFormat) -> int | None:
    """The id short prompts are left-padded with: ``<fim_pad>``, else the pad token, else end of text."""
    fim = prompt.fim
    for candidate in ((fim.pad, fim.eos) if fim is not None else ()) + (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return int(candidate)
    return None


def noise_vocab(tokenizer: Any, fim: FimTokens | None) -> np.ndarray:
    """Token ids a noise scenario may use: every id but special tokens."""
    special = set(tokenizer.all_special_ids)
    if fim is not None:
        special |= {fim.prefix, fim.middle, fim.suffix, fim.pad, fim.eos}
    return np.array([i for i in range(len(tokenizer)) if i not in special], dtype=np.int32)


def noise_scenarios(cfg: FileSettings, task: Task, n: int, vocab: np.ndarray) -> list[Mined]:
    """``n`` control scenarios of random token ids with the prompt format's structure and no source."""
    rng = np.random.default_rng(_stable_int(cfg.seed, task.name))
    lo, hi = task.label_tokens or (1, cfg.max_label_tokens)
    out = []
    for _ in range(n):
        n_label = int(rng.integers(lo, hi + 1))
        budget = cfg.seq_len - cfg.overhead
        ids = rng.choice(vocab, size=budget + n_label).tolist()
        half = budget // 2
        if cfg.prompt_format == "causal":
            prompt = ([cfg.bos] if cfg.bos is not None else []) + ids[:budget]
        else:
            prompt = fim_sequence(ids[:half], ids[half:budget], cfg.fim)
        out.append(Mined(-1, -1, -1, np.asarray(prompt, dtype=np.int32), np.asarray(ids[budget:], dtype=np.int32)))
    return out


def _to_set(heaps: list[list], noise: list[tuple[int, list[Mined]]], tasks: Sequence[Task],
            fractions: Sequence[float], seed: int) -> ScenarioSet:
    """Rows ordered by task, then by sampling key (noise: generation order)."""
    rows: list[tuple[int, str, Mined]] = []
    for ti, heap in enumerate(heaps):
        rows += [(ti, src, m) for _, src, _, _, m in sorted(heap, reverse=True)]
    for ti, mined in noise:
        rows += [(ti, "", m) for m in mined]
    # a noise scenario has no file; its split is drawn from its own index, seeded
    split_keys = [src or f"noise:{seed}:{j}" for j, (_, src, _) in enumerate(rows)]
    seq_len = rows[0][2].input_ids.shape[0] if rows else 0
    width = max((len(m.label_ids) for _, _, m in rows), default=1)
    labels = np.zeros((len(rows), width), dtype=np.int32)
    for i, (_, _, m) in enumerate(rows):
        labels[i, : len(m.label_ids)] = m.label_ids
    return ScenarioSet(
        input_ids=np.stack([m.input_ids for _, _, m in rows]) if rows else np.zeros((0, seq_len), np.int32),
        label_ids=labels,
        label_len=np.array([len(m.label_ids) for _, _, m in rows], dtype=np.int32),
        middle_pos=np.full(len(rows), seq_len - 1, dtype=np.int32),  # the last position is scored (<fim_middle>)
        task=np.array([ti for ti, _, _ in rows], dtype=np.int16),
        source_id=np.array([src for _, src, _ in rows], dtype=str),
        span_start=np.array([m.span_start for _, _, m in rows], dtype=np.int64),
        span_end=np.array([m.span_end for _, _, m in rows], dtype=np.int64),
        split=np.array([split_of(k, fractions) for k in split_keys], dtype=np.int8),
        task_names=[t.name for t in tasks],
    )


def _meta(tokenizer: Any, files: JavaSources, cfg: FileSettings, tasks: Sequence[Task],
          quotas: dict[str, int], fractions: Sequence[float]) -> dict[str, Any]:
    return {
        "tokenizer": getattr(tokenizer, "name_or_path", ""),
        "tokenizer_fingerprint": tokenizer_fingerprint(tokenizer),
        "vocab_size": len(tokenizer),
        "seq_len": cfg.seq_len,
        "seed": cfg.seed,
        "tasks": [t.name for t in tasks],
        "sources": files.describe(),
        "n_per_task": quotas,
        "max_per_file": cfg.max_per_file,
        "max_label_tokens": cfg.max_label_tokens,
        "splits": dict(zip(SPLITS, fractions)),
        "pad": cfg.pad,
        **cfg.prompt.describe(),
    }
