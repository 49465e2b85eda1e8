"""The plugin manager: one per run, loading the ``tokenflow`` entry-point group."""

from __future__ import annotations

import os
import re
import types

import pluggy

from tokenflow import hookspecs

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
    """pluggy's manager plus ``distributions`` (plugin name -> (distribution, version)) and
    ``failures`` (plugin name -> one-line message, for plugins that failed to import)."""

    def __init__(self) -> None:
        super().__init__(GROUP)
        self.distributions: dict[str, tuple[str, str]] = {}
        self.failures: dict[str, str] = {}


def make_plugin_manager(*, load_entry_points: bool = True, environ=None,
                        strict: bool = False) -> PluginManager:
    """A fresh manager with the hookspecs, the core plugins and the entry-point plugins.

    ``TOKENFLOW_LOAD_PLUGINS=dist-a,dist-b`` limits third-party loading to those distributions
    (an empty value loads none); the built-in stages always load. A plugin that fails to import
    is skipped and recorded in ``pm.failures`` (one line naming it and its distribution), or
    raises :class:`PluginLoadError` with ``strict=True``. A built-in plugin failing to import is
    always an error: the installation is broken.
    """
    from tokenflow.cache.lookup import CacheLookup
    from tokenflow.run import StageRunner

    environ = os.environ if environ is None else environ
    pm = PluginManager()
    pm.add_hookspecs(hookspecs)
    pm.register(CacheLookup(), name="tokenflow.cache")
    pm.register(StageRunner(), name="tokenflow.runner")
    if load_entry_points:
        allowed = environ.get(LOAD_PLUGINS_ENV)
        allow = None if allowed is None else {n.strip() for n in allowed.split(",") if n.strip()}
        load_group(pm, allow, strict=strict)
    return pm


def _norm(name: str) -> str:
    """PEP 503 normalised distribution name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def load_group(pm: PluginManager, allow: set[str] | None = None, *, strict: bool = True) -> None:
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
        what = "failed to import"
        try:
            plugin = ep.load()
            what = "is not a valid tokenflow plugin"
            pm.register(plugin, name=ep.name)  # checks its hooks against the specs
        except Exception as exc:
            lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
            if not isinstance(exc, pluggy.PluginValidationError):
                lines = lines[:1]  # an import error's first line says it; the rest is noise
            message = (f"plugin {ep.name} (distribution {dist_name}) {what}: "
                       f"{type(exc).__name__}: {'; '.join(lines)[:400]}")
            if strict or _norm(dist_name) == BUILTIN_DISTRIBUTION:
                raise PluginLoadError(message) from exc
            pm.failures[ep.name] = message
            continue
        pm.distributions[ep.name] = (dist_name, dist.version if dist is not None else "?")


def _module_owners(pm: PluginManager, registry=None) -> dict[str, str]:
    """Module name -> plugin name, for every registered plugin and the stage classes it added."""
    owners: dict[str, str] = {}
    for name, plugin in pm.list_name_plugin():
        if plugin is None:
            continue
        module = getattr(plugin, "__name__", None) if isinstance(plugin, types.ModuleType) else None
        owners.setdefault(module or type(plugin).__module__, name)
    if registry is not None:
        for kind, classes in registry.stages.items():
            for stage_name, cls in classes.items():
                plugin = registry.owner(kind, stage_name).split(" (", 1)[0]
                for klass in cls.__mro__:  # the class and the plugin classes it builds on
                    module = getattr(klass, "__module__", "")
                    if module and not module.startswith(("builtins", "tokenflow.")):
                        owners.setdefault(module, plugin)
    return owners


def blame(pm: PluginManager, exc: BaseException, registry=None) -> str | None:
    """The plugin whose code raised ``exc`` (innermost traceback frame in a plugin's module),
    described as ``name (distribution version)``, or None if no plugin code is involved."""
    from tokenflow.registry import describe_plugin

    owners = _module_owners(pm, registry)
    frames = []
    tb = exc.__traceback__
    while tb is not None:
        frames.append(tb.tb_frame.f_globals.get("__name__", ""))
        tb = tb.tb_next
    for module in reversed(frames):
        name = owners.get(module)
        if name is not None:
            plugin = pm.get_plugin(name)
            return describe_plugin(pm, plugin) if plugin is not None else name
    return None
