"""What the callbacks read from the LightningModule they are attached to, declared once.

- :class:`RanksHeads`: ``apmae.callbacks.interventions.Interventions`` (the ranking it zeroes heads by);
  implemented by :class:`apmae.lit_models.probe_module.LitProbe`.
- :class:`ReconstructsPatterns`: ``apmae.callbacks.pattern_figures.PatternFigures`` (the AP-MAE it runs);
  implemented by :class:`apmae.lit_models.apmae_module.LitAPMAE`.
- ``apmae.callbacks.head_metrics.HeadMetrics`` reads nothing from the module: only the trainer's DataModule.

A callback calls :func:`require` when the trainer sets it up, so a module without what it reads
fails before any training with a message that names the members and the module to use.
"""

from __future__ import annotations

import inspect
from typing import Any, Optional, Protocol

import torch

from apmae.model.net import APMAE


class RanksHeads(Protocol):
    """A module with a signed (L, H) head importance, as the Interventions callback reads it."""

    device: torch.device

    @property
    def head_importance(self) -> Optional[torch.Tensor]:
        """(L, H) signed importance (+ pushes toward "correct"); None until it is computed."""

    @property
    def head_importance_by_task(self) -> Optional[dict[str, torch.Tensor]]:
        """``{task: (L, H)}``, the importance on each task's scenarios; None until it is computed."""


class ReconstructsPatterns(Protocol):
    """A module training an AP-MAE on head images, as the PatternFigures callback reads it."""

    device: torch.device
    net: APMAE  # called with fixed noise; its patch size, patch count and ``reconstruct`` draw the figures


def members(protocol: type) -> list[str]:
    """The attribute, property and method names a protocol declares, in declaration order."""
    names = list(getattr(protocol, "__annotations__", {}))
    names += [n for n, v in vars(protocol).items()
              if not n.startswith("_") and (isinstance(v, property) or inspect.isfunction(v))]
    return list(dict.fromkeys(names))


def missing(module: Any, protocol: type) -> list[str]:
    """The members of ``protocol`` that ``module`` lacks (properties are looked up, never evaluated)."""
    return [name for name in members(protocol) if not _provides(module, name)]


def implements(module: Any, protocol: type) -> bool:
    """Whether ``module`` has every member of ``protocol``."""
    return not missing(module, protocol)


def require(module: Any, protocol: type, *, reader: str, use: str) -> None:
    """Raise TypeError naming what ``reader`` needs when ``module`` lacks a member of ``protocol``.

    ``use`` says what to change, e.g. "attach it to an apmae.lit_models.probe_module.LitProbe".
    """
    lacking = missing(module, protocol)
    if lacking:
        raise TypeError(f"{reader} reads {', '.join(members(protocol))} from the LightningModule "
                        f"(apmae.lit_models.interfaces.{protocol.__name__}), but {type(module).__name__} has no "
                        f"{', '.join(lacking)}: {use}")


def _provides(obj: Any, name: str) -> bool:
    try:
        inspect.getattr_static(obj, name)  # class attributes and properties, without running them
        return True
    except AttributeError:
        return hasattr(obj, name)  # nn.Module submodules and buffers live behind __getattr__


__all__ = ["RanksHeads", "ReconstructsPatterns", "members", "missing", "implements", "require"]
