"""The demo's probe stage: the cross-fitted probe protocol, interventions, recurring patterns, the atlas.

    python -m apmae.demo.run      (runs AP-MAE, then this stage)

The probe overlay (configs/demo/probe.yaml) is stacked on the AP-MAE config, so the
probe reads the very scenarios and caches AP-MAE was trained and validated on. Its fit
encodes every head of every scenario with the frozen AP-MAE (row readouts and row scalars
included); the cross-fitted protocol (:mod:`apmae.probe.report`) then scores every scenario
out of fold under every feature set and baseline, and its head ranking is the one the
Interventions callback zeroes heads by when the LitProbe checkpoint is tested. LitProbe itself is also
fitted by a Trainer inside the protocol's folds (:mod:`apmae.lit_models.probe_folds`, the first
repeat's folds), so its rows stand in the same table. LitProbe's own class-balanced split table
stays in its MLflow run; the demo prints the protocol's.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from apmae.atlas.run import INPUT_FOLDERS, build_atlas
from apmae.common.tracking import download_run_artifacts, log_to_run, run_location
from apmae.demo.overrides import input_overrides
from apmae.patterns.cluster_probe import ClusterProbeConfig
from apmae.patterns.run import run_recurring_patterns
from apmae.patterns.settings import PatternSettings
from apmae.probe.crossfit import ProtocolSettings
from apmae.probe.features import ProbeData
from apmae.probe.report import External, ProbePlan, ProbeReport, run_protocol
from apmae.probe.summary import IMPORTANCE_CSV, control_line, protocol_metrics, report_lines, write_report

PROBE_CONFIG = "configs/demo/probe.yaml"
PROTOCOL_FOLDER = "probe-protocol"  # under the demo folder, and the artifact folder of the probe run
# The demo's protocol: 3 repeats of 5 grouped folds (`apmae crossfit` runs 5) keep the stage near two
# minutes on two cores. 150 permutations per claim: the smallest p, 1 / 151, survives Holm over the 7
# claims the table makes (with 100 it could not).
DEMO_PROTOCOL = ProtocolSettings(n_repeats=3, permutations=150)
# L1 beside L2; CatBoost and the neural head probe took 529 s and 210 s for 25 folds of data of the demo's shape
# on 2 cores beside another job (benchmarks/bench_probe_protocol.py --with-slow-models times them alone), so
# the demo leaves them to `apmae crossfit`.
DEMO_PLAN = ProbePlan(other_models=("l1",))
# LitProbe (a Trainer fit per fold) on the first repeat's 5 folds: every scenario scored out of fold
LITPROBE_REPEATS = 1


@dataclass
class ProbeSummary:
    """What the demo's probe stage measured and where it put it."""

    protocol: list[str]  # the cross-fitted protocol's table
    export_dir: str
    run_id: str | None
    experiment: str | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    interventions: list[str] = field(default_factory=list)
    patterns: list[str] = field(default_factory=list)
    atlas: list[str] = field(default_factory=list)
    bootstrap_seconds: dict[str, float] = field(default_factory=dict)  # intervals and tests, inside the stage times

    def lines(self) -> list[str]:
        out = ["", *self.protocol,
               f"  files: {self.export_dir} (probe_table.csv, oof_scores.csv, {IMPORTANCE_CSV} and .png, "
               f"probe_auroc.png; MLflow: {PROTOCOL_FOLDER}/)"]
        if self.interventions:
            out += ["Interventions on test scenarios (heads zeroed by the cross-fitted ranking):", *self.interventions]
        out += self.patterns + self.atlas
        out.append(f"  MLflow run:       {self.run_id} (experiment {self.experiment!r})")
        return out


def probe_overrides(demo_dir: str) -> list[str]:
    """CLI overrides that point the stacked probe config at ``demo_dir``."""
    d = Path(demo_dir)
    return [*input_overrides(demo_dir), f"--trainer.default_root_dir={d / 'probe-runs'}",
            f"--model.init_args.encoder={d / 'apmae'}", f"--model.init_args.recipe.export_dir={d / 'probe'}"]


def run_probe_stage(apmae_config: str, demo_dir: str, *, patterns: bool = True, reduction: str = "pca",
                    workers: int = 1, apmae_run_id: str | None = None,
                    protocol: ProtocolSettings = DEMO_PROTOCOL, plan: ProbePlan = DEMO_PLAN) -> ProbeSummary:
    """Fit LitProbe (which encodes every scenario), cross-fit the protocol, intervene, cluster; returns what to print.

    ``reduction`` is the clustering's (``pca``, or the paper's ``umap``: about four minutes
    more on two cores for SmolLM2's 270 heads), ``workers`` the processes clustering heads at once;
    ``apmae_run_id`` is the AP-MAE run whose head metrics join the head atlas.
    """
    # import cost ~5 s (Lightning): the demo's --skip-probe and --help never pay it
    from apmae.cli import cli_main
    from apmae.callbacks.interventions import Interventions
    from apmae.lit_models.probe_folds import litprobe_fits

    seconds = {}
    start = time.perf_counter()
    cli = cli_main(["fit", "--config", apmae_config, "--config", PROBE_CONFIG, *probe_overrides(demo_dir)])
    seconds["probe fit (encodings)"] = time.perf_counter() - start
    run_id, experiment, tracking_uri, _ = run_location(cli.trainer.logger)
    start = time.perf_counter()
    report = crossfit_report(cli.datamodule, protocol, plan, external=[litprobe_fits(fold_settings(cli))])
    folder = Path(demo_dir) / PROTOCOL_FOLDER
    files = write_report(report, folder)
    if run_id:
        log_to_run(run_id, tracking_uri=tracking_uri, artifacts={f"{PROTOCOL_FOLDER}/{p.name}": p for p in files},
                   metrics=protocol_metrics(report))
    seconds["probe protocol"] = time.perf_counter() - start
    start = time.perf_counter()
    interventions = [cb for cb in cli.trainer.callbacks if isinstance(cb, Interventions)]
    for callback in interventions:
        callback.verbose = False  # its key numbers are part of the summary printed at the end
        callback.importance_csv = str(folder / IMPORTANCE_CSV)  # the cross-fitted ranking
    cli.trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path="best", verbose=False)
    seconds["interventions"] = time.perf_counter() - start
    summary = ProbeSummary(protocol=report_lines(report), export_dir=str(folder), run_id=run_id,
                           experiment=experiment, seconds=seconds,
                           interventions=[line for cb in interventions for line in cb.summary_lines()])
    summary.bootstrap_seconds = {"probe protocol": seconds["probe protocol"],
                                 "interventions": sum(cb.last.stats_seconds for cb in interventions if cb.last)}
    if patterns:
        start = time.perf_counter()
        summary.patterns, cluster_probe_seconds = _patterns(cli, demo_dir, run_id, tracking_uri, reduction=reduction,
                                                            workers=workers)
        seconds["recurring patterns"] = time.perf_counter() - start
        summary.bootstrap_seconds["cluster probe"] = cluster_probe_seconds
    start = time.perf_counter()
    summary.atlas = _atlas(cli, demo_dir, [r for r in (run_id, apmae_run_id) if r], tracking_uri)
    seconds["head atlas"] = time.perf_counter() - start
    return summary


def crossfit_report(datamodule: Any, settings: ProtocolSettings, plan: ProbePlan | None = None,
                    external: Sequence[External] = ()) -> ProbeReport:
    """The protocol on the training target's encodings of a fitted probe DataModule (noise reported apart)."""
    encodings = datamodule.encodings[datamodule.train_target_name]
    return run_protocol(ProbeData.from_encodings(encodings), settings=settings, plan=plan,
                        noise=control_line(encodings), external=external)


def fold_settings(cli: Any) -> Any:
    """LitProbe inside the protocol's folds, with the demo LitProbe's own settings (first repeat's folds)."""
    from apmae.lit_models.probe_folds import LitProbeFolds  # imports Lightning, as the fit before it did

    h = cli.model.hparams
    return LitProbeFolds(encoder=h.encoder, epochs=cli.trainer.max_epochs, batch_size=cli.datamodule.batch_size,
                         lr=cli.model.recipe.lr, probe_features=h.probe_features, probe_hidden=h.probe_hidden,
                         probe_dropout=h.probe_dropout, num_threads=cli.model.recipe.num_threads,
                         repeats=LITPROBE_REPEATS)


def _atlas(cli: Any, demo_dir: str, run_ids: list[str], tracking_uri: str | None) -> list[str]:
    """The head atlas of the probe run (and the AP-MAE run's head metrics), logged into the probe run."""
    d = Path(demo_dir)
    roots = [download_run_artifacts(r, d / "atlas-inputs" / r, tracking_uri=tracking_uri, folders=INPUT_FOLDERS)
             for r in run_ids]
    report = build_atlas(roots or [d / PROTOCOL_FOLDER, cli.model.export_path(), d / "patterns"], d,
                         cache=cli.datamodule.caches[cli.datamodule.train_target_name])
    if run_ids:
        log_to_run(run_ids[0], tracking_uri=tracking_uri, artifacts=report.files)
    return report.lines() + (["  MLflow: atlas/index.html among the probe run's artifacts"] if run_ids else [])


def _patterns(cli: Any, demo_dir: str, run_id: str | None, tracking_uri: str | None, *, reduction: str,
              workers: int) -> tuple[list[str], float]:
    """The stage's report lines and the seconds its cluster-probe intervals took."""
    data = cli.datamodule
    name = data.train_target_name
    # the cluster probe fits, stops and is scored on the very rows the neural probe used
    probe = ClusterProbeConfig(balance=data.balance, balance_seed=int(data.seed))
    settings = PatternSettings(reduction=reduction, workers=workers, probe=probe)
    report = run_recurring_patterns(data.encodings[name], data.caches[name], Path(demo_dir) / "patterns", settings,
                                    run_id=run_id, tracking_uri=tracking_uri)
    return report.lines(), report.probe.bootstrap_seconds if report.probe else 0.0
