"""``python -m apmae``: a LightningCLI with MLflow as the default logger.

Every class a run uses is named in its YAML config (``class_path`` /
``init_args``); configs stack (``--config base.yaml --config overlay.yaml``)
and may use omegaconf interpolation with relative paths (``${..seq_len}``).
Each run logs its resolved config as an artifact and its flattened values as
params, so runs compare side by side in the MLflow UI (``make ui``).
"""

from __future__ import annotations

import os
from typing import Any

from lightning.pytorch.cli import LightningCLI, SaveConfigCallback

DEFAULT_TRACKING_URI = "sqlite:///mlruns/mlflow.db"


def tracking_uri() -> str:
    """The MLflow store: ``$MLFLOW_TRACKING_URI`` or the project's sqlite store."""
    return os.environ.get("MLFLOW_TRACKING_URI", DEFAULT_TRACKING_URI)


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
    """Logs the resolved config to every MLflow logger of the trainer."""

    def save_config(self, trainer, pl_module, stage: str) -> None:
        from lightning.pytorch.loggers import MLFlowLogger

        text = self.parser.dump(self.config, skip_none=False)
        params = _flatten(self.config.as_dict())
        for logger in trainer.loggers:
            if isinstance(logger, MLFlowLogger):
                logger.experiment.log_text(logger.run_id, text, self.config_filename)
                logger.log_hyperparams({k: ("" if v is None else v) for k, v in params.items()})


class APMAECLI(LightningCLI):
    """LightningCLI for apmae runs: subclass mode for models and data modules."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("subclass_mode_model", True)
        kwargs.setdefault("subclass_mode_data", True)
        kwargs.setdefault("save_config_callback", LogConfigToMLflow)
        kwargs.setdefault("save_config_kwargs", {"save_to_log_dir": False, "overwrite": True})
        kwargs.setdefault("parser_kwargs", {"parser_mode": "omegaconf+"})
        kwargs.setdefault("trainer_defaults", default_trainer_settings())
        super().__init__(*args, **kwargs)


def default_trainer_settings() -> dict[str, Any]:
    """Trainer defaults: MLflow logging to the project's store."""
    return {
        "logger": {
            "class_path": "lightning.pytorch.loggers.MLFlowLogger",
            "init_args": {"experiment_name": "apmae", "tracking_uri": tracking_uri()},
        }
    }


def cli_main(args: list[str] | None = None) -> APMAECLI:
    """Run the CLI; ``args`` replaces ``sys.argv[1:]`` (tests call it in-process)."""
    os.environ.setdefault("JSONARGPARSE_DEPRECATION_WARNINGS", "off")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    return APMAECLI(args=args)
