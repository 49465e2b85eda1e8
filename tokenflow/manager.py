"""The plugin manager: one per run, loading the ``tokenflow`` entry-point group."""

from __future__ import annotations

import os
import re

import pluggy

from . import hookspecs

#: The entry-point group (and pluggy project name) of tokenflow plugins.
GROUP = "tokenflow"
#: Distribution whose plugins always load, whatever TOKENFLOW_LOAD_PLUGINS says.
BUILTIN_DISTRIBUTION = "tokenflow"
LOAD_PLUGINS_ENV = "TOKENFLOW_LOAD_PLUGINS"


class PluginLoadError(RuntimeError):
    """A plugin could not be imported; the message names it and its distribution."""


def _entry_points():
    from importlib.metadata import entry_points

    return entry_points(group=GROUP)


class PluginManager(pluggy.PluginManager):
    """pluggy's manager plus ``distributions``: plugin name -> (distribution, version)."""

    def __init__(self) -> None:
        super().__init__(GROUP)
        self.distributions: dict[str, tuple[str, str]] = {}


def make_plugin_manager(*, load_entry_points: bool = True, environ=None) -> PluginManager:
    """A fresh manager with the hookspecs, the core plugins and the entry-point plugins.

    ``TOKENFLOW_LOAD_PLUGINS=dist-a,dist-b`` limits third-party loading to those distributions
    (an empty value loads none); the built-in stages always load.
    """
    from . import runner

    environ = os.environ if environ is None else environ
    pm = PluginManager()
    pm.add_hookspecs(hookspecs)
    pm.register(runner.CacheLookup(), name="tokenflow.cache")
    pm.register(runner.StageRunner(), name="tokenflow.runner")
    if load_entry_points:
        allowed = environ.get(LOAD_PLUGINS_ENV)
        allow = None if allowed is None else {n.strip() for n in allowed.split(",") if n.strip()}
        load_group(pm, allow)
    return pm


def _norm(name: str) -> str:
    """PEP 503 normalised distribution name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def load_group(pm: PluginManager, allow: set[str] | None = None) -> None:
    """Load the entry points of the group, like ``pm.load_setuptools_entrypoints`` but with
    a per-plugin error message and the distribution allow-list applied before importing."""
    allow_norm = None if allow is None else {_norm(a) for a in allow} | {BUILTIN_DISTRIBUTION}
    for ep in _entry_points():
        dist = getattr(ep, "dist", None)
        dist_name = dist.metadata["name"] if dist is not None else "?"
        if allow_norm is not None and _norm(dist_name) not in allow_norm:
            pm.set_blocked(ep.name)
            continue
        if pm.get_plugin(ep.name) is not None or pm.is_blocked(ep.name):
            continue
        try:
            plugin = ep.load()
        except Exception as exc:
            raise PluginLoadError(
                f"plugin {ep.name} (distribution {dist_name}) failed to import: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        pm.register(plugin, name=ep.name)
        pm.distributions[ep.name] = (dist_name, dist.version if dist is not None else "?")
