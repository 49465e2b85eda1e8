"""Scaffolding shared by tokenflow's own test modules (imported as ``from helpers import ...``,
like ``helpers_venv``; the fixtures are in ``conftest.py`` and ``tokenflow.testing``):

* :class:`FakeDist`, :class:`FakeEntryPoint` and :func:`add_entry_points`: third-party plugin
  distributions that ``make_plugin_manager`` (and so every ``tf`` command) finds, for one test;
* :func:`cli_env` and :class:`CliWorld`: a clip, a model and a cache that a module's ``tf`` calls
  share, with ``invoke`` (``tf ARGS``) and ``run`` (``tf run`` of the clip with the module's
  settings).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

import tokenflow.manager
from tokenflow.cli import cli

# --------------------------------------------------------------------------------------------- plugins


class FakeDist:
    """The distribution an entry point comes from: its name and version."""

    def __init__(self, name: str, version: str) -> None:
        self.metadata = {"name": name}
        self.version = version


class FakeEntryPoint:
    """An entry point of the ``tokenflow`` group whose ``load()`` returns ``plugin`` or raises
    ``error``; ``loads`` counts the calls (a blocked plugin must never be imported)."""

    def __init__(self, name: str, dist: FakeDist, plugin: Any = None,
                 error: Exception | None = None) -> None:
        self.name, self.dist, self.group = name, dist, "tokenflow"
        self.value = name
        self._plugin, self._error = plugin, error
        self.loads = 0

    def load(self):
        self.loads += 1
        if self._error is not None:
            raise self._error
        return self._plugin


def add_entry_points(monkeypatch: pytest.MonkeyPatch, *eps: FakeEntryPoint,
                     installed: bool = True) -> None:
    """The installed entry points (none with ``installed=False``) plus ``eps``, for every plugin
    manager made in this test (the CLI's too)."""
    real = list(entry_points(group="tokenflow")) if installed else []
    monkeypatch.setattr(tokenflow.manager, "_entry_points", lambda: [*real, *eps])


# --------------------------------------------------------------------------------------------- tf runs


def cli_env(root: Path, **more: str | None) -> dict:
    """The environment of a module's ``tf`` calls: the file-hash memo under ``root``, no hub,
    every installed plugin, no cache directory from the shell; ``more`` sets (``None``: unsets)
    further variables."""
    return {"TOKENFLOW_HASH_CACHE": str(root / "hash-memo"), "HF_HUB_OFFLINE": "1",
            "TOKENFLOW_LOAD_PLUGINS": None, "TOKENFLOW_CACHE_DIR": None, **more}


@dataclass(kw_only=True)
class CliWorld:
    """A clip, a model and a cache that a test module's ``tf`` calls share; ``settings`` are the
    flags every ``tf run`` of the module passes (steps, frames, batch size, size)."""

    root: Path
    clip: Path
    model: Path
    cache: Path
    env: dict
    settings: list[str]
    prompt: str = "a blue ball"

    def invoke(self, *args: str, catch_exceptions: bool = True) -> Result:
        """``tf ARGS`` in the world's environment."""
        return CliRunner().invoke(cli, list(args), env=self.env, catch_exceptions=catch_exceptions)

    def run(self, *extra: str, video: Path | str | None = None, prompt: str | None = None,
            model: Path | None = None, cache: Path | None = None, out: Path | None = None,
            settings: list[str] | None = None, debug: bool = False,
            catch_exceptions: bool = True) -> Result:
        """``tf run`` of ``video`` (the clip) with ``model``, ``settings``, ``cache`` (the world's
        unless given), ``extra`` flags last, into ``out`` (a new folder under root unless given);
        ``debug`` puts ``--debug`` before ``run``."""
        out = out or self.root / f"out-{uuid.uuid4().hex[:8]}"
        return self.invoke(*(["--debug"] if debug else []), "run", str(video or self.clip),
                           "--prompt", self.prompt if prompt is None else prompt,
                           "--model", str(model or self.model),
                           *(self.settings if settings is None else settings),
                           "--cache-dir", str(cache or self.cache), "--out", str(out), *extra,
                           catch_exceptions=catch_exceptions)
