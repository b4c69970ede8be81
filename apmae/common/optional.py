"""Optional dependencies: import them by name, or say which extra installs them."""

from __future__ import annotations

import importlib
from types import ModuleType


class MissingExtraError(ImportError):
    """An optional package is not installed; the message names the extra that installs it."""


def require(module: str, *, extra: str, purpose: str, package: str | None = None) -> ModuleType:
    """Import ``module`` or raise :class:`MissingExtraError` naming ``pip install 'apmae[<extra>]'``.

    ``purpose`` says what needs it ("UMAP reduction"), ``package`` is its name on
    the package index when that differs from the module's (``umap-learn``).

    Only the absence of ``module`` itself is translated: an ImportError raised
    from inside an installed package (a broken install) propagates unchanged.
    """
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        top = module.split(".")[0]
        if e.name is None or e.name.split(".")[0] != top:
            raise
        raise MissingExtraError(
            f"{purpose} needs the optional package {package or top!r}, which is not installed: "
            f"pip install 'apmae[{extra}]' (or choose an option that does not need it)") from e


__all__ = ["MissingExtraError", "require"]
