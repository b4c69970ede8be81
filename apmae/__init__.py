"""apmae: attention-pattern masked autoencoders for code LLMs.

The core package is plain PyTorch: its stages never import Lightning or the Lightning glue
(``apmae.datamodules``, ``apmae.lit_models``, ``apmae.callbacks``), so their pieces can be used from a
notebook or another project, and no two stages import each other. The entry points are the exceptions:
``apmae.cli`` (the LightningCLI), and ``apmae.demo`` and ``apmae.study.run`` (which run it).
``tests/test_imports.py`` checks both rules.

The glue's source sits in the repository's top-level folders ``datamodules/``, ``lit_models/`` and
``callbacks/``; it is imported only under this package's name. A built wheel puts the three folders
inside ``apmae/`` (``package_dir`` in setup.cfg), an editable install maps them with setuptools' finder,
and a source checkout that is merely on ``sys.path`` gets them from :class:`_SourceGlue` below. No
top-level ``datamodules``, ``lit_models`` or ``callbacks`` is ever claimed, so a project's own package
of that name is left alone.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
from pathlib import Path

__version__ = "0.1.0"

GLUE_PACKAGES = ("datamodules", "lit_models", "callbacks")


class _SourceGlue(importlib.abc.MetaPathFinder):
    """Finds ``apmae.<glue>`` in the checkout's top-level folder of that name (only those three names)."""

    def __init__(self, root: Path) -> None:
        self.root = str(root)

    def find_spec(self, fullname, path=None, target=None):  # noqa: D102 (importlib's protocol)
        package, _, name = fullname.partition(".")
        if package != __name__ or name not in GLUE_PACKAGES:
            return None
        return importlib.machinery.PathFinder.find_spec(fullname, [self.root])


def _map_source_glue() -> None:
    here = Path(__file__).resolve().parent
    root = here.parent
    if (here / GLUE_PACKAGES[0]).is_dir() or not (root / "setup.cfg").is_file():
        return  # installed from a wheel (the glue is inside apmae/), or not a checkout
    if not any(isinstance(f, _SourceGlue) for f in sys.meta_path):
        sys.meta_path.append(_SourceGlue(root))


_map_source_glue()
