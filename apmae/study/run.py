"""``make study``: the paper's five claims on a real model and real Java, with a claims report.

    python -m apmae.study.run [--study-dir artifacts/study] [--corpus PATH] [--target DIR] [--cross-target DIR]
                              [--settings JSON] [--protocol JSON] [CLI overrides of the AP-MAE fit]

Stages, each recorded under ``<study dir>/stages/`` and skipped when rerun unchanged
(:mod:`apmae.study.stages`):

1. **pilot**: a small pilot per task measures the target's correct rate; :func:`apmae.study.plan.allocate_counts`
   turns the rates into per-task counts;
2. **mining**: the study's scenarios (noise control included), split by source file;
3. **apmae**: AP-MAE trained on a cache of only the heads it samples (``extraction.heads``), validated
   against the trivial and the visible-neighbour baselines on the target and on a second model; the
   sampled cache is removed once AP-MAE is exported (``keep_training_cache`` keeps it);
4. **encodings**: every head of every scenario streamed through the target and AP-MAE into one
   encodings file, no pattern cache written;
5. **protocol**: the cross-fitted probe protocol on every scenario (:mod:`apmae.probe.report`), and a
   head ranking fitted on the train and val scenarios only, for the interventions;
6. **interventions**: heads zeroed by that ranking on held-out test scenarios, against random sets;
7. **patterns**: recurring pattern families per head on a seeded draw of scenarios, beside the noise control;
8. **atlas**: the head atlas of the study;
9. **report**: the claims report (:mod:`apmae.study.claims`), logged to the study's MLflow run.

Figures that show patterns compute them with the target when drawn (:class:`apmae.cache.live.LivePatterns`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import yaml

from apmae.atlas.run import build_atlas
from apmae.cache.extract import target_short_name
from apmae.cache.live import LivePatterns
from apmae.common.head_tables import write_head_table
from apmae.common.tracking import HEADLINE, artifact_location, log_to_run, tag_training_experiment, tracking_uri
from apmae.demo.console import quiet_libraries
from apmae.demo.run import summarize, tree_bytes
from apmae.encodings.store import EncodingSet, EncodingSubset, encoder_hash, encodings_path
from apmae.encodings.stream import stream_encodings
from apmae.interventions.sweep import InterventionScenarios, evaluate
from apmae.mining.miner import mine_scenarios
from apmae.mining.scenario_set import SPLITS, ScenarioSet
from apmae.mining.settings import MiningConfig
from apmae.mining.tasks import CONTROL_TASK, task_names
from apmae.model.loading import load_encoder
from apmae.patterns.cluster_probe import ClusterProbeConfig
from apmae.patterns.run import run_recurring_patterns
from apmae.patterns.settings import PatternSettings
from apmae.probe.crossfit import Protocol, ProtocolSettings
from apmae.probe.features import ProbeData
from apmae.probe.importance import head_importance
from apmae.probe.report import ProbePlan, run_protocol
from apmae.probe.summary import control_line, protocol_metrics, report_lines, write_report
from apmae.study.claims import headline, probe_numbers, write_claims
from apmae.study.corpus import Corpus, CorpusError, resolve_corpus
from apmae.study.interventions import run_study_interventions
from apmae.study.plan import PILOT_SEED_OFFSET, StudySettings, allocate_counts, pilot_rates
from apmae.study.stages import StageBook, stage_key
from apmae.target.access import Target, load_target

DEFAULT_CONFIGS = ("configs/demo/apmae.yaml", "configs/study/apmae.yaml")
PROTOCOL_FOLDER = "probe-protocol"
HELDOUT_RANKING = "heldout_ranking.csv"  # the row probe's head importance fitted on train and val scenarios only
EXPERIMENT = "study"


# ---------------------------------------------------------------- settings

def protocol_settings(overrides: dict[str, Any] | None = None) -> ProtocolSettings:
    """The study's protocol: 2 repeats of 5 grouped folds, 40 within-task permutations per claim with the normal
    tail as p (a permutation reruns a whole cross-fit: about 6 s at 3,000 scenarios on two cores, so the 200
    that a count-based p needs under Holm over the table's 8 claims would take 40 minutes a claim)."""
    return ProtocolSettings(**{"n_repeats": 2, "permutations": 40, "permutation_p": "normal", "progress": True,
                               **(overrides or {})})


def protocol_plan() -> ProbePlan:
    """The baselines, the row scalars, and the AP-MAE readout the demo's protocol chose in every fold (the
    row-conditioned one, ``apmae_rowattn``) as the tested readout; the paper's pooled encodings (``apmae``) and
    the attention masses the readout weights by (``row_mass``) alone and on top, untested. L1 beside L2
    (CatBoost and the neural probe cost too much at this size on two cores: ``apmae crossfit`` runs them)."""
    return ProbePlan(readouts=("apmae_rowattn",), controls=("row_mass", "apmae"), other_models=("l1",))


def mining_config(settings: StudySettings, counts: dict[str, int]) -> MiningConfig:
    return MiningConfig(tasks=list(counts), seq_len=settings.seq_len, n_per_task=dict(counts),
                        max_per_file=settings.max_per_file, max_label_tokens=settings.max_label_tokens,
                        splits=settings.splits, seed=settings.seed, exhaustive=settings.exhaustive,
                        prompt_format="auto")


# ---------------------------------------------------------------- the stages

class Study:
    """One study folder: its settings, corpus, stage records, and what the stages hand each other."""

    def __init__(self, folder: str | Path, settings: StudySettings, corpus: Corpus, *,
                 configs: Sequence[str] = DEFAULT_CONFIGS, fit_args: Sequence[str] = (),
                 protocol: dict[str, Any] | None = None) -> None:
        self.folder, self.settings, self.corpus = Path(folder), settings, corpus
        self.configs, self.fit_args, self.protocol = list(configs), list(fit_args), dict(protocol or {})
        self.book = StageBook(self.folder)
        self.book.key = stage_key("study", {"corpus": corpus.sha256 or corpus.path})
        self._target: Target | None = None
        self.results: dict[str, dict[str, Any]] = {}

    # -- shared pieces
    def disk_bytes(self) -> int:
        """Bytes the study's folder takes now."""
        return tree_bytes(self.folder)

    def target(self) -> Target:
        """The studied model, loaded once (eager attention: the patterns are read)."""
        if self._target is None:
            self._target = load_target(self.settings.target, device="auto")  # a GPU when there is one
        return self._target

    def scenario_module(self, counts: dict[str, int]) -> Any:
        from apmae.datamodules.java_scenarios import JavaScenarioDataModule  # imports Lightning (~5 s)

        return JavaScenarioDataModule(sources=self.corpus.path, tokenizer=self.settings.target,
                                      mining=mining_config(self.settings, counts),
                                      cache_dir=str(self.folder / "scenarios"), mining_workers=2)

    def encodings(self) -> EncodingSet:
        return EncodingSet(self.results["encodings"]["path"])

    # -- 1 pilot
    def pilot(self) -> dict[str, Any]:
        s = self.settings
        tasks = [t for t in task_names() if t != CONTROL_TASK]
        config = MiningConfig(tasks=tasks, seq_len=s.seq_len, n_per_task=s.pilot_per_task,
                              max_per_file=s.max_per_file, max_label_tokens=s.max_label_tokens,
                              splits=(1.0, 0.0, 0.0), seed=s.seed + PILOT_SEED_OFFSET, prompt_format="auto")
        pilot = mine_scenarios(self.corpus.path, s.target, config, num_workers=2, progress=False).scenarios
        correct = first_token_correct(self.target(), pilot)
        rates, n = pilot_rates(pilot.task, correct, list(pilot.task_names))
        allocation = allocate_counts(rates, n, s)
        return {"allocation": dataclasses.asdict(allocation), "rule": allocation.rule(s), "scenarios": len(pilot)}

    # -- 2 mining
    def mining(self) -> dict[str, Any]:
        module = self.scenario_module(self.results["pilot"]["allocation"]["counts"])
        scenarios = module.scenario_set()
        names = list(scenarios.task_names)
        return {"path": str(module.scenario_path), "scenarios": len(scenarios), "fingerprint": scenarios.fingerprint(),
                "files": int(len(set(scenarios.source_id.tolist()) - {""})),
                "per_task": {t: int((scenarios.task == i).sum()) for i, t in enumerate(names)},
                "per_split": {name: int((scenarios.split == i).sum()) for i, name in enumerate(SPLITS)},
                "meta": {k: v for k, v in scenarios.meta.items() if isinstance(v, (int, float, str))}}

    def scenarios(self) -> ScenarioSet:
        return ScenarioSet.load(self.results["mining"]["path"])

    # -- 3 AP-MAE
    def overlay(self) -> Path:
        """The study's overrides of the AP-MAE configs, as a config file beside the study's records."""

        s, f = self.settings, self.folder
        counts = self.results["pilot"]["allocation"]["counts"]
        mining = {k: (list(v) if isinstance(v, tuple) else v)
                  for k, v in dataclasses.asdict(mining_config(s, counts)).items()}
        overlay = {
            "trainer": {"default_root_dir": str(f / "runs"), "max_steps": s.apmae_steps,
                        "val_check_interval": max(1, s.apmae_steps // 2)},
            "model": {"init_args": {"recipe": {"export_dir": str(f / "apmae")}}},
            "data": {"init_args": {
                "target": s.target, "extra_targets": [s.cross_target] if s.cross_target else [],
                "cache_dir": str(f / "cache"), "head_selection": s.head_sample, "seed": s.seed,
                "extraction": {"heads": s.head_sample, "head_seed": s.seed},
                "scenarios": {"init_args": {"sources": self.corpus.path, "tokenizer": s.target,
                                            "cache_dir": str(f / "scenarios"), "mining": mining}}}},
        }
        path = f / "apmae-overrides.yaml"
        path.write_text("# written by python -m apmae.study.run: the study's paths, sizes and mining\n"
                        + yaml.safe_dump(overlay, sort_keys=False))
        return path

    def apmae(self) -> dict[str, Any]:
        from apmae.cli import cli_main  # import cost ~5 s (Lightning): the stages before it never pay it

        args = ["fit", *[a for c in self.configs for a in ("--config", c)], "--config", str(self.overlay()),
                *self.fit_args]
        cli = cli_main(args)
        summary = summarize(cli)
        cache_dir = self.folder / "cache"
        cache_bytes = sum(p.stat().st_size for p in cache_dir.glob("*.h5")) if cache_dir.is_dir() else 0
        cli.datamodule.teardown("fit")  # closes the sampled cache's files before they are removed
        if not self.settings.keep_training_cache and cache_dir.is_dir():
            shutil.rmtree(cache_dir)
        return {"summary": dataclasses.asdict(summary), "scaler": cli.datamodule.scaler, "fit_args": args,
                "training_cache_bytes": cache_bytes, "training_cache_kept": self.settings.keep_training_cache}

    # -- 4 encodings
    def stream(self) -> dict[str, Any]:
        net = load_encoder(self.results["apmae"]["summary"]["export_dir"]).to(self.target().device)
        path = encodings_path(self.folder / "encodings", target_short_name(self.settings.target), encoder_hash(net))
        path.parent.mkdir(parents=True, exist_ok=True)
        # the extraction's defaults: scenarios per forward pass, batches in flight, a progress bar
        result = stream_encodings(self.target(), self.scenarios(), net, path, scaler=self.results["apmae"]["scaler"])
        return {"path": str(path), "rows": result.rows, "bytes": result.bytes}

    # -- 5 protocol
    def run_protocol(self) -> dict[str, Any]:
        encodings = self.encodings().load()
        data = ProbeData.from_encodings(encodings)
        check_both_classes(data.correct, self.settings.target)
        settings, plan = protocol_settings(self.protocol), protocol_plan()
        report = run_protocol(data, settings=settings, plan=plan, noise=control_line(encodings))
        folder = self.folder / PROTOCOL_FOLDER
        files = write_report(report, folder)
        # the interventions' ranking: fitted on train and val scenarios only, so the test ones stay held out
        test = encodings.split[data.rows] == SPLITS.index("test")
        ranked = Protocol(data.subset(~test), dataclasses.replace(settings, n_repeats=1))
        importance = head_importance(ranked, ranked.run(plan.rank_heads_by))
        ranking = write_head_table(folder / HELDOUT_RANKING,
                                   {"importance": importance.importance, "drop": importance.drop,
                                    "direction": importance.direction})
        names = list(encodings.task_names)
        rates = {t: {"n": int((encodings.task == i).sum()),
                     "correct": int(encodings.correct[encodings.task == i].sum())} for i, t in enumerate(names)}
        return {"lines": report_lines(report), "metrics": protocol_metrics(report), "numbers": probe_numbers(report),
                "files": [str(p) for p in files], "ranking_csv": str(ranking),
                "ranking_scenarios": int((~test).sum()), "ranking_stability": importance.stability,
                "per_task_correct": rates, "settings": dataclasses.asdict(settings), "seconds": report.seconds}

    # -- 6 interventions
    def interventions(self) -> dict[str, Any]:
        return run_study_interventions(self)

    # -- 7 patterns
    def patterns(self) -> dict[str, Any]:
        encodings = self.encodings()
        rows = pattern_rows(encodings.task, encodings.correct, self.settings.pattern_scenarios, self.settings.seed)
        subset = EncodingSubset(encodings, rows).load()
        live = LivePatterns(self.target(), self.scenarios(), subset.columns)
        settings = PatternSettings(reduction=self.settings.reduction, workers=2, seed=self.settings.seed,
                                   probe=ClusterProbeConfig(seed=self.settings.seed), stability=True, progress=True)
        report = run_recurring_patterns(subset, live, self.folder / "patterns", settings)
        beyond = report.families_beyond_control()
        return {"lines": report.lines(), "metrics": report.metrics(), "scenarios": len(rows),
                "heads": int(beyond.size), "multi_beyond_control": int((beyond > 1).sum()),
                "stability_mean": None if report.stability is None else float(report.stability.mean()),
                "seconds": report.seconds, "live_scenarios_computed": live.computed}

    # -- 8 atlas
    def atlas(self) -> dict[str, Any]:
        encodings = self.encodings()
        live = LivePatterns(self.target(), self.scenarios(), encodings.columns)
        roots = [self.folder / PROTOCOL_FOLDER, Path(self.results["apmae"]["summary"]["export_dir"]),
                 self.folder / "patterns", self.folder / "interventions"]
        report = build_atlas([r for r in roots if r.exists()], self.folder, cache=live,
                             title=f"Head atlas of the study: {target_short_name(self.settings.target)} on "
                                   f"{self.results['mining']['scenarios']} scenarios of {Path(self.corpus.path).name}",
                             links={"claims report": "../report/claims.html"})
        return {"lines": report.lines(), "files": {k: str(v) for k, v in report.files.items()}}

    # -- 9 report
    def report(self) -> dict[str, Any]:
        files, verdicts = write_claims(self)
        run_id = log_study_run(self, files, verdicts)
        return {"files": {k: str(v) for k, v in files.items()}, "verdicts": verdicts, "run_id": run_id}

    def run(self) -> dict[str, dict[str, Any]]:
        s, r = self.settings, self.results
        sizes = dataclasses.asdict(s)
        r["pilot"] = self.book.run("pilot", {k: sizes[k] for k in (
            "target", "n_scenarios", "noise", "pilot_per_task", "floor", "min_share", "cap", "seq_len",
            "max_label_tokens", "max_per_file", "seed")}, self.pilot)
        r["mining"] = self.book.run("mining", {"splits": s.splits, "exhaustive": s.exhaustive}, self.mining)
        r["apmae"] = self.book.run("apmae", {"configs": [Path(c).read_text() for c in self.configs],
                                             "fit_args": self.fit_args, "head_sample": s.head_sample,
                                             "steps": s.apmae_steps, "cross_target": s.cross_target}, self.apmae)
        r["encodings"] = self.book.run("encodings", {}, self.stream)
        r["protocol"] = self.book.run("protocol", {"protocol": self.protocol}, self.run_protocol)
        r["interventions"] = self.book.run("interventions", {k: sizes[k] for k in (
            "interventions", "intervention_fractions", "random_sets", "intervention_tokens")}, self.interventions)
        r["patterns"] = self.book.run("patterns", {"n": s.pattern_scenarios, "reduction": s.reduction},
                                      self.patterns)
        r["atlas"] = self.book.run("atlas", {}, self.atlas)
        r["report"] = self.book.run("report", {}, self.report)
        return r


# ---------------------------------------------------------------- helpers

def first_token_correct(target: Target, scenarios: ScenarioSet, *, batch_size: int = 8) -> np.ndarray:
    """(N,) whether ``target``'s greedy first token is each scenario's first label token (one forward pass each):
    the interventions' baseline, scored on first tokens."""
    if not len(scenarios):
        return np.zeros(0, dtype=bool)
    first = InterventionScenarios.from_scenario_set(scenarios).first_tokens(1)
    return evaluate(target, first, {}, batch_size=batch_size).correct.astype(bool)


class StudyError(ValueError):
    """The study cannot go on with these inputs; the message says what to change."""


def check_both_classes(correct: np.ndarray, target: str) -> None:
    """Raises :class:`StudyError` unless some scenarios are completed correctly and some are not."""
    if correct.all() or not correct.any():
        raise StudyError(f"{target} completes {'every one' if correct.all() else 'none'} of the {len(correct)} "
                         "scenarios correctly, so no probe can be trained: study a model that completes some of "
                         "them (a trained one), or mine other tasks")


def pattern_rows(task: np.ndarray, correct: np.ndarray, n: int, seed: int) -> np.ndarray:
    """A seeded draw of ``n`` rows, stratified by task and label (every row when there are at most ``n``)."""
    if len(task) <= n:
        return np.arange(len(task))
    rng = np.random.default_rng(seed)
    strata = task.astype(np.int64) * 2 + correct.astype(np.int64)
    chosen = []
    for value in np.unique(strata):
        rows = np.flatnonzero(strata == value)
        take = int(round(n * len(rows) / len(task)))
        chosen.append(rng.choice(rows, size=min(len(rows), take), replace=False))
    return np.sort(np.concatenate(chosen))


def log_study_run(study: Study, files: dict[str, Path], verdicts: dict[str, str]) -> str | None:
    """The study's own MLflow run (experiment ``study``): its settings, headline numbers and report files."""
    try:
        import mlflow  # optional (the mlflow extra), and ~2 s to import
    except ImportError:
        print("MLflow is not installed (pip install 'apmae[mlflow]'): the report stays in the study folder only")
        return None

    uri = tracking_uri()
    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(
        EXPERIMENT, artifact_location=artifact_location(uri, EXPERIMENT))
    tag_training_experiment(client, experiment_id)
    target = target_short_name(study.settings.target)
    run = client.create_run(experiment_id, run_name=f"study/{target}",
                            tags={"apmae.target": target, "apmae.variant": "study", "apmae.module": "study"})
    run_id = run.info.run_id
    params = {f"study.{k}": v for k, v in dataclasses.asdict(study.settings).items()}
    params.update({f"corpus.{k}": v for k, v in study.corpus.identity().items()})
    for name, value in params.items():
        client.log_param(run_id, name, str(value)[:500])
    artifacts = {f"report/{p.name}": p for p in files.values()}
    for folder in (PROTOCOL_FOLDER, "interventions", "atlas"):
        for path in sorted((study.folder / folder).glob("*")):
            if path.is_file():
                artifacts[f"{folder}/{path.name}"] = path
    summary = study.folder / "patterns" / "clusters" / "summary.csv"
    if summary.is_file():
        artifacts["clusters/summary.csv"] = summary
    log_to_run(run_id, tracking_uri=uri, artifacts=artifacts,
               metrics={f"{HEADLINE}{k}": v for k, v in headline(study, verdicts).items()})
    client.set_terminated(run_id)
    return run_id


def looks_local(name: str) -> bool:
    """Whether a model name is a path on this machine rather than a hub name (``org/model``)."""
    return name.startswith((".", "/", "~", "artifacts/")) or name.count("/") > 1 or Path(name).exists()


def parse_args(argv: Sequence[str] | None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(prog="python -m apmae.study.run", description=__doc__.split("\n")[0])
    parser.add_argument("--study-dir", default="artifacts/study")
    parser.add_argument("--corpus", default=None, help="Java sources: a folder, an archive, a JSONL/Parquet file or "
                                                       "hf:<name> (default: the JDK's src.zip, see apmae.study.corpus)")
    parser.add_argument("--target", default=None, help=f"the model studied (default {StudySettings.target})")
    parser.add_argument("--cross-target", default=None,
                        help=f"the second model AP-MAE is validated on (default {StudySettings.cross_target}; "
                             "'' for none)")
    parser.add_argument("--config", action="append", default=None,
                        help=f"AP-MAE fit configs, in order (default {' '.join(DEFAULT_CONFIGS)})")
    parser.add_argument("--settings", default="{}", help="JSON object of StudySettings fields (apmae.study.plan)")
    parser.add_argument("--protocol", default="{}", help="JSON object of ProtocolSettings fields")
    return parser.parse_known_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args, fit_args = parse_args(argv)
    try:
        fields = json.loads(args.settings)
        protocol = json.loads(args.protocol)
        overrides = {k: v for k, v in (("target", args.target), ("cross_target", args.cross_target)) if v is not None}
        settings = StudySettings(**{**fields, **overrides})
    except (ValueError, TypeError) as err:
        raise SystemExit(f"error: --settings / --protocol: {err} (fields: apmae.study.plan.StudySettings, "
                         "apmae.probe.crossfit.ProtocolSettings)") from None
    for path in (settings.target, settings.cross_target):
        if path and looks_local(path) and not Path(path).exists():
            hint = "build the demo first (make demo), or " if path.startswith("artifacts/demo") else ""
            raise SystemExit(f"error: {path} does not exist: {hint}pass --target / --cross-target (a folder or "
                             "a hub name)")
    folder = Path(args.study_dir)
    try:
        corpus = resolve_corpus(args.corpus, folder)
    except CorpusError as err:
        raise SystemExit(f"error: {err}") from None

    quiet_libraries()
    print(f"[study] {corpus.line()}", flush=True)
    study = Study(folder, settings, corpus, configs=args.config or DEFAULT_CONFIGS, fit_args=fit_args,
                  protocol=protocol)
    start = time.perf_counter()
    try:
        results = study.run()
    except StudyError as err:
        raise SystemExit(f"error: {err}") from None
    report = Path(results["report"]["files"]["md"]).read_text()
    print(report.split("\n## (i)")[0].rstrip())  # the verdict table; every claim's numbers are on the page
    print(study.book.times_line())
    print(f"  this run: {time.perf_counter() - start:.0f} s; disk: {folder} takes {study.disk_bytes() / 1e9:.2f} GB")
    print(f"  report: {results['report']['files']['html']} (and .md); MLflow run {results['report']['run_id']} "
          f"(experiment {EXPERIMENT!r}); atlas: {folder / 'atlas' / 'index.html'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
