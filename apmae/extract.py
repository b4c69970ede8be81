"""Batched extraction: a scenario set through a target model into an attention cache shard.

Glossary: B scenarios per batch, S tokens, L layers, H query heads, T = S(S+1)/2.

Per batch: one eager forward pass, lower triangles gathered and rounded to
bfloat16 on the model's device (only 2T bytes per head cross to the host),
then one HDF5 write per column for the whole batch. Writing batch k runs in a
background thread while the model computes batch k+1 (the model's kernels
release the GIL, so compression and writing overlap them on a spare core).
"""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from apmae.cache import DEFAULT_COMPRESSION, CacheSpec, CacheWriter, encode_patterns
from apmae.scenario_set import ScenarioSet


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
    *,
    batch_size: int = 8,
    rank: int = 0,
    world_size: int = 1,
    compression: str = DEFAULT_COMPRESSION,
    progress: bool = True,
    on_batch: Callable[[int], None] | None = None,
) -> ExtractionResult:
    """Extract (or resume) rank ``rank``'s shard of ``scenarios`` into ``path``.

    ``target`` is an :class:`apmae.target.Target`. ``on_batch(committed)`` is
    called after each batch is committed.

    Raises:
        ValueError: bad batch size, or scenarios whose length differs from an
            existing cache's (see :class:`apmae.cache.CacheMismatchError`).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}; it must be at least 1")
    check_scenarios(scenarios)
    spec = CacheSpec(target=target.summary(), seq_len=scenarios.seq_len, scenario_fingerprint=scenarios.fingerprint(),
                     n_scenarios=len(scenarios), shard_rank=rank, shard_world_size=world_size,
                     compression=compression)
    start = time.perf_counter()
    with CacheWriter.open(path, spec, scenarios) as writer, _core_for_writer(target):
        before = writer.committed
        _run(target, scenarios, writer, batch_size, progress, on_batch)
        written, rows = writer.committed - before, len(writer.rows)
    return ExtractionResult(path=Path(path), rows=rows, written=written,
                            seconds=time.perf_counter() - start, bytes=Path(path).stat().st_size)


def _run(target, scenarios: ScenarioSet, writer: CacheWriter, batch_size: int, progress: bool,
         on_batch: Callable[[int], None] | None) -> None:
    import torch
    from tqdm.auto import tqdm

    from apmae.target import run_batch

    pending = writer.pending()
    bar = tqdm(total=len(writer.rows), initial=writer.committed, unit="scenario", disable=not progress,
               desc=f"attentions -> {writer.path.name}", smoothing=0.1)
    in_flight: Future | None = None
    with ThreadPoolExecutor(max_workers=1) as pool:
        try:
            for lo in range(0, len(pending), batch_size):
                idx = pending[lo:lo + batch_size]
                out = run_batch(target, torch.from_numpy(scenarios.input_ids[idx]),
                                torch.from_numpy(scenarios.label_ids[idx, 0]),
                                middle_pos=torch.from_numpy(scenarios.middle_pos[idx]), pack=True)
                columns = (encode_patterns(out.attentions), out.prediction.cpu().numpy(),
                           out.probability.cpu().numpy(), out.correct.cpu().numpy(), out.loss.cpu().numpy())
                _finish(in_flight, bar, on_batch, writer)
                in_flight = pool.submit(writer.append, *columns)
            _finish(in_flight, bar, on_batch, writer)
            in_flight = None
        finally:
            if in_flight is not None:
                in_flight.exception()  # never close the file under a running write
            bar.close()


@contextmanager
def _core_for_writer(target) -> Iterator[None]:
    """On CPU, leave one core to the background writer while the model runs.

    Compression runs in a thread beside the forward pass; with torch's intra-op
    pool on every core the two contend and torch's spinning threads stall
    (measured on 2 cores: 6.4 -> 9.4 scenarios/s with one torch thread).
    """
    import torch

    threads = torch.get_num_threads()
    on_cpu = target.device.type == "cpu"
    if on_cpu and threads > 1 and threads >= (os.cpu_count() or 1):
        torch.set_num_threads(threads - 1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _finish(in_flight: Future | None, bar, on_batch: Callable[[int], None] | None, writer: CacheWriter) -> None:
    """Wait for the previous batch's write; report it."""
    if in_flight is None:
        return
    in_flight.result()
    bar.n = writer.committed
    bar.refresh()
    if on_batch is not None:
        on_batch(writer.committed)


def check_scenarios(scenarios: ScenarioSet) -> None:
    """Reject scenario sets extraction cannot use, saying what to change."""
    if len(scenarios) == 0:
        raise ValueError("the scenario set is empty; mine scenarios first")
    if (scenarios.label_len < 1).any():
        raise ValueError("some scenarios have no label tokens (label_len < 1); the first-token outcome needs one")
    if not np.all((scenarios.middle_pos >= 0) & (scenarios.middle_pos < scenarios.seq_len)):
        raise ValueError("middle_pos lies outside the prompts; the scenario set is inconsistent")
