"""Streaming encodings: scenarios -> target -> AP-MAE encoder -> encodings file, no patterns on disk.

Glossary: B scenarios per batch, S tokens, L layers, H query heads, D encoder
width, F pattern statistics per head, N scenarios of the set.

At paper scale one StarCoder2-3B scenario is 720 heads x 57.6 KB of packed
patterns; once an AP-MAE is trained, probes, clustering and interventions need
only its encodings (2 x D float16 per head). Per batch this runs the target
once (eager attention), rounds every head's pattern exactly as the attention
cache stores it (bfloat16, lower triangle), scales and encodes it with the
frozen encoder on the same device and appends the encodings with the
target's outcomes to the file of :mod:`apmae.encodings.store`. The patterns never
leave the device: only the (B, L, H, D) encodings, (B, L, H, F) statistics
and (B,) outcomes reach the host. Because the rounding is the cache's, these
encodings equal those that :func:`apmae.encodings.store.ensure_encodings` computes
from a pattern cache of the same scenarios (to float16 precision), and the
file carries the same identity.

``settings.workers`` batches are computed at once in threads (forward and encoder;
torch releases the GIL) while the calling thread writes finished batches in
order. On CPU the workers split torch's threads, so the target's forward pass
of one batch and the encoder of another share the cores; on a GPU the threads
overlap host work (outcomes, HDF5 writes) with device work.

Under DDP rank ``k`` of ``world`` streams the rows ``shard_rows(N, k, world)``
into its own file ``<name>.rank<k>.h5``; :class:`apmae.encodings.EncodingSet`
merges the shards in scenario order. A file is resumed after a kill at any
point (rows are committed only after they are flushed) and refused when it
belongs to another target, encoder, scaler, scenario set or sharding.
"""

from __future__ import annotations

import contextlib
import time
from functools import partial
from pathlib import Path
from typing import Any, Callable, Mapping, TYPE_CHECKING

import numpy as np
import torch
from tqdm.auto import tqdm

from apmae.cache.codec import round_to_bfloat16
from apmae.cache.extract import ExtractionResult, check_scenarios, run_in_order, threads_per_worker
from apmae.cache.heads import ALL
from apmae.cache.settings import ExtractionSettings, moved_to_extraction
from apmae.cache.store import DEFAULT_PATTERN_KIND
from apmae.common.settings import check_choice
from apmae.common.h5shards import shard_rows
from apmae.encodings.store import (CHUNK, COLUMNS, OUTCOMES, EncodedRows, EncodingsSpec, EncodingsWriter,
                                   check_encoder_seq_len, encode_patterns, encoder_hash, placeholder_outcomes,
                                   source_fingerprint)
from apmae.mining.scenario_set import ScenarioSet
from apmae.model.loading import ENCODER_PRECISIONS
from apmae.model.scaling import get_scaler
from apmae.target.access import run_batch
from apmae.target.context import check_context

if TYPE_CHECKING:  # annotations only: the classes' modules import torch or transformers
    from apmae.model.net import APMAE
    from apmae.target.access import Target

# Columns copied from the ScenarioSet (``scenario_index`` is the row itself; the outcomes come from the target).
_SCENARIO_COLUMNS = tuple(c for c in COLUMNS if c != "scenario_index" and c not in OUTCOMES)


def stream_spec(target: Target, scenarios: ScenarioSet, net: APMAE, *, scaler: str, rank: int = 0,
                world_size: int = 1) -> EncodingsSpec:
    """The identity of rank ``rank``'s encodings file of ``scenarios`` through ``target`` and ``net``.

    Raises:
        EncodingsMismatchError: the encoder's S is not the scenarios' S.
        ValueError: ``rank`` is outside ``world_size``.
    """
    check_encoder_seq_len(net, scenarios.seq_len, "the scenario set")
    rows = shard_rows(len(scenarios), rank, world_size)
    summary = target.summary()
    fingerprint = partial(source_fingerprint, summary, scenarios.fingerprint(), scenarios.seq_len)
    return EncodingsSpec(source_fingerprint=fingerprint(rows), encoder_hash=encoder_hash(net), scaler=scaler,
                         seq_len=scenarios.seq_len, n_layers=target.n_layers, n_heads=target.n_heads,
                         dim=net.config.enc_dim, n_rows=len(rows), task_names=tuple(scenarios.task_names),
                         target=summary, scenario_fingerprint=scenarios.fingerprint(), shard_rank=rank,
                         shard_world_size=world_size, group_fingerprint=fingerprint(np.arange(len(scenarios))),
                         patch_size=net.config.patch_size)


def stream_columns(scenarios: ScenarioSet, rows: np.ndarray) -> dict[str, np.ndarray]:
    """The per-scenario columns of ``rows`` known before the target runs; outcomes are placeholders."""
    return {"scenario_index": rows, **{name: getattr(scenarios, name)[rows] for name in _SCENARIO_COLUMNS},
            **placeholder_outcomes(len(rows))}


def stream_encodings(
    target: Target,
    scenarios: ScenarioSet,
    net: APMAE,
    path: str | Path,
    settings: ExtractionSettings | Mapping[str, Any] | None = None,
    *,
    scaler: str = "log_normalize",
    precision: str = "32",
    rank: int = 0,
    world_size: int = 1,
    on_batch: Callable[[int], None] | None = None,
    **moved: Any,
) -> ExtractionResult:
    """Stream (or resume) rank ``rank``'s shard of ``scenarios`` through ``target`` and ``net`` into ``path``.

    ``target`` is an :class:`apmae.target.Target`, ``net`` an :class:`apmae.model.APMAE`
    on the target's device (evaluated in eval mode, restored afterwards). ``settings``
    (:class:`~apmae.cache.settings.ExtractionSettings`, a dict of its fields, or None for its
    defaults) gives the scenarios per forward pass (``batch_size``), the batches in flight
    (``workers``) and the progress bar, as for a cache; its pattern kind must be ``attention`` and
    its heads ``all``. ``precision`` (an :data:`~apmae.model.loading.ENCODER_PRECISIONS` name, as
    ``encoder.precision``) runs the encoder under autocast. ``on_batch(committed)`` is called after
    each batch is committed. Only the encodings file is written, never the patterns.

    Raises:
        TypeError: a setting passed on its own (``batch_size=...``) rather than inside ``settings``.
        ValueError: bad workers, an empty or inconsistent scenario set, an unknown scaler or
            precision, settings that ask for another pattern kind or sampled heads, or an encoder on
            another device than the target.
        EncodingsMismatchError: ``path`` belongs to another target, encoder, scaler, scenario
            set or sharding, or the encoder's S is not the scenarios' S.
    """
    moved_to_extraction("stream_encodings", moved)
    x = ExtractionSettings.of(settings)
    _check_args(target, net, x, precision)
    get_scaler(scaler)
    check_scenarios(scenarios)
    check_context(target, scenarios.seq_len)
    spec = stream_spec(target, scenarios, net, scaler=scaler, rank=rank, world_size=world_size)
    rows = shard_rows(len(scenarios), rank, world_size)
    encode = partial(encode_batch, target, net, scenarios, scaler=scaler,
                     autocast_dtype=ENCODER_PRECISIONS[precision])
    start = time.perf_counter()
    with _eval_mode(net), EncodingsWriter.open(path, spec, stream_columns(scenarios, rows)) as writer, \
            threads_per_worker(target.device, x.workers):
        before = writer.committed
        _run(writer, rows, encode, x.batch_size, x.workers, x.progress, on_batch)
        written = writer.committed - before
    return ExtractionResult(path=Path(path), rows=len(rows), written=written, seconds=time.perf_counter() - start,
                            bytes=Path(path).stat().st_size)


def _check_args(target: Target, net: APMAE, settings: ExtractionSettings, precision: str) -> None:
    check_choice("precision", precision, tuple(ENCODER_PRECISIONS))
    if settings.pattern_kind != DEFAULT_PATTERN_KIND or settings.heads != ALL:
        raise ValueError(f"streaming encodes the attention of every head, but the settings ask for pattern_kind="
                         f"{settings.pattern_kind!r} and heads={settings.heads!r}: set pattern_kind: "
                         f"{DEFAULT_PATTERN_KIND} and heads: {ALL}")
    net_device = next(net.parameters()).device
    if net_device != target.device:
        raise ValueError(f"the AP-MAE encoder is on {net_device} but the target on {target.device}: the patterns "
                         "stay on the target's device, so move the encoder there (net.to(target.device))")


def _run(writer: EncodingsWriter, rows: np.ndarray, encode: Callable, batch_size: int, workers: int,
         progress: bool, on_batch: Callable[[int], None] | None) -> None:
    pending = rows[writer.committed:]
    batches = [pending[lo:lo + batch_size] for lo in range(0, len(pending), batch_size)]
    bar = tqdm(total=writer.n_rows, initial=writer.committed, unit="scenario", disable=not progress,
               desc=f"target -> AP-MAE -> {writer.path.name}", smoothing=0.1)

    def commit(result: tuple) -> None:
        writer.append(*result)
        bar.n = writer.committed
        bar.refresh()
        if on_batch is not None:
            on_batch(writer.committed)

    try:
        run_in_order(batches, encode, commit, workers=workers)
    finally:
        bar.close()


def encode_batch(target: Target, net: APMAE, scenarios: ScenarioSet, idx: np.ndarray, *, scaler: str,
                 autocast_dtype: Any = None, chunk: int = CHUNK) -> tuple:
    """Scenario rows ``idx`` -> (their :class:`EncodedRows`, their outcome columns (B,)).

    The target's attentions are rounded as the cache stores them and encoded
    a few layers at a time (about ``chunk`` head images), so the float32
    copies the encoder needs never exceed one chunk's worth.
    """
    out = run_batch(target, torch.from_numpy(scenarios.input_ids[idx]), torch.from_numpy(scenarios.label_ids[idx, 0]),
                    middle_pos=torch.from_numpy(scenarios.middle_pos[idx]))
    patterns = as_cached(out.attentions)  # (B, L, H, S, S) bfloat16 on the target's device
    out.attentions = None  # free the float32 stack before the encoder's copies are made
    b, n_layers, n_heads = patterns.shape[:3]
    step = max(1, chunk // (b * n_heads))
    parts = [encode_patterns(net, patterns[:, lo:lo + step], scaler=scaler, input_ids=scenarios.input_ids[idx],
                             query_pos=scenarios.middle_pos[idx], chunk=chunk, autocast_dtype=autocast_dtype)
             for lo in range(0, n_layers, step)]
    outcomes = {"prediction": out.prediction, "probability": out.probability, "correct": out.correct,
                "loss": out.loss}
    return EncodedRows.concatenate(parts, axis=1), {k: v.cpu().numpy() for k, v in outcomes.items()}


def as_cached(attentions: Any) -> Any:
    """Full patterns (B, L, H, S, S) -> the values an attention cache returns for them, as bfloat16.

    The cache keeps the causal lower triangle (diagonal included) in bfloat16
    (:func:`apmae.cache.codec.round_to_bfloat16`) and reads zeros above it; this
    gives the same values on the patterns' device without packing them.
    """
    return round_to_bfloat16(attentions).tril_()


@contextlib.contextmanager
def _eval_mode(net: APMAE):
    was_training = net.training
    net.eval()
    try:
        yield
    finally:
        net.train(was_training)
