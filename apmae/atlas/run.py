"""The head atlas stage: every head-level result of a run on one page.

    apmae atlas --run-id PROBE_RUN [--run-id APMAE_RUN] [--cache 'CACHE.rank*.h5'] [--out DIR]
    apmae atlas --artifacts DIR [DIR ...] [--cache ...] [--out DIR]

Reads the per-head tables a run's stages wrote (:mod:`apmae.atlas.sources`),
from MLflow runs named by id (downloaded through :mod:`apmae.common.tracking`)
or from artifact folders, and writes under ``<out>/atlas/``:

- ``index.html``: the self-contained page (no network needed to view it):
  the L x H grid coloured by any column, a sortable, filterable table and a
  panel per head with its mean pattern, its families' medoids and every
  metric beside the model's distribution (patterns need ``--cache``);
- ``heads.csv``: one row per head, every column found (empty where a head
  was not measured);
- ``grid.png`` and ``grid.svg``: the grid of the ``--colour`` column, for papers.

Given run ids, the files are logged as artifacts ``atlas/`` of the first run
(the probe run: MLflow's artifact view shows the page) unless ``--no-log``.
A stage the run lacks is listed as missing on the page, never filled in.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from apmae.atlas.figures import grid_figure
from apmae.atlas.page import page_data, write_page
from apmae.atlas.sources import AtlasTable, find, read_table
from apmae.atlas.thumbnails import MEAN_SIDE, MEDOID_SIDE, Thumbnails, family_thumbnails, mean_thumbnails
from apmae.cache.store import AttentionCache
from apmae.common.head_tables import write_head_table
from apmae.common.tracking import download_run_artifacts, log_to_run

SUMMARY = "join every head-level result of a run into one page: atlas/index.html, heads.csv, grid PNG/SVG"
# a run's folders the atlas reads
INPUT_FOLDERS = ("head_importance", "probe-protocol", "clusters", "head_metrics", "interventions")
COLOUR_ORDER = ("crossfit_importance", "importance", "shap", "zeroed_delta_accuracy", "integrated_gradients", "waad", "families")


@dataclass
class AtlasReport:
    """What the atlas stage wrote and found."""

    table: AtlasTable
    files: dict[str, Path]  # artifact path (``atlas/index.html``, ...) -> file
    colour: str
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def page(self) -> Path:
        return self.files["atlas/index.html"]

    def lines(self) -> list[str]:
        t = self.table
        size = self.page.stat().st_size / 1e6
        out = [f"Head atlas: {t.n_layers} x {t.n_heads} heads, {len(t.columns)} columns, page {size:.2f} MB "
               f"({sum(self.seconds.values()):.1f} s): {self.page}"]
        if t.missing:
            out.append("  missing (the run lacks their stage): " + ", ".join(sorted(t.missing)))
        return out


def default_colour(table: AtlasTable) -> str:
    """The first of :data:`COLOUR_ORDER` the run has, else its first numeric column."""
    numeric = [name for name, c in table.columns.items() if c.numeric]
    for name in COLOUR_ORDER:
        if name in numeric:
            return name
    if not numeric:
        raise ValueError("the run has no numeric per-head column to draw")
    return numeric[0]


def write_heads_csv(path: Path, table: AtlasTable) -> Path:
    """``heads.csv``: ``layer,head`` and every column; a head without a value has an empty cell."""
    columns = {}
    for name, c in table.columns.items():
        columns[name] = c.values.astype(object)  # Python floats and labels
        if c.numeric:
            columns[name][np.isnan(c.values)] = ""
    return write_head_table(path, columns)


def pattern_rows(cache: AttentionCache, n: int) -> np.ndarray:
    """``n`` cache rows spread evenly over it (all of them when it has fewer)."""
    return np.unique(np.linspace(0, len(cache) - 1, min(n, len(cache))).round().astype(int))


def thumbnails(roots: Sequence[Path], cache: AttentionCache, *, n_rows: int, mean_side: int = MEAN_SIDE,
               medoid_side: int = MEDOID_SIDE) -> Thumbnails:
    """Mean patterns over ``n_rows`` rows of ``cache`` and family medoids (when a ``clusters/labels.npz`` is found)."""
    if cache is None:
        return Thumbnails(mean=None, n_mean_rows=0)
    rows = pattern_rows(cache, n_rows)
    out = Thumbnails(mean=mean_thumbnails(cache, rows, side=mean_side), n_mean_rows=len(rows))
    labels = find(roots, "**/clusters/labels.npz")
    if labels:
        out.families, out.family_sizes = family_thumbnails(cache, labels[0][1], side=medoid_side)
    return out


def build_atlas(roots: Sequence[str | Path], out_dir: str | Path, *, cache: AttentionCache | None = None,
                target: str | None = None, colour: str | None = None, n_pattern_rows: int = 32,
                title: str | None = None, links: dict[str, str] | None = None) -> AtlasReport:
    """Read the artifact folders ``roots`` and write ``<out_dir>/atlas/`` (see the module docstring).

    ``cache`` is an :class:`apmae.cache.AttentionCache` of the run's target, or anything that reads patterns
    as one does (:class:`apmae.cache.live.LivePatterns`); None: no patterns. ``links`` (text -> address)
    are shown under the page's title, e.g. a report the atlas belongs to.

    Raises:
        ValueError: no per-head table under ``roots``, tables of different shapes, a cache of another
            L x H, or a ``colour`` column the run lacks.
    """
    roots = [Path(r) for r in roots]
    times = {}
    start = time.perf_counter()
    table = read_table(roots, target=target)
    if cache is not None and (cache.n_layers, cache.n_heads) != (table.n_layers, table.n_heads):
        raise ValueError(f"the cache has {cache.n_layers} x {cache.n_heads} heads but the run's tables "
                         f"{table.n_layers} x {table.n_heads}: give the cache of the run's own target")
    colour = colour or default_colour(table)
    if colour not in table.columns or not table.columns[colour].numeric:
        raise ValueError(f"--colour {colour!r} is not a numeric column of this run; choose from "
                         f"{[n for n, c in table.columns.items() if c.numeric]}")
    times["tables"] = time.perf_counter() - start
    start = time.perf_counter()
    thumbs = thumbnails(roots, cache, n_rows=n_pattern_rows)
    times["patterns"] = time.perf_counter() - start
    start = time.perf_counter()
    out = Path(out_dir) / "atlas"
    title = title or f"Head atlas{f' of {table.target}' if table.target else ''}"
    data = page_data(table, thumbs, title=title, colour=colour, seq_len=None if cache is None else cache.seq_len,
                     links=links)
    files = {"atlas/index.html": write_page(out / "index.html", data),
             "atlas/heads.csv": write_heads_csv(out / "heads.csv", table)}
    png, svg = grid_figure(table.columns[colour], out / "grid", title=f"{title}: {colour}")
    files.update({"atlas/grid.png": png, "atlas/grid.svg": svg})
    times["page and figures"] = time.perf_counter() - start
    return AtlasReport(table=table, files=files, colour=colour, seconds=times)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="apmae atlas", description=SUMMARY)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--run-id", action="append", help="MLflow run whose artifacts are read (repeatable; the "
                                                          "first, the probe run, receives the atlas)")
    source.add_argument("--artifacts", nargs="+", help="artifact folders read instead of MLflow runs")
    parser.add_argument("--tracking-uri", default=None, help="MLflow store (default: $MLFLOW_TRACKING_URI)")
    parser.add_argument("--cache", default=None, help="attention cache file(s) or glob of the run's target: "
                                                      "mean patterns and family medoids")
    parser.add_argument("--out", default="atlas-out", help="folder that receives atlas/")
    parser.add_argument("--target", default=None, help="head_metrics/<target> folder to read (default: the run's "
                                                       "training target)")
    parser.add_argument("--colour", default=None, help=f"column of the grid figure (default: first of "
                                                       f"{', '.join(COLOUR_ORDER)})")
    parser.add_argument("--pattern-rows", type=int, default=32, help="scenarios averaged into each mean pattern")
    parser.add_argument("--no-log", action="store_true", help="do not log the atlas into the first run")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> AtlasReport:
    args = parse_args(argv)
    if args.pattern_rows < 1:
        raise SystemExit(f"--pattern-rows {args.pattern_rows}: average at least one scenario")
    cache = AttentionCache(args.cache) if args.cache else None
    with tempfile.TemporaryDirectory() as tmp:
        roots = args.artifacts or [download_run_artifacts(run, Path(tmp) / run, tracking_uri=args.tracking_uri,
                                                          folders=INPUT_FOLDERS) for run in args.run_id]
        try:
            report = build_atlas(roots, args.out, cache=cache, target=args.target, colour=args.colour,
                                 n_pattern_rows=args.pattern_rows)
        except ValueError as err:
            raise SystemExit(f"error: {err}") from err
    if args.run_id and not args.no_log:
        log_to_run(args.run_id[0], tracking_uri=args.tracking_uri, artifacts=report.files)
    print("\n".join(report.lines()), flush=True)
    return report


__all__ = ["AtlasReport", "INPUT_FOLDERS", "SUMMARY", "build_atlas", "default_colour", "main", "write_heads_csv"]
