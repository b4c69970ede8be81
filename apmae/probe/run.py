"""The cross-fitted probe protocol as a command: every scenario scored out of fold, baselines, tests, heads.

    apmae crossfit --encodings ENC.h5 --out DIR [--repeats 5] [--splits 5] [--permutations 200]
        [--attention row] [--controls row_mass] [--readouts apmae apmae_row apmae_rowattn]
        [--models l1 catboost neural]
        [--rank-heads-by row] [--run-id RUN --tracking-uri URI]

(``python -m apmae crossfit ...`` is the same command.) ``ENC.h5`` is an encodings file
(:mod:`apmae.encodings.store`, e.g. the one a probe fit writes beside its cache, or one
streamed from a target), a list of rank shards, or a glob merging them. Writes the
files of :mod:`apmae.probe.summary` into ``DIR`` and, with a run id, logs them and the
``probe_cv/...`` metrics to that MLflow run.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

from apmae.common.tracking import log_to_run
from apmae.encodings.store import EncodingSet
from apmae.probe.crossfit import ProtocolSettings
from apmae.probe.features import FEATURE_SETS, ProbeData
from apmae.probe.models import MODELS
from apmae.probe.report import ProbePlan, ProbeReport, run_protocol
from apmae.probe.summary import control_line, protocol_metrics, report_lines, write_report

SUMMARY = "cross-fit the correctness probe: out-of-fold scores, task-aware baselines, permutation tests, heads"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="apmae crossfit", description=SUMMARY)
    p.add_argument("--encodings", required=True, nargs="+", help="encodings file(s) or a glob of rank shards")
    p.add_argument("--out", required=True, help="folder for the tables, scores, ranking and figures")
    d = ProtocolSettings()
    p.add_argument("--splits", type=int, default=d.n_splits, help="outer folds per repeat, grouped by source file")
    p.add_argument("--repeats", type=int, default=d.n_repeats, help="repeats of the outer folds")
    p.add_argument("--inner-splits", type=int, default=d.inner_splits, help="inner folds choosing C")
    p.add_argument("--permutations", type=int, default=d.permutations, help="label permutations per claim (at most)")
    p.add_argument("--bootstrap", type=int, default=d.bootstrap_resamples, help="file-bootstrap resamples")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--workers", type=int, default=d.workers, help="threads fitting folds at once")
    plan = ProbePlan()
    choices = sorted(FEATURE_SETS)
    p.add_argument("--attention", nargs="*", default=list(plan.attention), choices=choices,
                   help="attention feature sets: alone and on top of confidence + task, permutation-tested")
    p.add_argument("--controls", nargs="*", default=list(plan.controls), choices=choices,
                   help="attention controls: alone and on top of confidence + task, not permutation-tested")
    p.add_argument("--readouts", nargs="*", default=list(plan.readouts), choices=choices,
                   help="AP-MAE readouts; apmae* picks one per fold by inner CV")
    p.add_argument("--models", nargs="*", default=list(plan.other_models), choices=sorted(set(MODELS) - {"l2"}),
                   help="other models run on --model-features")
    p.add_argument("--model-features", default=plan.model_features, choices=choices)
    p.add_argument("--rank-heads-by", default=plan.rank_heads_by, help="feature set whose l2 probe ranks the heads")
    p.add_argument("--global-permutation", action="store_true", help="shuffle labels globally, not within task")
    p.add_argument("--run-id", default=None, help="MLflow run to log into")
    p.add_argument("--tracking-uri", default=None)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> ProbeReport:
    """``apmae crossfit [arguments]``: run the protocol on the encodings named in ``argv`` and print its table."""
    args = parse_args(argv)
    try:
        settings = ProtocolSettings(n_splits=args.splits, n_repeats=args.repeats, inner_splits=args.inner_splits,
                                    permutations=args.permutations, bootstrap_resamples=args.bootstrap,
                                    seed=args.seed, workers=args.workers)
        plan = ProbePlan(attention=tuple(args.attention), controls=tuple(args.controls), readouts=tuple(args.readouts),
                         other_models=tuple(args.models), model_features=args.model_features,
                         rank_heads_by=args.rank_heads_by, within_task=not args.global_permutation)
    except ValueError as e:
        raise SystemExit(f"apmae crossfit: {e}") from None
    encodings = EncodingSet(args.encodings[0] if len(args.encodings) == 1 else args.encodings)
    report = run_protocol(ProbeData.from_encodings(encodings), settings=settings, plan=plan,
                          noise=control_line(encodings))
    files = write_report(report, args.out)
    print("\n".join(report_lines(report)))
    print(f"  files: {Path(args.out)} ({', '.join(p.name for p in files)})")
    if args.run_id:
        log_to_run(args.run_id, tracking_uri=args.tracking_uri,
                   artifacts={f"probe-protocol/{p.name}": p for p in files}, metrics=protocol_metrics(report))
    return report


__all__ = ["SUMMARY", "main", "parse_args"]
