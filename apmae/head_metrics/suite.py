"""The head metrics on one target model and rows of its attention cache: tables, heatmaps, one line each.

Glossary: N scenarios, S tokens, L layers, H heads, R relations.

Each ``*_report`` function computes one method and times it; each report
``write``s its per-head CSV tables and L x H heatmaps into a directory,
gives a few scalars, and one ``line`` naming the most striking heads.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Sequence, TYPE_CHECKING

import numpy as np
import torch

from apmae.common.head_tables import HeadPanel, head_heatmap, write_head_table
from apmae.target.contribution import run_contributions, summarize_contributions
from apmae.head_metrics.distance import (DEFAULT_LOCAL_THRESHOLD, DEFAULT_WINDOW, anchor_positions, local_heads,
                                         scenario_distance)
from apmae.head_metrics.maps import DEFAULT_CHUNK_ELEMENTS, MapsResult, model_maps
from apmae.head_metrics.relations import RELATIONS, Relation, code_relations, token_texts
from apmae.head_metrics.report import head_name, token_text, top_heads, write_rows
from apmae.head_metrics.types import (TYPES, HeadTypes, head_types, model_repeat_scores, ordinary_tokens,
                                      pattern_scores, type_counts)

if TYPE_CHECKING:  # annotations only: the classes' modules import torch or transformers
    from apmae.cache.store import AttentionCache
    from apmae.target.access import Target
    from transformers import PreTrainedTokenizerBase

METRIC_HEATMAP = dict(signed=False, labels="{:.2f}")  # scores on their own scales, each cell labelled


def _texts(tokenizer: PreTrainedTokenizerBase, vocab_size: int) -> list[str] | None:
    return None if tokenizer is None else token_texts(tokenizer, vocab_size)


# ---------------------------------------------------------------- contribution weights


@dataclass
class ContributionReport:
    """Per-head means over the scenarios of attention vs contribution weights."""

    method: ClassVar[str] = "contribution"
    target: str
    n_scenarios: int
    columns: dict[str, np.ndarray]  # sink_attention, sink_norm, sink_signed, attention_vs_norm_l1: (L, H)
    seconds: float

    def write(self, out: Path) -> list[Path]:
        c = self.columns
        return [write_head_table(out / "contribution.csv", c),
                head_heatmap(out / "contribution_sink_share.png",
                             [HeadPanel("attention", c["sink_attention"], 0.0, 1.0),
                              HeadPanel("norm-based contribution", c["sink_norm"], 0.0, 1.0),
                              HeadPanel("row L1 |attention - norm-based|", c["attention_vs_norm_l1"], 0.0, 2.0)],
                             title=f"{self.target}: weight on the first token (mean over queries >= 1, "
                                   f"{self.n_scenarios} scenarios)", **METRIC_HEATMAP)]

    def scalars(self) -> dict[str, float]:
        out = {f"{k}_mean": float(v.mean()) for k, v in self.columns.items()}
        return {**out, "seconds": self.seconds}

    def line(self, n: int = 3) -> str:
        c = self.columns
        drops = top_heads(c["sink_attention"] - c["sink_norm"], n)
        shown = ", ".join(f"{head_name(l, h)} {c['sink_attention'][l, h]:.2f}->{c['sink_norm'][l, h]:.2f}"
                          for l, h, _ in drops)
        return (f"contribution [{self.target}, {self.n_scenarios} scenarios, {self.seconds:.1f} s]: first-token share "
                f"attention {c['sink_attention'].mean():.2f} -> norm-based {c['sink_norm'].mean():.2f} "
                f"(mean of {c['sink_norm'].size} heads); largest drops {shown}; "
                f"mean row L1 |a - n| {c['attention_vs_norm_l1'].mean():.2f}")


def contribution_report(target: Target, input_ids: np.ndarray, *, batch_size: int = 8,
                        name: str | None = None) -> ContributionReport:
    """Attention and contribution weights of ``target`` over (N, S) prompts, one forward pass per batch.

    ``name`` labels the report (default: the target's name).
    """


    start = time.perf_counter()
    parts = []
    for lo in range(0, len(input_ids), batch_size):
        batch = run_contributions(target, torch.as_tensor(input_ids[lo:lo + batch_size]))
        parts.append(summarize_contributions(batch))
        del batch
    columns = {name: np.concatenate([getattr(p, name) for p in parts]).mean(0)
               for name in ("sink_attention", "sink_norm", "sink_signed", "attention_vs_norm_l1")}
    return ContributionReport(target=name or target.name, n_scenarios=len(input_ids), columns=columns,
                              seconds=time.perf_counter() - start)


# ---------------------------------------------------------------- WAAD / FAI


@dataclass
class Anchor:
    scenario: int  # index in the scenario set
    task: str
    rank: int
    position: int
    token: int
    text: str
    fai: float


@dataclass
class DistanceReport:
    """Per-head WAAD/FAI means, the local/global split and each scenario's anchor tokens."""

    method: ClassVar[str] = "distance"
    target: str
    n_scenarios: int
    window: int
    local_threshold: float
    columns: dict[str, np.ndarray]  # mean_waad, fai_gini, fai_top_share: (L, H)
    local: np.ndarray  # (L, H) bool
    anchors: list[Anchor]
    seconds: float

    def write(self, out: Path) -> list[Path]:
        focus = np.where(self.local, "local", "global")
        anchor_rows = [[a.scenario, a.task, a.rank, a.position, a.token, a.text, a.fai] for a in self.anchors]
        return [write_head_table(out / "distance.csv", {**self.columns, "focus": focus}),
                head_heatmap(out / "distance.png",
                             [HeadPanel(f"mean WAAD (W={self.window}; local if <= "
                                        f"{self.local_threshold * self.window:g})",
                                        self.columns["mean_waad"], 0.0, float(self.window)),
                              HeadPanel("FAI Gini", self.columns["fai_gini"], 0.0, 1.0),
                              HeadPanel("FAI top-5 % share", self.columns["fai_top_share"], 0.0, 1.0)],
                             title=f"{self.target}: attention distance and future attention influence "
                                   f"({self.n_scenarios} scenarios)", **METRIC_HEATMAP),
                write_rows(out / "anchors.csv", ["scenario", "task", "rank", "position", "token_id", "token", "fai"],
                           anchor_rows)]

    def scalars(self) -> dict[str, float]:
        return {"local_heads": float(self.local.sum()), "global_heads": float((~self.local).sum()),
                "mean_waad": float(self.columns["mean_waad"].mean()), "seconds": self.seconds}

    def line(self, n: int = 2) -> str:
        waad = self.columns["mean_waad"]
        most_local = ", ".join(f"{head_name(l, h)} {v:.2f}" for l, h, v in top_heads(waad, n, largest=False))
        most_global = ", ".join(f"{head_name(l, h)} {v:.2f}" for l, h, v in top_heads(waad, n))
        sharp = ", ".join(f"{head_name(l, h)} {v:.2f}" for l, h, v in top_heads(self.columns["fai_gini"], n))
        common = Counter(a.text for a in self.anchors if a.rank == 0).most_common(3)
        anchors = ", ".join(f"{t!r} x{c}" for t, c in common) or "none (no global head)"
        return (f"WAAD/FAI [{self.target}, W={self.window}, {self.n_scenarios} scenarios, {self.seconds:.1f} s]: "
                f"{int(self.local.sum())} local / {int((~self.local).sum())} global heads (local: mean WAAD <= "
                f"{self.local_threshold * self.window:g}); most local {most_local}; most global {most_global}; "
                f"most concentrated FAI (Gini) {sharp}; top anchors {anchors}")


def distance_report(cache: AttentionCache, rows: Sequence[int], *, tokenizer: PreTrainedTokenizerBase | None = None,
                    window: int = DEFAULT_WINDOW, local_threshold: float = DEFAULT_LOCAL_THRESHOLD,
                    anchors_per_scenario: int = 5, name: str | None = None) -> DistanceReport:
    """WAAD/FAI of the cached patterns of ``rows`` of ``cache`` (an :class:`apmae.cache.AttentionCache`).

    ``tokenizer`` decodes the anchor tokens (ids are shown without one); ``name``
    labels the report (default: the cache's model).
    """
    start = time.perf_counter()
    per = [scenario_distance(cache.scenario(int(r)), window=window) for r in rows]
    columns = {name: np.mean([getattr(p, name) for p in per], axis=0)
               for name in ("mean_waad", "fai_gini", "fai_top_share")}
    local = local_heads(columns["mean_waad"], window=window, local_threshold=local_threshold)
    texts = _texts(tokenizer, int(cache.input_ids.max()) + 1)
    anchors = []
    for r, p in zip(rows, per):
        if local.all():
            break
        positions, scores = anchor_positions(p.fai, ~local, top_k=anchors_per_scenario)
        ids = cache.input_ids[int(r)]
        anchors += [Anchor(int(cache.scenario_index[r]), cache.task_names[int(cache.task[r])], rank, int(pos),
                           int(ids[pos]), token_text(texts, int(ids[pos])), float(score))
                    for rank, (pos, score) in enumerate(zip(positions, scores))]
    return DistanceReport(target=name or str(cache.target["model"]), n_scenarios=len(rows), window=window,
                          local_threshold=local_threshold, columns=columns, local=local, anchors=anchors,
                          seconds=time.perf_counter() - start)


# ---------------------------------------------------------------- MAPS


@dataclass
class MapsReport:
    """MAPS scores of every head on the code relations, with the relations' pair counts."""

    method: ClassVar[str] = "maps"
    target: str
    result: MapsResult
    relations: list[Relation]
    skipped: dict[str, str]
    texts: list[str] | None
    seconds: float
    examples: int = 5  # example pairs listed per relation

    def write(self, out: Path) -> list[Path]:
        r = self.result
        columns = {}
        for i, name in enumerate(r.relations):
            columns[name], columns[f"{name}_suppression"] = r.scores[i], r.suppression[i]
        labels = [f"{name} ({r.pairs[i]} pairs, top-{r.k[i]})" for i, name in enumerate(r.relations)]
        panels = [HeadPanel(label, r.scores[i], 0.0, 1.0) for i, label in enumerate(labels)]
        panels += [HeadPanel(f"suppression: {label}", r.suppression[i], 0.0, 1.0) for i, label in enumerate(labels)]
        return [write_head_table(out / "maps_scores.csv", columns), self._write_top_pairs(out),
                self._write_relations(out),
                head_heatmap(out / "maps.png", panels, columns=len(labels), **METRIC_HEATMAP,
                             title=f"{self.target}: MAPS scores per relation (top row) and suppression (bottom row)")]

    def _write_top_pairs(self, out: Path) -> Path:
        r, rows = self.result, []
        for (layer, head, rank), value in np.ndenumerate(r.top_values):
            source, target = r.top_pairs[layer, head, rank]
            rows.append([layer, head, rank, int(source), token_text(self.texts, int(source)), int(target),
                         token_text(self.texts, int(target)), value])
        return write_rows(out / "maps_top_pairs.csv",
                          ["layer", "head", "rank", "source_id", "source", "target_id", "target", "value"], rows)

    def _write_relations(self, out: Path) -> Path:
        rows = [[rel.name, rel.k, len(rel.pairs), rel.description, "; ".join(
            f"{token_text(self.texts, int(s))!r}->{token_text(self.texts, int(t))!r}"
            for s, t in rel.pairs[:self.examples]), ""] for rel in self.relations]
        rows += [[name, "", 0, "", "", why] for name, why in self.skipped.items()]
        return write_rows(out / "maps_relations.csv", ["relation", "k", "pairs", "description", "examples", "skipped"],
                          rows)

    def scalars(self) -> dict[str, float]:
        r = self.result
        out = {f"{name}/best_score": float(r.scores[i].max()) for i, name in enumerate(r.relations)}
        out.update({f"{name}/pairs": float(r.pairs[i]) for i, name in enumerate(r.relations)})
        return {**out, "seconds": self.seconds}

    def line(self, n: int = 2) -> str:
        r = self.result
        parts = [f"{name} ({r.pairs[i]} pairs, top-{r.k[i]}) "
                 + ", ".join(f"{head_name(l, h)} {v:.2f}" for l, h, v in top_heads(r.scores[i], n))
                 for i, name in enumerate(r.relations)]
        parts += [f"{name} skipped (no pairs)" for name in self.skipped]
        return f"MAPS [{self.target}, {self.seconds:.1f} s]: " + "; ".join(parts)


def maps_report(target: Target, corpus_ids: np.ndarray, *, relations: Sequence[str] = RELATIONS, max_pairs: int = 2000,
                first_mlp: bool = False, chunk_elements: int = DEFAULT_CHUNK_ELEMENTS, top_n: int = 5,
                name: str | None = None) -> MapsReport:
    """MAPS on ``target``'s parameters with the code relations mined from the (N, S) corpus token ids.

    ``name`` labels the report (default: the target's name); the other
    arguments are those of :func:`apmae.head_metrics.relations.code_relations`
    and :func:`apmae.head_metrics.maps.model_maps`.

    Raises:
        ValueError: no tokenizer, corpus ids outside the model's vocabulary, or
            no relation with a pair (each skipped one says what to change).
    """
    start = time.perf_counter()
    vocab = int(target.model.get_output_embeddings().weight.shape[0])
    if target.tokenizer is None:
        raise ValueError(f"target {target.name!r} has no tokenizer; MAPS relations are built from token texts")
    if int(corpus_ids.max()) >= vocab:
        raise ValueError(f"the corpus holds token id {int(corpus_ids.max())} but {target.name!r} has {vocab} tokens: "
                         "give MAPS a corpus tokenized with this target's tokenizer")
    found = code_relations(target.tokenizer, corpus_ids, vocab_size=vocab, names=relations, max_pairs=max_pairs)
    if not found.relations:
        raise ValueError(f"no MAPS relation has a pair for {target.name!r}: " + "; ".join(
            f"{k}: {v}" for k, v in found.skipped.items()))
    result = model_maps(target.model, found.relations, first_mlp=first_mlp, chunk_elements=chunk_elements,
                        top_n=top_n)
    return MapsReport(target=name or target.name, result=result, relations=found.relations, skipped=found.skipped,
                      texts=found.texts, seconds=time.perf_counter() - start)


# ---------------------------------------------------------------- head types


@dataclass
class TypesReport:
    """Head-type scores (:mod:`apmae.head_metrics.types`) of every head, and the types they pass."""

    method: ClassVar[str] = "types"
    target: str
    n_scenarios: int
    repeat_length: int
    n_sequences: int
    types: HeadTypes
    seconds: float

    def write(self, out: Path) -> list[Path]:
        t = self.types
        return [write_head_table(out / "types.csv", t.columns()),
                head_heatmap(out / "types.png",
                             [HeadPanel(f"{k} (type if >= {t.thresholds[k]:g})", t.scores[k], 0.0, 1.0) for k in TYPES],
                             columns=3, **METRIC_HEATMAP,
                             title=f"{self.target}: head-type scores ({self.n_scenarios} scenarios; duplicate and "
                                   f"induction on {self.n_sequences} repeated random blocks of {self.repeat_length})")]

    def scalars(self) -> dict[str, float]:
        return {**{f"{k}_heads": float(v) for k, v in type_counts(self.types).items()}, "seconds": self.seconds}

    def line(self, n: int = 2) -> str:
        t, counts = self.types, type_counts(self.types)
        parts = [f"{k} {counts[k]} (" + ", ".join(f"{head_name(l, h)} {v:.2f}" for l, h, v in top_heads(t.scores[k], n))
                 + ")" for k in TYPES]
        return (f"head types [{self.target}, {self.n_scenarios} scenarios, {self.seconds:.1f} s]: heads passing "
                f"each type's threshold (best two): " + "; ".join(parts))


def types_report(target: Target, cache: AttentionCache, rows: Sequence[int], *, window: int = DEFAULT_WINDOW,
                 thresholds: dict[str, float] | None = None, repeat_length: int = 32, n_sequences: int = 4,
                 seed: int = 0, name: str | None = None) -> TypesReport:
    """Head-type scores: the cached patterns of ``rows`` of ``cache`` and ``target`` on repeated random tokens.

    The random blocks are drawn from the ordinary tokens of the cache's
    scenarios and start with their first token; the block is shortened to fit
    the cache's S (1 + 2n <= S) and the distinct tokens available.
    """
    start = time.perf_counter()
    # one scenario at a time: a model's (N, L, H, S, S) stack would not fit in memory at paper scale
    per = [pattern_scores(cache.scenario(int(r))[None], window=window) for r in rows]
    scores = {k: np.mean([p[k] for p in per], axis=0) for k in per[0]}
    special = list(getattr(target.tokenizer, "all_special_ids", None) or [])
    candidates = ordinary_tokens(cache.input_ids[np.asarray(rows)], special)
    length = min(repeat_length, (cache.seq_len - 1) // 2, len(candidates))
    scores.update(model_repeat_scores(target, candidates, first=int(cache.input_ids[int(rows[0]), 0]), length=length,
                                      n_sequences=n_sequences, seed=seed))
    kv_heads = getattr(target.model.config, "num_key_value_heads", None)
    types = head_types(scores, kv_heads=kv_heads, thresholds=thresholds)
    return TypesReport(target=name or target.name, n_scenarios=len(rows), repeat_length=length,
                       n_sequences=n_sequences, types=types, seconds=time.perf_counter() - start)
