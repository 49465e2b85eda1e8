"""Helpers for tests that install distributions for real: tokenflow's wheel built from this
checkout, a fresh virtual environment, and the outer environment's dependencies made visible in
it without copying them (no network, no index needed for tokenflow's dependencies).

The same steps as ``test_wheel_installs_the_builtin_plugins`` in test_plugins.py, whose private
helpers stay where they are."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: Left out when a tree is copied to be built or installed.
BUILD_LITTER = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build", "dist")


@dataclass
class Proc:
    code: int
    out: str
    err: str


def run(args: list, cwd: Path, env: dict, timeout: float = 300) -> Proc:
    p = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True,
                       timeout=timeout, check=False)
    return Proc(p.returncode, p.stdout, p.stderr)


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without what would leak the outer venv or select plugins."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME", "TOKENFLOW_LOAD_PLUGINS")}
    env.update(OMP_WAIT_POLICY="PASSIVE", PYTHONNOUSERSITE="1", PIP_NO_INPUT="1",
               PIP_DISABLE_PIP_VERSION_CHECK="1", **extra)
    return env


def build_tokenflow_wheel(tmp_path: Path, env: dict) -> Path:
    """tokenflow's wheel, built offline from a copy of this checkout's sources."""
    src = tmp_path / "src"
    src.mkdir()
    for item in ("pyproject.toml", "README.md", "LICENSE"):
        if (ROOT / item).exists():
            shutil.copy2(ROOT / item, src / item)
    for folder in ("tokenflow", "plugins"):
        shutil.copytree(ROOT / folder, src / folder, ignore=BUILD_LITTER)
    dist = tmp_path / "dist"
    built = run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                 "--no-index", "-w", dist, src], cwd=tmp_path, env=env)
    assert built.code == 0, built.err
    (wheel,) = dist.glob("tokenflow-*.whl")
    return wheel


def deps_view(target: Path, exclude: tuple[str, ...] = ()) -> Path:
    """The outer environment's site-packages as symlinks, minus tokenflow itself and any entry
    whose lower-cased name starts with one of ``exclude``."""
    target.mkdir()
    site = Path(sysconfig.get_paths()["purelib"])
    for entry in site.iterdir():
        low = entry.name.lower()
        if low.startswith(("tokenflow", "__editable__", *exclude)) or low.endswith(".pth"):
            continue
        (target / entry.name).symlink_to(entry)
    return target


def make_venv(tmp_path: Path, env: dict, wheel: Path, *, with_pip: bool) -> Path:
    """A fresh venv with tokenflow installed from ``wheel`` and the outer dependencies visible
    through a .pth file. ``with_pip``: the venv gets its own pip (ensurepip, offline), which
    ``tf install`` needs; the outer pip is then left out of the view. Returns the venv."""
    venv = tmp_path / "venv"
    made = run([sys.executable, "-m", "venv", *([] if with_pip else ["--without-pip"]), venv],
               cwd=tmp_path, env=env)
    assert made.code == 0, made.err
    python = venv / "bin" / "python"
    installed = run([sys.executable, "-m", "pip", "--python", python, "install", "--no-index",
                     "--no-deps", wheel], cwd=tmp_path, env=env)
    assert installed.code == 0, installed.err
    site = Path(run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                    cwd=tmp_path, env=env).out.strip())
    assert site.is_relative_to(venv)
    exclude = ("pip",) if with_pip else ()
    (site / "_outer_dependencies.pth").write_text(f"{deps_view(tmp_path / 'deps', exclude)}\n")
    return venv
