"""Batched extraction: a scenario set through a target model into an attention cache shard.

``ensure_cache`` is the whole step for one model (reuse a complete cache,
resume an interrupted one, or load the model and extract), as a notebook or
the DataModule calls it; ``extract`` writes one shard with a loaded target.

Glossary: B scenarios per batch, S tokens, L layers, H query heads, T = S(S+1)/2 lower-triangle
entries of one head's pattern, W stored elements per head (apmae.cache.codec.packed_width).

Per batch: one eager forward pass, each layer rounded to bfloat16 on the
model's device and its lower triangles gathered (only 2T bytes per head cross
to the host), encoded into the cache's stored form, then one HDF5 write per
column for the whole batch. ``workers`` batches are computed at once in
threads (the model's kernels and numpy release the GIL) while the main thread
writes finished batches strictly in order. On CPU each worker gets an equal
share of torch's threads: for the small matrices of a small model, two
single-threaded forward passes side by side beat one two-threaded pass.
Entry points that extract also call :func:`apmae.common.allocator.keep_freed_memory`
(a process-wide allocator setting this module never changes by itself).
"""

from __future__ import annotations

import re
import time
from collections import deque
import contextlib
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence, TypeVar

import numpy as np
import torch
from tqdm.auto import tqdm

from apmae.cache.codec import stored_attentions
from apmae.cache.gather import run_batch_stored
from apmae.cache.heads import ALL, canonical_sample
from apmae.cache.settings import ExtractionSettings, moved_to_extraction
from apmae.cache.store import (DEFAULT_PATTERN_KIND, AttentionCache, CacheError,
                               CacheMismatchError, CacheSpec, CacheWriter, cache_files, check_identity,
                               check_pattern_kind, shard_path)
from apmae.common.cores import torch_threads
from apmae.mining.scenario_set import ScenarioSet
from apmae.target.access import load_target
from apmae.target.context import check_context
from apmae.target.contribution import run_batch_contributions
from apmae.target.layout import attention_layers

J = TypeVar("J")
R = TypeVar("R")


@dataclass
class ExtractionResult:
    """What one extraction call did."""

    path: Path
    rows: int  # rows of this shard
    written: int  # rows written by this call (0 when the shard was already complete)
    seconds: float
    bytes: int  # file size after the call

    @property
    def scenarios_per_s(self) -> float:
        return self.written / self.seconds if self.seconds > 0 else 0.0


def extract(
    target,
    scenarios: ScenarioSet,
    path: str | Path,
    settings: ExtractionSettings | Mapping[str, Any] | None = None,
    *,
    rank: int = 0,
    world_size: int = 1,
    on_batch: Callable[[int], None] | None = None,
    **moved: Any,
) -> ExtractionResult:
    """Extract (or resume) rank ``rank``'s shard of ``scenarios`` into ``path``.

    ``target`` is an :class:`apmae.target.Target`, already loaded (``settings.dtype`` and
    ``settings.device`` are :func:`ensure_cache`'s). ``settings`` (:class:`ExtractionSettings`, a
    dict of its fields, or None for its defaults) gives the batch size, the storage form
    (compression, encoding, pattern kind, head sample) and the progress bar; ``settings.workers`` batches are
    in flight at once (computed in threads, written in order). ``on_batch(committed)``
    is called after each batch is committed. ``pattern_kind="contribution"``
    stores each head's norm-based contribution weights instead of its attention
    (:func:`apmae.target.contribution.run_batch_contributions`); ``heads="layerwise:<f>"``
    stores only the heads of each layer the draw seeded by ``head_seed`` keeps (:mod:`apmae.cache.heads`).

    Raises:
        ValueError: bad batch size, workers or pattern kind, contribution weights of a model whose
            attention modules are not recognised, or scenarios whose length differs from an
            existing cache's (see :class:`apmae.cache.CacheMismatchError`).
    """
    moved_to_extraction("extract", moved)
    x = ExtractionSettings.of(settings)
    batch_size, workers, pattern_kind, progress = x.batch_size, x.workers, x.pattern_kind, x.progress
    check_scenarios(scenarios)
    check_context(target, scenarios.seq_len)
    if check_pattern_kind(pattern_kind) == "contribution":
        attention_layers(target.model)  # a model whose value projections are not found fails before any file
    spec = CacheSpec(target=target.summary(), seq_len=scenarios.seq_len, scenario_fingerprint=scenarios.fingerprint(),
                     n_scenarios=len(scenarios), shard_rank=rank, shard_world_size=world_size,
                     compression=x.compression, encoding=x.encoding, pattern_kind=pattern_kind,
                     heads=x.heads, head_seed=x.head_seed)
    start = time.perf_counter()
    with CacheWriter.open(path, spec, scenarios) as writer, threads_per_worker(target.device, workers):
        before = writer.committed
        _run(target, scenarios, writer, batch_size, workers, progress, on_batch)
        written, rows = writer.committed - before, len(writer.rows)
    return ExtractionResult(path=Path(path), rows=rows, written=written,
                            seconds=time.perf_counter() - start, bytes=Path(path).stat().st_size)


def _run(target, scenarios: ScenarioSet, writer: CacheWriter, batch_size: int, workers: int, progress: bool,
         on_batch: Callable[[int], None] | None) -> None:
    pending = writer.pending()
    batches = [pending[lo:lo + batch_size] for lo in range(0, len(pending), batch_size)]
    bar = tqdm(total=len(writer.rows), initial=writer.committed, unit="scenario", disable=not progress,
               desc=f"attentions -> {writer.path.name}", smoothing=0.1)
    try:
        run_in_order(batches, lambda idx: _compute(target, scenarios, writer, idx),
                     lambda result: _commit(result, writer, bar, on_batch), workers=workers)
    finally:
        bar.close()


def run_in_order(jobs: Sequence[J], compute: Callable[[J], R], commit: Callable[[R], None], *, workers: int) -> None:
    """``compute`` up to ``workers`` jobs at once in threads; ``commit`` their results in job order, in this thread.

    An error or interrupt cancels the jobs not started yet; results not yet
    committed are dropped (a resumed run computes them again).
    """
    in_flight: deque[Future] = deque()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        try:
            for job in jobs:
                in_flight.append(pool.submit(compute, job))
                if len(in_flight) > workers:
                    commit(in_flight.popleft().result())
            while in_flight:
                commit(in_flight.popleft().result())
        finally:
            for future in in_flight:
                future.cancel()


def _compute(target, scenarios: ScenarioSet, writer: CacheWriter, idx: np.ndarray) -> tuple:
    """One batch's stored patterns and outcomes (runs in a worker thread; no file access)."""
    args = (target, torch.from_numpy(scenarios.input_ids[idx]), torch.from_numpy(scenarios.label_ids[idx, 0]))
    middle_pos = torch.from_numpy(scenarios.middle_pos[idx])
    if writer.pattern_kind == "contribution":
        out = run_batch_contributions(*args, middle_pos=middle_pos)
        stored = stored_attentions(out.attentions.unbind(1), writer.encoding)  # (B, L, H, W)
    else:
        out = run_batch_stored(*args, middle_pos=middle_pos, encoding=writer.encoding)
        stored = out.stored
    return (stored, out.prediction.cpu().numpy(), out.probability.cpu().numpy(), out.correct.cpu().numpy(),
            out.loss.cpu().numpy())


def _commit(result: tuple, writer: CacheWriter, bar, on_batch: Callable[[int], None] | None) -> None:
    """Write a computed batch (the next one in order) and report it."""
    writer.append(*result)
    bar.n = writer.committed
    bar.refresh()
    if on_batch is not None:
        on_batch(writer.committed)


def threads_per_worker(device: Any, workers: int) -> contextlib.AbstractContextManager[None]:
    """On CPU, split torch's threads between the workers for the block; the thread count is restored after."""
    cpu = torch.device(device).type == "cpu"
    return torch_threads(max(1, torch.get_num_threads() // workers) if cpu else None)


def target_short_name(name_or_path: str) -> str:
    """A file- and metric-key-safe short name: the last path component (``artifacts/demo/target-a`` -> ``target-a``)."""
    base = Path(str(name_or_path).rstrip("/")).name or str(name_or_path)
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", base)


def cache_name(model: str, pattern_kind: str = DEFAULT_PATTERN_KIND, *, heads: str = ALL, head_seed: int = 0) -> str:
    """The cache's file name stem: ``<short name>`` for attention, ``<short name>.<kind>`` for another kind,
    then for a sampled cache ``.heads-layerwise-<f>-seed<head_seed>`` (``target-a.heads-layerwise-0.25-seed0``),
    so the full and the sampled caches of one model sit side by side.

    Raises:
        ValueError: an unknown pattern kind or head sample.
    """
    name = target_short_name(model)
    if check_pattern_kind(pattern_kind) != DEFAULT_PATTERN_KIND:
        name = f"{name}.{pattern_kind}"
    sample = canonical_sample(heads)
    return name if sample == ALL else f"{name}.heads-{sample.replace(':', '-')}-seed{int(head_seed)}"


@dataclass
class CacheBuild:
    """What :func:`ensure_cache` found or did for one target model."""

    name: str  # the cache's file name stem in cache_dir
    files: list[Path]  # every shard file of the cache, in rank order
    extraction: ExtractionResult | None  # this rank's extraction; None when a complete cache was there


def ensure_cache(
    model: str,
    scenarios: ScenarioSet,
    cache_dir: str | Path,
    settings: ExtractionSettings | Mapping[str, Any] | None = None,
    *,
    name: str | None = None,
    rank: int = 0,
    world_size: int = 1,
    local_rank: int = 0,
    **moved: Any,
) -> CacheBuild:
    """The ``settings.pattern_kind`` cache of ``model`` over ``scenarios`` in ``cache_dir``: reused, resumed or built.

    When a complete cache for this model, sequence length, scenario set,
    pattern kind and head sample is there (written under any world size) nothing is loaded;
    otherwise rank ``rank`` of ``world_size`` loads the model
    (:func:`apmae.target.access.load_target` with ``settings.dtype`` on ``settings.device``;
    ``auto`` = GPU ``local_rank`` when CUDA is present, else CPU) and extracts or resumes
    its own shard ``<name>.rank<k>.h5`` (``name`` defaults to :func:`cache_name`,
    so the kinds and head samples of one model sit side by side) with :func:`extract` under the same
    ``settings`` (:class:`ExtractionSettings`, a dict of its fields, or None for its defaults).

    Raises:
        CacheMismatchError: a complete cache in ``cache_dir`` under ``name`` was built for another run
            (another model, S, scenario set, pattern kind or head sample).
        ValueError: an unknown pattern kind.
    """
    moved_to_extraction("ensure_cache", moved)
    x = ExtractionSettings.of(settings)
    pattern_kind = x.pattern_kind  # checked when the settings were built: before the model loads
    name = name or cache_name(model, pattern_kind, heads=x.heads, head_seed=x.head_seed)
    if cache_complete(cache_dir, name, model=model, scenarios=scenarios, pattern_kind=pattern_kind, heads=x.heads,
                      head_seed=x.head_seed):
        return CacheBuild(name=name, files=cache_files(cache_dir, name), extraction=None)

    target = load_target(model, dtype=x.dtype, device=extraction_device(x.device, local_rank))
    result = extract(target, scenarios, shard_path(cache_dir, name, rank), x, rank=rank, world_size=world_size)
    del target
    if torch.cuda.is_available():
        torch.cuda.empty_cache()  # the model is gone: leave its memory to training
    return CacheBuild(name=name, files=cache_files(cache_dir, name), extraction=result)


def cache_complete(cache_dir: str | Path, name: str, *, model: str, scenarios: ScenarioSet,
                   pattern_kind: str = DEFAULT_PATTERN_KIND, heads: str = ALL, head_seed: int = 0) -> bool:
    """True when every shard of cache ``name`` is there and fully committed, for this model, scenario set, kind
    and head sample.

    Raises:
        CacheMismatchError: the cache was built for another model, sequence length, scenario set, pattern kind
            or head sample.
    """
    files = cache_files(cache_dir, name)
    if not files:
        return False
    try:
        cache = AttentionCache(files)
    except CacheMismatchError:
        raise
    except CacheError:
        return False  # incomplete: resume it
    sample = canonical_sample(heads)
    expected = {"model": model, "seq_len": scenarios.seq_len, "scenario_fingerprint": scenarios.fingerprint(),
                "pattern_kind": pattern_kind, "heads": sample, **({} if sample == ALL else {"head_seed": head_seed})}
    check_identity({**cache.identity, "heads": cache.head_sample}, expected, files[0])
    return True


def extraction_device(device: str, local_rank: int = 0) -> str:
    """``auto``: this process's GPU (``cuda:<local_rank>``) when CUDA is present, else the CPU; else ``device``."""
    if device == "auto":
        return f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    return device


def check_scenarios(scenarios: ScenarioSet) -> None:
    """Reject scenario sets extraction cannot use, saying what to change."""
    if len(scenarios) == 0:
        raise ValueError("the scenario set is empty; mine scenarios first")
    empty = np.flatnonzero(scenarios.label_len < 1)
    if len(empty):
        raise ValueError(f"some scenarios have no label tokens (label_len < 1): rows {empty[:5].tolist()}"
                         f"{' ...' if len(empty) > 5 else ''}; the first-token outcome needs one: drop them or "
                         "mine the set again")
    outside = np.flatnonzero((scenarios.middle_pos < 0) | (scenarios.middle_pos >= scenarios.seq_len))
    if len(outside):
        raise ValueError(f"middle_pos lies outside the prompts (0..{scenarios.seq_len - 1}): rows "
                         f"{outside[:5].tolist()}{' ...' if len(outside) > 5 else ''} have "
                         f"{scenarios.middle_pos[outside[:5]].tolist()}; the scenario set is inconsistent: "
                         "mine it again")
