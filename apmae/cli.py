"""``apmae`` / ``python -m apmae``: a LightningCLI with MLflow as the default logger, and the post-hoc stages.

``fit``, ``validate``, ``test`` and ``predict`` are LightningCLI's subcommands.
The post-hoc stages read what a fit wrote and run without a trainer, each with
its own arguments (:data:`POST_HOC_STAGES`): ``apmae patterns --help``.

Every class a run uses is named in its YAML config (``class_path`` /
``init_args``); configs stack (``--config base.yaml --config overlay.yaml``)
and may use omegaconf interpolation with relative paths (``${..seq_len}``).

Shared values are linked once: the DataModule's ``seq_len`` becomes the
model's ``seq_len`` (image size for AP-MAE, context for a target LM), so a
config cannot state two different lengths; setting ``model.init_args.seq_len``
is an error that says so.

MLflow: the store is ``$MLFLOW_TRACKING_URI`` or ``sqlite:///mlruns/mlflow.db``;
artifacts go next to the sqlite file (``mlruns/<experiment>/<run id>/artifacts``;
:mod:`apmae.common.tracking`).
The experiment and run names come from the config's top-level ``experiment``
and ``run_name`` (default: the last ``--config`` file's name). Each run logs
its resolved config as the artifact ``config.yaml`` and its flattened values
as params, so runs compare side by side in the MLflow UI (``make ui``).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
import yaml
from lightning.pytorch.loggers import MLFlowLogger

from apmae import GLUE_PACKAGES
from apmae.atlas import run as atlas_run
from apmae.cache.extract import target_short_name
from apmae.common import h5shards
from apmae.common.allocator import keep_freed_memory
from apmae.common.h5shards import StoreError
from apmae.common.tracking import DEFAULT_EXPERIMENT, artifact_location, tag_training_experiment, tracking_uri
from apmae.common.settings import field_names
from apmae.interventions.settings import InterventionSettings
from apmae.mining.settings import MINING_FIELDS
from apmae.mining.sources import SourceError
from apmae.lit_models.training import RECIPE_FIELDS
from apmae.model.loading import CheckpointError, check_checkpoint
from apmae.patterns import run as patterns_run
from apmae.probe import run as crossfit_run

MLFLOW_LOGGER = "lightning.pytorch.loggers.MLFlowLogger"
LINKED = {"seq_len": ("data.seq_len", "model.init_args.seq_len")}
PROBE_CLASS = "apmae.lit_models.probe_module.LitProbe"  # the probe, formerly LitAPMAE's `stage: probe`
CKPT_ALIASES = ("last", "best", "hpc")  # --ckpt_path values Lightning resolves itself


@dataclass(frozen=True)
class PostHocStage:
    """A stage that reads what a fit wrote and runs without Lightning: ``apmae <name> [its arguments]``."""

    summary: str  # one line in ``apmae --help``
    main: Callable[[Sequence[str]], Any]  # parses the stage's own arguments and runs it


POST_HOC_STAGES = {
    "patterns": PostHocStage(summary=patterns_run.SUMMARY, main=patterns_run.main),
    "atlas": PostHocStage(summary=atlas_run.SUMMARY, main=atlas_run.main),
    "crossfit": PostHocStage(summary=crossfit_run.SUMMARY, main=crossfit_run.main),
}


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Flatten nested dicts/lists into ``a.b.c`` keys (MLflow params are flat)."""
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for k, v in tree.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    if isinstance(tree, (list, tuple)) and tree and any(isinstance(v, (dict, list)) for v in tree):
        out = {}
        for i, v in enumerate(tree):
            out.update(_flatten(v, f"{prefix}{i}."))
        return out
    return {prefix[:-1]: tree}


class LogConfigToMLflow(SaveConfigCallback):
    """Logs the resolved config (artifact + flattened params) to every MLflow logger of the trainer."""

    def save_config(self, trainer, pl_module, stage: str) -> None:
        config = _with_linked_values(self.config, trainer)
        text = self.parser.dump(config, skip_none=False, skip_link_targets=False)
        params = _flatten(config.as_dict())
        params.pop("config", None)
        for logger in trainer.loggers:
            if isinstance(logger, MLFlowLogger):
                tag_training_experiment(logger.experiment, logger.experiment_id)
                logger.experiment.log_text(logger.run_id, text, self.config_filename)
                logger.log_hyperparams({k: ("" if v is None else v) for k, v in params.items()})


def _with_linked_values(config: Any, trainer: Any) -> Any:
    """A copy of ``config`` with the values the CLI linked at instantiation written in."""
    config = config.clone()
    seq_len = getattr(getattr(trainer, "datamodule", None), "seq_len", None)
    if seq_len is not None and config.get("model") is not None and config.get("model.init_args") is not None:
        config["model.init_args.seq_len"] = seq_len
    return config


class APMAECLI(LightningCLI):
    """LightningCLI for apmae runs: subclass mode, linked seq_len, MLflow naming, clear config errors."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("subclass_mode_model", True)
        kwargs.setdefault("subclass_mode_data", True)
        kwargs.setdefault("save_config_callback", LogConfigToMLflow)
        kwargs.setdefault("save_config_kwargs", {"save_to_log_dir": False, "overwrite": True})
        kwargs.setdefault("parser_kwargs", {"parser_mode": "omegaconf+"})
        kwargs.setdefault("trainer_defaults", default_trainer_settings())
        super().__init__(*args, **kwargs)

    def setup_parser(self, add_subcommands: bool, main_kwargs: dict[str, Any],
                     subparser_kwargs: dict[str, Any]) -> None:
        main_kwargs = {"epilog": post_hoc_help(), **main_kwargs}  # `apmae --help` lists the post-hoc stages too
        super().setup_parser(add_subcommands, main_kwargs, subparser_kwargs)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument("--experiment", type=Optional[str], default=None,
                            help="MLflow experiment name (default: the logger's, 'apmae').")
        parser.add_argument("--run_name", type=Optional[str], default=None,
                            help="MLflow run name (default: the name of the last --config file).")
        source, target = LINKED["seq_len"]
        parser.link_arguments(source, target, apply_on="instantiate")

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        line = CommandLine.of(args)
        _reject_unreadable_configs(parser, line)
        _reject_linked_keys(parser, line)
        _reject_probe_stage(parser, line)
        _reject_moved_settings_keys(parser, line)
        _reject_old_class_paths(parser, line)
        super().parse_arguments(parser, args)
        # before LightningCLI reads the checkpoint's hyperparameters with torch.load
        _check_ckpt_path(self.config[self.config.subcommand] if self.config.get("subcommand") else self.config)

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        _name_mlflow_run(config)

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except ValueError as err:
            # A class refused its arguments (e.g. a net built for another seq_len): show the
            # class's own reason, not a traceback through the instantiation machinery.
            sys.stderr.write(f"error: invalid configuration: {_root_cause(err)}\n")
            raise SystemExit(2) from err


def _root_cause(err: BaseException) -> str:
    """The innermost message of a chain of wrapped exceptions (jsonargparse wraps the class's own)."""
    while (err.__cause__ or err.__context__) is not None:
        err = err.__cause__ or err.__context__
    return str(err)


@dataclass(frozen=True)
class CommandLine:
    """The command line read once: its arguments, and the config files it names (the pre-parse checks read these)."""

    argv: tuple[str, ...]
    config_paths: tuple[str, ...]  # given to --config / -c / --config=, in order
    trees: dict[Path, Any]  # the YAML of every named config file that exists (None: not readable YAML text)

    @classmethod
    def of(cls, args: Any) -> "CommandLine":
        """``args`` (a list, or None for ``sys.argv[1:]``; a dict of parsed values names no files)."""
        argv = tuple(sys.argv[1:] if args is None else args) if not isinstance(args, dict) else ()
        paths = tuple(argv[i + 1] if arg in ("--config", "-c") else arg.partition("--config=")[2]
                      for i, arg in enumerate(argv)
                      if (arg in ("--config", "-c") and i + 1 < len(argv)) or arg.startswith("--config="))
        # jsonargparse names missing files itself; each existing one is parsed here once
        trees = {Path(p): _read_yaml(Path(p)) for p in paths if p and Path(p).is_file()}
        return cls(argv=argv, config_paths=paths, trees=trees)

    @property
    def config_files(self) -> list[Path]:
        """The named config files that exist."""
        return list(self.trees)

    def tree(self, path: Path) -> Any:
        """A config file's YAML, or None when it is not readable YAML text (reported elsewhere)."""
        return self.trees[path]


def _read_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError, OSError):
        return None


def _reject_unreadable_configs(parser: LightningArgumentParser, line: CommandLine) -> None:
    """A config file that is not text ends in a parser error naming it (YAML errors jsonargparse names itself)."""
    for path in line.config_files:
        try:
            Path(path).read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError) as e:
            parser.error(f"config file {path} is not readable UTF-8 text ({e}); give a YAML config file")


def _check_ckpt_path(config: Any) -> None:
    """Refuse a missing or damaged ``--ckpt_path`` file before Lightning reads it (it would fail deep
    inside torch's zip reader, or not at all on a damaged tensor)."""
    ckpt = config.get("ckpt_path") if hasattr(config, "get") else None
    if not isinstance(ckpt, str) or ckpt in CKPT_ALIASES or ckpt.startswith("registry") or "://" in ckpt:
        return
    try:
        check_checkpoint(ckpt)
    except CheckpointError as err:
        sys.stderr.write(f"error: --ckpt_path: {err}\n")
        raise SystemExit(2) from err


def _reject_linked_keys(parser: LightningArgumentParser, line: CommandLine) -> None:
    """Fail early and clearly when a config or argument sets a value the CLI links itself."""
    texts = [f"command line `{arg}`" for arg in line.argv
             if arg.startswith("--model.init_args.seq_len") or arg.startswith("--model.seq_len")]
    texts += [f"config file {path}" for path in line.config_files if "seq_len" in _model_init_args(line.tree(path))]
    if texts:
        parser.error(
            f"model seq_len is set in {', '.join(texts)}, but it is linked from data.seq_len "
            "(the DataModule's sequence length) so the two cannot disagree: remove it and set "
            "the data's seq_len instead"
        )


def _reject_probe_stage(parser: LightningArgumentParser, line: CommandLine) -> None:
    """Point a config of the former ``stage: probe`` of LitAPMAE at the probe's own module.

    Checked before parsing: jsonargparse would otherwise refuse the first unknown key
    (``stage``, ``encoder``, ...) without saying where those settings went.
    """
    texts = [f"command line `{a}`" for a in line.argv if a.startswith(("--model.init_args.stage", "--model.stage"))]
    texts += [f"config file {path}" for path in line.config_files if "stage" in _model_init_args(line.tree(path))]
    if texts:
        parser.error(
            f"model.init_args.stage is set in {', '.join(texts)}, but LitAPMAE trains AP-MAE reconstruction "
            f"only: the probe is {PROBE_CLASS}. Set `model.class_path: {PROBE_CLASS}`, give its settings under "
            "model.init_args (encoder, finetune_encoder, probe_features, probe_hidden, probe_dropout, probe_layers, "
            "probe_heads, importance_scenarios, importance_steps, recipe, ...; see configs/demo/probe.yaml) and "
            "remove stage and net_overrides"
        )


INTERVENTION_FIELDS = field_names(InterventionSettings)
# settings a class once took one by one and now takes as one nested block: class name -> (fields, block)
MOVED_SETTINGS = {"JavaScenarioDataModule": (MINING_FIELDS, "mining"),
                  "Interventions": (INTERVENTION_FIELDS, "settings"),
                  "LitAPMAE": (RECIPE_FIELDS, "recipe"), "LitProbe": (RECIPE_FIELDS, "recipe"),
                  "TargetLM": (RECIPE_FIELDS, "recipe")}
# settings a class once took and now reads elsewhere: class name -> {old key: where it went}
REPLACED_SETTINGS = {"TargetLM": {"warmup_steps": "recipe.warmup_fraction (a share of the trainer's steps)",
                                  "total_steps": "trainer.max_steps (the schedule runs over the trainer's steps)"}}
RECIPE_OWNERS = tuple(owner for owner, (_, block) in MOVED_SETTINGS.items() if block == "recipe")


def _reject_moved_settings_keys(parser: LightningArgumentParser, line: CommandLine) -> None:
    """Name the nested key of a setting a config or argument still gives flat.

    ``JavaScenarioDataModule`` takes its mining settings as one ``mining:`` block
    (:class:`apmae.mining.settings.MiningConfig`), the ``Interventions`` callback its sweep's as one
    ``settings:`` block (:class:`apmae.interventions.settings.InterventionSettings`), LitAPMAE, LitProbe
    and TargetLM their training recipe as one ``recipe:`` block (:class:`apmae.lit_models.training.TrainingRecipe`);
    jsonargparse would refuse a flat ``seq_len:`` without saying where it went.
    """
    interventions_appended = any("Interventions" in arg for arg in line.argv)
    models = [str(_model_class(tree)).rpartition(".")[2] for tree in line.trees.values() if _model_class(tree)]
    model = models[-1] if models else None  # the last config that names a model class decides
    replaced = REPLACED_SETTINGS.get(model or "", {})
    found = []
    for arg in line.argv:
        key = arg.split("=", 1)[0]
        prefix, _, name = key.rpartition(".")
        if name in MINING_FIELDS and prefix.endswith("scenarios.init_args"):
            found.append(f"command line `{key}` -> `{prefix}.mining.{name}`")
        if interventions_appended and name in INTERVENTION_FIELDS and prefix.endswith("callbacks"):
            found.append(f"command line `{key}` -> `{prefix}.settings.{name}`")
        if prefix in ("--model.init_args", "--model"):
            if (model is None or model in RECIPE_OWNERS) and name in RECIPE_FIELDS:
                found.append(f"command line `{key}` -> `{prefix}.recipe.{name}`")
            elif name in replaced:
                found.append(f"command line `{key}` -> `{replaced[name]}`")
    for path in line.config_files:
        found += [f"config file {path}: `{where}.{name}` -> `{moved}`"
                  for where, name, moved in _flat_settings_keys(line.tree(path), "")]
    if found:
        parser.error("settings moved into nested blocks (JavaScenarioDataModule's `mining:`, "
                     "apmae.mining.settings.MiningConfig; Interventions' `settings:`, "
                     "apmae.interventions.settings.InterventionSettings; LitAPMAE's, LitProbe's and TargetLM's "
                     "`recipe:`, apmae.lit_models.training.TrainingRecipe): " + "; ".join(found))


def _reject_old_class_paths(parser: LightningArgumentParser, line: CommandLine) -> None:
    """Name the new class path of a class the config still names by its former top-level package.

    The Lightning glue moved from the top-level packages ``datamodules``, ``lit_models`` and ``callbacks``
    to ``apmae.datamodules``, ``apmae.lit_models`` and ``apmae.callbacks``. A path into a project's own
    package of one of those names (one that is not apmae's folder) is that project's and is left alone.
    """
    found = [f"command line `{arg}`: {old} -> apmae.{old}" for arg in line.argv
             for old in [arg.rpartition("=")[2]] if _former_glue_path(old)]
    for path in line.config_files:
        found += [f"config file {path}: {old} -> apmae.{old}" for old in _class_paths(line.tree(path))
                  if _former_glue_path(old)]
    if found:
        parser.error("the Lightning glue is imported as apmae.datamodules, apmae.lit_models and apmae.callbacks "
                     "(the top-level names were left to your own packages); change these class paths: "
                     + "; ".join(found))


def _class_paths(tree: Any) -> list[str]:
    """Every ``class_path`` value in a config's YAML."""
    if isinstance(tree, dict):
        own = [tree["class_path"]] if isinstance(tree.get("class_path"), str) else []
        return own + [p for value in tree.values() for p in _class_paths(value)]
    if isinstance(tree, list):
        return [p for value in tree for p in _class_paths(value)]
    return []


def _former_glue_path(path: str) -> bool:
    """Whether ``path`` names a module of apmae's glue by its former top-level package."""
    package, _, rest = path.partition(".")
    if package not in GLUE_PACKAGES or "." not in rest:
        return False
    module = rest.rpartition(".")[0]
    if importlib.util.find_spec(f"apmae.{package}.{module}") is None:
        return False  # not one of apmae's modules: another project's path
    try:
        spec = importlib.util.find_spec(package)  # the top-level name, found but not imported
    except (ImportError, ValueError):
        return True
    ours = importlib.util.find_spec(f"apmae.{package}")
    theirs = [Path(p) for p in (spec.submodule_search_locations or [])] if spec is not None else []
    if ours is not None and theirs == [Path(p) for p in ours.submodule_search_locations or []]:
        return True  # the checkout's own folder, found under its former name
    first = module.split(".")[0]  # a project's own package of that name that holds this module keeps its path
    return not any((d / f"{first}.py").is_file() or (d / first / "__init__.py").is_file() for d in theirs)


def _flat_settings_keys(tree: Any, where: str) -> list[tuple[str, str, str]]:
    """(path of an init_args block, key, where it went) of every moved setting given flat to its class."""
    found = []
    if isinstance(tree, dict):
        init_args = tree.get("init_args")
        owner = str(tree.get("class_path", "")).rpartition(".")[2]
        if "class_path" not in tree and where.endswith(".scenarios"):
            owner = "JavaScenarioDataModule"  # an overlay's `scenarios:` block names no class
        if owner in MOVED_SETTINGS and isinstance(init_args, dict):
            fields, block = MOVED_SETTINGS[owner]
            args = f"{where}.init_args".lstrip(".")
            replaced = REPLACED_SETTINGS.get(owner, {})
            found += [(args, k, f"{args}.{block}.{k}" if k in fields else replaced[k])
                      for k in init_args if k in fields or k in replaced]
        for key, value in tree.items():
            found += _flat_settings_keys(value, f"{where}.{key}")
    elif isinstance(tree, list):
        for i, value in enumerate(tree):
            found += _flat_settings_keys(value, f"{where}[{i}]")
    return found


def _model_class(tree: Any) -> str | None:
    """The ``model.class_path`` a config's YAML sets (None when none)."""
    model = tree.get("model") if isinstance(tree, dict) else None
    return model.get("class_path") if isinstance(model, dict) else None


def _model_init_args(tree: Any) -> dict[str, Any]:
    """The ``model`` init args a config's YAML sets ({} when none, or when the file is no YAML mapping)."""
    model = tree.get("model") if isinstance(tree, dict) else None
    if not isinstance(model, dict):
        return {}
    init_args = model.get("init_args") if isinstance(model.get("init_args"), dict) else model
    return init_args


def _name_mlflow_run(config: Any) -> None:
    """Put the experiment, the run's name and tags, and the artifact location into a default MLflow logger.

    A run is named ``<target>/<variant>``: the target model whose patterns it reads (the DataModule's
    ``target``, when it has one) and the variant (``run_name``, else the last ``--config`` file's name),
    so a config run on another target than the one it was written for says so. Both are also tags
    (``apmae.target``, ``apmae.variant``, with the module's class as ``apmae.module``) to filter by.
    """
    logger = _config_value(config, "trainer", "logger")
    if logger is None or not hasattr(logger, "get") or logger.get("class_path") != MLFLOW_LOGGER:
        return
    init = logger.init_args
    if config.get("experiment"):
        init.experiment_name = config.experiment
    configs = config.get("config") or []
    variant = config.get("run_name") or init.get("run_name") or (Path(str(configs[-1])).stem if configs else None)
    target = _target_name(config)
    if variant or target:
        init.run_name = "/".join(dict.fromkeys(p for p in (target, variant) if p))
    module = str(_config_value(config, "model", "class_path") or "").rpartition(".")[2]
    tags = {"apmae.target": target, "apmae.variant": variant, "apmae.module": module}
    init.tags = {**(init.get("tags") or {}), **{k: v for k, v in tags.items() if v}}
    uri = init.get("tracking_uri") or tracking_uri()
    if not init.get("artifact_location"):
        init.artifact_location = artifact_location(uri, init.get("experiment_name") or DEFAULT_EXPERIMENT)


def _target_name(config: Any) -> str | None:
    """The short name of the target model a run's DataModule reads (None when it names none)."""
    target = _config_value(config, "data", "init_args", "target")
    return target_short_name(str(target)) if target else None


def _config_value(config: Any, *keys: str) -> Any:
    """``config[k1][k2]...`` through nested namespaces or dicts; None where a level is missing or not a mapping."""
    for key in keys:
        config = config.get(key) if hasattr(config, "get") else None
    return config


CSV_LOGGER = "lightning.pytorch.loggers.CSVLogger"


def default_trainer_settings() -> dict[str, Any]:
    """Trainer defaults: MLflow logging to the project's store; CSV files when mlflow is not installed
    (an extra: ``pip install apmae[mlflow]``), said once on stderr."""
    if importlib.util.find_spec("mlflow") is None:
        sys.stderr.write("note: mlflow is not installed, so runs log to CSV files under the trainer's "
                         "default_root_dir; pip install 'apmae[mlflow]' for MLflow runs and the UI\n")
        return {"logger": {"class_path": CSV_LOGGER, "init_args": {"save_dir": "lightning_logs"}}}
    return {
        "logger": {
            "class_path": MLFLOW_LOGGER,
            "init_args": {"experiment_name": DEFAULT_EXPERIMENT, "tracking_uri": tracking_uri()},
        }
    }


def post_hoc_help() -> str:
    """The post-hoc stages, for the epilog of ``apmae --help``."""
    stages = "; ".join(f"{name}: {stage.summary}" for name, stage in POST_HOC_STAGES.items())
    return f"post-hoc stages, run as `apmae <stage> --help` for their arguments: {stages}"


@contextlib.contextmanager
def reported_errors() -> Iterator[None]:
    """The project's errors about its inputs and stores end the process with ``error: <message>`` (exit 1)
    instead of a traceback; other exceptions pass. After a write the disk refused, the process ends at once
    (``os._exit``): HDF5 crashes at exit when it tries to close that file again."""
    try:
        yield
    except (StoreError, SourceError) as err:
        sys.stdout.flush()
        sys.stderr.write(f"error: {err}\n")
        sys.stderr.flush()
        if h5shards.REFUSED:
            os._exit(1)
        raise SystemExit(1) from err


def main() -> None:
    """The ``apmae`` command and ``python -m apmae``: :func:`cli_main` on ``sys.argv``, errors reported."""
    with reported_errors():
        cli_main()


def cli_main(args: list[str] | None = None) -> Any:
    """Run the CLI; ``args`` replaces ``sys.argv[1:]`` (tests call it in-process).

    A post-hoc stage's name as the first argument hands the rest to that
    stage's own parser and returns what the stage returns; anything else goes to
    LightningCLI and returns the :class:`APMAECLI`. A fit may extract attention
    caches, so the LightningCLI path opts into the allocator tuning extraction
    relies on (:func:`apmae.common.allocator.keep_freed_memory`).
    """
    argv = list(sys.argv[1:] if args is None else args)
    if argv and argv[0] in POST_HOC_STAGES:
        return POST_HOC_STAGES[argv[0]].main(argv[1:])
    os.environ.setdefault("JSONARGPARSE_DEPRECATION_WARNINGS", "off")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    keep_freed_memory()
    return APMAECLI(args=args)
