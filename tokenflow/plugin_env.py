"""The plugin distributions of this Python environment: which are installed, what loading them
gives, and pip (``tf install`` / ``tf uninstall``). ``python -m tokenflow.plugin_env`` prints
the state as JSON: what a new interpreter sees after pip changed the environment."""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

from tokenflow.manager import GROUP, _norm
from tokenflow.stages import KINDS


class PluginEnvError(RuntimeError):
    """pip or the environment failed; the message is one line for the user."""


def plugin_distributions() -> dict[str, tuple[str, list[str]]]:
    """Normalised distribution name -> (version, its ``tokenflow`` entry-point names)."""
    importlib.invalidate_caches()
    found: dict[str, tuple[str, list[str]]] = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata["name"]
        if not name:
            continue
        eps = [ep.name for ep in dist.entry_points if ep.group == GROUP]
        found[_norm(name)] = (dist.version, eps)
    return found


def plugin_state() -> dict:
    """What this environment provides: plugin distributions, and what loading them gives."""
    from tokenflow.manager import make_plugin_manager
    from tokenflow.registry import build_registry

    state: dict = {"dists": {n: [v, eps] for n, (v, eps) in plugin_distributions().items()},
                   "failures": {}, "blocked": [], "stages": {}, "error": None}
    try:
        pm = make_plugin_manager()
        state["failures"] = dict(pm.failures)
        state["blocked"] = [name for name, plugin in pm.list_name_plugin() if plugin is None]
        registry = build_registry(pm)
    except Exception as exc:  # noqa: BLE001 - reported, not raised: the install itself worked
        state["error"] = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return state
    for kind in KINDS:
        for name in sorted(registry.stages[kind]):
            state["stages"][f"{kind} {name}"] = registry.owner(kind, name).split(" (", 1)[0]
    return state


def fresh_plugin_state() -> dict:
    """:func:`plugin_state` as a new Python process sees it: what pip just did (an editable
    install's path, a removed package's files) takes effect only in a new interpreter."""
    done = subprocess.run([sys.executable, "-m", "tokenflow.plugin_env"], capture_output=True,
                          text=True, check=False, cwd=Path(sys.executable).parent)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise PluginEnvError(f"could not inspect the environment after pip: {last}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def pip(args: list[str], quiet: bool) -> None:
    """Run pip of this environment; its output goes to stderr. One line if it fails."""
    cmd = [sys.executable, "-m", "pip", *args]
    if quiet:
        cmd.append("--quiet")
    try:
        probe = subprocess.run([sys.executable, "-m", "pip", "--version"], capture_output=True,
                               check=False)
    except OSError as exc:
        raise PluginEnvError(f"cannot run {sys.executable}: {exc}") from None
    if probe.returncode != 0:
        raise PluginEnvError(f"pip is not available in this environment ({sys.executable}); "
                                   "install it with: python -m ensurepip")
    done = subprocess.run(cmd, stdout=sys.stderr, stderr=sys.stderr, check=False)
    if done.returncode != 0:
        raise PluginEnvError(f"pip {args[0]} failed (exit {done.returncode}); see its "
                                   "output above")


def target_name(target: str, path: Path) -> str | None:
    """The distribution name an install target stands for, if it can be told without pip."""
    if path.is_dir():
        try:
            return tomllib.loads((path / "pyproject.toml").read_text())["project"]["name"]
        except (OSError, KeyError, ValueError):
            return None
    if path.is_file():  # name-version-....whl / name-version.tar.gz
        return path.name.split("-", 1)[0]
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", target)
    return match.group(1) if match else None



if __name__ == "__main__":
    print(json.dumps(plugin_state()))
