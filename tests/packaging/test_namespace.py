"""apmae installs one top-level name: the Lightning glue is apmae.datamodules, apmae.lit_models, apmae.callbacks.

A project that uses apmae may have packages of its own called ``callbacks`` or ``datamodules``;
neither a wheel nor a source checkout may shadow them, and the demo configs must still resolve.
"""

from __future__ import annotations

import configparser
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
GLUE = ("datamodules", "lit_models", "callbacks")


def _env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": ""}


def _user_callbacks(folder: Path) -> None:
    """A project's own ``callbacks`` package, with an ``interventions`` module of its own (no Interventions)."""
    (folder / "callbacks").mkdir()
    (folder / "callbacks" / "__init__.py").write_text("")
    (folder / "callbacks" / "interventions.py").write_text("OWN = True\n")
    (folder / "datamodules.py").write_text("OWN = True\n")


def test_setup_cfg_lists_every_package_folder():
    """setup.cfg names packages one by one (package_dir maps three of them): none may be forgotten."""
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    listed = set(cfg["options"]["packages"].split())
    folders = {".".join(("apmae", *p.parent.relative_to(ROOT).parts[1:]))
               for p in (ROOT / "apmae").rglob("__init__.py")}
    folders |= {f"apmae.{'.'.join(p.parent.relative_to(ROOT).parts)}"
                for g in GLUE for p in (ROOT / g).rglob("__init__.py")}
    assert len(folders) >= 16 and listed == folders


@pytest.mark.slow
def test_a_built_wheel_installs_only_apmae_and_leaves_a_users_callbacks_alone(tmp_path):
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(dist),
                    str(ROOT)], check=True, cwd=tmp_path, env=_env())
    (wheel,) = dist.glob("apmae-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    dist_info = "-".join(wheel.name.split("-")[:2]) + ".dist-info"
    assert {n.split("/")[0] for n in names} == {"apmae", dist_info}
    assert "apmae/callbacks/interventions.py" in names and "apmae/datamodules/attention_cache.py" in names
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel)],
                   check=True, env=_env())
    # bin/ holds the `apmae` console script
    assert sorted(p.name for p in site.iterdir() if not p.name.endswith(".dist-info")) == ["apmae", "bin"]
    project = tmp_path / "project"
    project.mkdir()
    _user_callbacks(project)
    probe = ("import apmae, callbacks.interventions as own, datamodules as own_dm\n"
             "from apmae.callbacks.interventions import Interventions\n"
             "from apmae.datamodules.attention_cache import AttentionCacheDataModule\n"
             "import apmae.callbacks.interventions as theirs\n"
             "print(own.OWN, own_dm.OWN, theirs.__file__.startswith(apmae.__path__[0]))\n")
    env = {**_env(), "PYTHONPATH": f"{project}{os.pathsep}{site}"}
    out = subprocess.run([sys.executable, "-c", probe], cwd=project, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["True", "True", "True"]


@pytest.mark.slow
def test_the_demo_configs_resolve_beside_a_users_callbacks_package(tmp_path):
    """`apmae fit` on the demo's AP-MAE and probe configs from a folder holding a project's own ``callbacks``."""
    _user_callbacks(tmp_path)
    configs = ["--config", str(ROOT / "configs/demo/apmae.yaml"), "--config", str(ROOT / "configs/demo/probe.yaml")]
    out = subprocess.run([sys.executable, "-m", "apmae", "fit", *configs, "--print_config"], cwd=tmp_path,
                         env=_env(), capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "class_path: apmae.callbacks.interventions.Interventions" in out.stdout
    assert "class_path: apmae.datamodules.attention_cache.AttentionCacheDataModule" in out.stdout
