"""Failure isolation: a broken plugin is named (entry point and distribution) in one line and
breaks neither the other plugins nor the stage cache.

* a plugin that fails to import is skipped with one warning (``strict`` makes it an error; a
  built-in one always is);
* a plugin stage or hook that raises during ``tf run`` gives one ``Error:`` line naming the stage,
  the plugin and its distribution, and leaves the cache exactly as it was (``--debug`` re-raises);
* a stage name registered by two distributions names both;
* ``tf install`` / ``tf uninstall`` refuse what they must refuse, in one line, without running pip.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import shutil
import types
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
from click.testing import CliRunner, Result
from helpers import CliWorld, FakeDist, FakeEntryPoint, add_entry_points, cli_env
from tokenflow_plugins.pnp import PnPEditor
from tokenflow_plugins.tokenflow_blender import TokenFlowBlender

import tokenflow.cli.plugins
from tokenflow import (
    BLENDER,
    EDITOR,
    FEATURES,
    INVERSION,
    KEYFRAMES,
    Params,
    StageBase,
    StageContext,
)
from tokenflow.cache.store import create_array, write_coord
from tokenflow.cli import cli
from tokenflow.cache.layouts import read_timesteps
from tokenflow.manager import PluginLoadError, make_plugin_manager
from tokenflow.registry import RegistryError, build_registry
from tokenflow.stages import CHUNK, TIMESTEP
from tokenflow.testing import fake_stage, stage_plugin, synthetic_frames
from tokenflow.video import write_frames

BUILTIN_EPS = sorted(ep.name for ep in entry_points(group="tokenflow")
                     if ep.dist is not None and ep.dist.metadata["name"] == "tokenflow")
N, B, STEPS = 4, 2, 4
COMMON = ["--steps", str(STEPS), "--inversion-steps", str(STEPS), "--frames", str(N),
          "--batch-size", str(B), "--size", "64", "-q"]
#: Environment of every CLI call: all plugins, one-line errors (restored after each call).
ENV = {"TOKENFLOW_LOAD_PLUGINS": None, "TOKENFLOW_DEBUG": None, "TOKENFLOW_CACHE_DIR": None}


# --------------------------------------------------------------------------------------------- fakes


def _module(name: str, source: str) -> types.ModuleType:
    """A plugin module as a distribution ships it (its code runs under its own module name)."""
    module = types.ModuleType(name)
    exec(compile(source, f"<{name}>", "exec"), module.__dict__)  # noqa: S102 (our own source)
    return module


def _lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.strip()]


def _one_error_line(result: Result) -> str:
    """The single line of a one-line CLI error (nothing else on either stream)."""
    assert result.exit_code != 0, result.output
    assert "Traceback" not in result.output
    assert _lines(result.stdout) == [], result.stdout
    (line,) = _lines(result.stderr)
    assert line.startswith("Error: "), line
    return line


# --------------------------------------------------------------------------------------------- import failures

BROKEN = "broken_pkg.stages"


@pytest.fixture
def broken_ep(monkeypatch: pytest.MonkeyPatch) -> FakeEntryPoint:
    """The distribution ``broken-pkg 0.3``, whose plugin module fails to import."""
    ep = FakeEntryPoint(BROKEN, FakeDist("broken-pkg", "0.3"),
                        error=ImportError("No module named 'missing_dependency'"))
    add_entry_points(monkeypatch, ep)
    return ep


def _check_failure_message(message: str) -> None:
    assert "\n" not in message
    assert BROKEN in message and "broken-pkg" in message
    assert "ImportError" in message and "missing_dependency" in message


def test_plugin_failing_to_import_is_skipped_and_recorded(broken_ep: FakeEntryPoint) -> None:
    pm = make_plugin_manager(environ={})
    assert broken_ep.loads == 1
    assert list(pm.failures) == [BROKEN]
    _check_failure_message(pm.failures[BROKEN])
    assert pm.get_plugin(BROKEN) is None and BROKEN not in pm.distributions
    for name in BUILTIN_EPS:  # the others load as usual
        assert pm.get_plugin(name) is not None, name
    assert "pnp" in build_registry(pm).stages[EDITOR]


def test_strict_loading_raises_on_a_plugin_failing_to_import(broken_ep: FakeEntryPoint) -> None:
    with pytest.raises(PluginLoadError) as info:
        make_plugin_manager(environ={}, strict=True)
    _check_failure_message(str(info.value))
    assert isinstance(info.value.__cause__, ImportError)
    assert make_plugin_manager(environ={}).failures == {BROKEN: str(info.value)}


def test_only_the_first_line_of_an_import_error_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    error = SyntaxError("invalid syntax (stages.py, line 3)\n    def f(:\n         ^")
    add_entry_points(monkeypatch, FakeEntryPoint(BROKEN, FakeDist("broken-pkg", "0.3"), error=error))
    message = make_plugin_manager(environ={}).failures[BROKEN]
    assert message.endswith("SyntaxError: invalid syntax (stages.py, line 3)"), message


def test_a_blocked_broken_plugin_is_not_even_imported(broken_ep: FakeEntryPoint) -> None:
    pm = make_plugin_manager(environ={"TOKENFLOW_LOAD_PLUGINS": "someone-else"})
    assert broken_ep.loads == 0 and pm.failures == {} and pm.is_blocked(BROKEN)


def test_a_builtin_plugin_failing_to_import_is_always_an_error(
        monkeypatch: pytest.MonkeyPatch) -> None:
    ep = FakeEntryPoint("tokenflow_plugins.lost", FakeDist("tokenflow", "0.1.0"),
                        error=ImportError("cannot import name 'gone' from 'tokenflow.editing.loop'"))
    add_entry_points(monkeypatch, ep)
    for strict in (False, True):
        with pytest.raises(PluginLoadError, match=r"tokenflow_plugins\.lost .*tokenflow.*'gone'"):
            make_plugin_manager(environ={}, strict=strict)
    # and TOKENFLOW_LOAD_PLUGINS cannot block the built-ins
    with pytest.raises(PluginLoadError):
        make_plugin_manager(environ={"TOKENFLOW_LOAD_PLUGINS": ""})
    for command in (["plugins"], ["stages"]):
        result = CliRunner().invoke(cli, command, env=ENV)
        line = _one_error_line(result)
        assert result.exit_code == 1
        assert "tokenflow_plugins.lost" in line and "'gone'" in line



def test_tf_plugins_lists_the_failure_and_exits_1(broken_ep: FakeEntryPoint) -> None:
    result = CliRunner().invoke(cli, ["plugins"], env=ENV)
    assert result.exit_code == 1 and "Traceback" not in result.output
    listed = _lines(result.stdout)
    for name in BUILTIN_EPS:  # what did load is still listed
        assert any(ln.startswith(f"{name}  [tokenflow ") for ln in listed), name
    (failed,) = [ln for ln in listed if "FAILED" in ln]
    assert failed.startswith(f"{BROKEN}  [FAILED] ")
    _check_failure_message(failed)
    (error,) = _lines(result.stderr)
    assert error.startswith("Error: 1 plugin(s) failed to import")


def test_tf_stages_warns_once_and_lists_the_stages(broken_ep: FakeEntryPoint) -> None:
    result = CliRunner().invoke(cli, ["stages"], env=ENV)
    assert result.exit_code == 0, result.output
    (warning,) = _lines(result.stderr)
    assert warning.startswith("warning: ")
    _check_failure_message(warning)
    assert "  pnp (v1, tokenflow_plugins.pnp (tokenflow 0.1.0))" in result.stdout


#: Imports fine, but its hookimpl declares an argument that after_stage does not have.
BADSIG_SOURCE = '''
from tokenflow import hookimpl

@hookimpl
def after_stage(stage, outcome):
    pass
'''


def test_a_plugin_with_an_invalid_hookimpl_is_skipped_and_named(
        monkeypatch: pytest.MonkeyPatch) -> None:
    name = "tokenflow_badsig.hooks"
    add_entry_points(monkeypatch, FakeEntryPoint(name, FakeDist("tokenflow-badsig", "0.1"),
                                                  _module(name, BADSIG_SOURCE)))
    result = CliRunner().invoke(cli, ["stages"], env=ENV)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    (line,) = _lines(result.stderr)
    assert name in line and "tokenflow-badsig" in line and "outcome" in line
    pm = make_plugin_manager(environ={})
    assert name in pm.failures and pm.get_plugin(name) is None


# --------------------------------------------------------------------------------------------- tf run


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, tf_tiny_model_dir: Path) -> CliWorld:
    """A clip, the tiny model and a cache filled by one good ``tf run``."""
    root = tmp_path_factory.mktemp("isolation")
    write_frames(root / "clip", synthetic_frames(N, height=64, width=64))
    world = CliWorld(root=root, clip=root / "clip", model=Path(tf_tiny_model_dir),
                     cache=root / "cache", env=cli_env(root, TOKENFLOW_DEBUG=None),
                     settings=COMMON)
    good = world.run(cache=world.cache, out=root / "good-out")
    assert good.exit_code == 0, good.output
    return world


def _snapshot(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root``, by relative path (not the entries' empty lock
    files, which stay once created: removing them would race with a waiting process)."""
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and not p.name.endswith(".lock")}


def _temps(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if ".tmp-" in p.name]


@pytest.fixture
def used_cache(world: CliWorld, tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A copy of the good run's cache, and its snapshot."""
    cache = tmp_path / "cache"
    shutil.copytree(world.cache, cache)
    before = _snapshot(cache)
    assert len({path.split("/")[0] for path in before}) == 6  # every kind has its entry
    return cache, before


def test_tf_run_warns_about_a_broken_plugin_and_still_runs(
        broken_ep: FakeEntryPoint, world: CliWorld, used_cache, tmp_path: Path) -> None:
    cache, before = used_cache
    result = world.run("--seed", "7", cache=cache, out=tmp_path / "out")  # new keyframes onwards
    assert result.exit_code == 0, result.output
    (warning,) = _lines(result.stderr)
    assert warning.startswith("warning: ") and warning.endswith("; skipped")
    _check_failure_message(warning)
    assert (tmp_path / "out" / "edited.mp4").stat().st_size > 0
    added = {p.parent.name for p in cache.glob("*/*.zarr")
             if not any(k.startswith(f"{p.parent.name}/{p.name}/") for k in before)}
    assert added == {"keyframes", "correspondence", "editor", "blender"}


#: A plugin module whose after_stage hook raises (a notifier that cannot reach its server).
NOTIFY_SOURCE = '''
from tokenflow import hookimpl

@hookimpl
def after_stage(stage, result):
    raise ConnectionError(f"cannot reach the notification server after {stage.kind}")
'''


class DividingEditor(PnPEditor):
    """PnP with a plugin bug: divides by the number of masked tokens, which is zero here."""

    name = "dividing"

    def edit_step(self, step):
        masked = 0
        self.scale = len(step.keyframes) / masked
        return super().edit_step(step)


class PartialKeyframes(StageBase):
    """Writes its coordinates and the first rows, then indexes past its table."""

    kind = KEYFRAMES
    name = "partial"
    requires = (INVERSION,)
    reads_config = ("steps", "batch_size")
    #: the temporary store it was writing when it failed (set during the run)
    wrote: ClassVar[list[Path]] = []

    def run(self, ctx: StageContext) -> None:
        timesteps = read_timesteps(ctx.inputs[INVERSION])
        table = [[0, 2]] * (len(timesteps) - 1)  # one row short
        write_coord(ctx.output, TIMESTEP, timesteps)
        write_coord(ctx.output, CHUNK, range(2))
        arr = create_array(ctx.output, "keyframes", dims=(TIMESTEP, CHUNK),
                           shape=(len(timesteps), 2), dtype="int64")
        PartialKeyframes.wrote.append(Path(str(ctx.output.store.root)))
        for i in range(len(timesteps)):
            arr[i] = np.asarray(table[i])


class FlakyBlender(TokenFlowBlender):
    """The built-in blender that gives up half-way through the loop."""

    name = "flaky"
    steps_seen: ClassVar[list[int]] = []

    def blend_step(self, step, tokens):
        FlakyBlender.steps_seen.append(step.index)
        if step.index == STEPS // 2:
            raise FloatingPointError(f"non-finite latents at step {step.index}")
        return super().blend_step(step, tokens)


@dataclass
class Failure:
    ep: str
    plugin: Any
    args: tuple[str, ...]
    what: str
    error: str


FAILURES = {
    "editor": Failure("tokenflow_boom.editor", stage_plugin(DividingEditor),
                      ("--editor", "dividing"),
                      "the editing loop (editor 'dividing', blender 'tokenflow')",
                      "ZeroDivisionError: division by zero"),
    "keyframes": Failure("tokenflow_boom.keyframes", stage_plugin(PartialKeyframes),
                         ("--stage", "keyframes=partial"), "keyframes stage 'partial'",
                         "IndexError: list index out of range"),
    "blender": Failure("tokenflow_boom.blender", stage_plugin(FlakyBlender),
                       ("--stage", "blender=flaky"),
                       "the editing loop (editor 'pnp', blender 'flaky')",
                       "FloatingPointError: non-finite latents at step 2"),
    "after_stage": Failure("tokenflow_notify.hooks", _module("tokenflow_notify.hooks", NOTIFY_SOURCE),
                           (), "the after_stage hook of inversion stage 'ddim'",
                           "ConnectionError: cannot reach the notification server after inversion"),
}


@pytest.mark.parametrize("case", list(FAILURES))
def test_a_plugin_failing_during_tf_run_is_named_and_the_cache_is_untouched(
        case: str, world: CliWorld, used_cache, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    failure = FAILURES[case]
    add_entry_points(monkeypatch, FakeEntryPoint(failure.ep, FakeDist("tokenflow-boom", "1.2"),
                                                  failure.plugin))
    monkeypatch.setattr(PartialKeyframes, "wrote", [])
    monkeypatch.setattr(FlakyBlender, "steps_seen", [])
    cache, before = used_cache
    out = tmp_path / "out"
    result = world.run(*failure.args, cache=cache, out=out)
    line = _one_error_line(result)
    assert result.exit_code == 1
    assert line.startswith(f"Error: {failure.what} failed in plugin {failure.ep} "
                           f"(tokenflow-boom 1.2): {failure.error}"), line
    # nothing lost, nothing corrupted, nothing partial, no output
    assert _snapshot(cache) == before
    assert _temps(cache) == [] and not out.exists()
    if case == "keyframes":
        assert not list((cache / "keyframes").glob("partial-*"))
        (tmp,) = PartialKeyframes.wrote
        # it wrote into the entry's partial store, which an error deletes (a kill keeps it)
        assert tmp.name.endswith(".partial.zarr") and not tmp.exists()
    if case == "blender":
        assert FlakyBlender.steps_seen == list(range(STEPS // 2 + 1))  # it did fail mid-loop
        assert not list((cache / "blender").glob("flaky-*"))
    if case == "editor":
        assert not list((cache / "editor").glob("dividing-*"))


def test_debug_lets_the_original_exception_through(world: CliWorld, used_cache, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    failure = FAILURES["editor"]
    add_entry_points(monkeypatch, FakeEntryPoint(failure.ep, FakeDist("tokenflow-boom", "1.2"),
                                                  failure.plugin))
    cache, before = used_cache
    debug_env = os.environ.get("TOKENFLOW_DEBUG")
    result = world.run(*failure.args, cache=cache, out=tmp_path / "out", debug=True)
    assert result.exit_code == 1
    assert isinstance(result.exception, ZeroDivisionError), repr(result.exception)
    assert "Error:" not in result.output
    assert _snapshot(cache) == before and _temps(cache) == []
    assert os.environ.get("TOKENFLOW_DEBUG") == debug_env  # --debug did not leak into later tests


class EstimatingEditor(PnPEditor):
    """PnP whose size estimate (printed before a run) has a bug."""

    name = "estimating"

    def estimate_bytes(self, ctx):
        chunks = 0
        return super().estimate_bytes(ctx) // chunks


class ImposingEditor(PnPEditor):
    """PnP whose upstream_params reads a RunConfig field that does not exist."""

    name = "imposing"

    def upstream_params(self, config):
        return {FEATURES: {"conv_t": config.conv_fraction}}


@pytest.mark.parametrize("cls, error", [(EstimatingEditor, "ZeroDivisionError"),
                                        (ImposingEditor, "AttributeError")])
def test_a_plugin_failing_while_a_run_is_planned_is_named(
        cls: type, error: str, world: CliWorld, used_cache, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    add_entry_points(monkeypatch, FakeEntryPoint("tokenflow_boom.editor",
                                                  FakeDist("tokenflow-boom", "1.2"),
                                                  stage_plugin(cls)))
    cache, before = used_cache
    result = world.run("--editor", cls.name, cache=cache, out=tmp_path / "out")
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    line = _one_error_line(result)
    assert "tokenflow_boom.editor (tokenflow-boom 1.2)" in line and error in line, line
    assert _snapshot(cache) == before and _temps(cache) == []


# --------------------------------------------------------------------------------------------- duplicates


def test_a_stage_name_from_two_distributions_names_both(monkeypatch: pytest.MonkeyPatch,
                                                        tmp_path: Path) -> None:
    alpha = FakeEntryPoint("tokenflow_alpha.editor", FakeDist("tokenflow-alpha", "1.0"),
                           stage_plugin(fake_stage(EDITOR, "twin")))
    beta = FakeEntryPoint("tokenflow_beta.editor", FakeDist("tokenflow-beta", "2.0"),
                          stage_plugin(fake_stage(EDITOR, "twin")))
    add_entry_points(monkeypatch, alpha, beta)
    pm = make_plugin_manager(environ={})
    with pytest.raises(RegistryError) as info:
        build_registry(pm)
    message = str(info.value)
    assert "'twin'" in message
    assert "tokenflow_alpha.editor (tokenflow-alpha 1.0)" in message
    assert "tokenflow_beta.editor (tokenflow-beta 2.0)" in message
    for command in (["stages"], ["run", str(tmp_path / "no-video"), "--prompt", "x"]):
        result = CliRunner().invoke(cli, command, env=ENV)
        line = _one_error_line(result)
        assert result.exit_code == 1
        assert "'twin'" in line and "tokenflow-alpha 1.0" in line and "tokenflow-beta 2.0" in line
    # loading one of the two distributions is the way out
    result = CliRunner().invoke(cli, ["stages"], env={**ENV, "TOKENFLOW_LOAD_PLUGINS": "tokenflow-beta"})
    assert result.exit_code == 0, result.output
    assert "  twin (v1, tokenflow_beta.editor (tokenflow-beta 2.0))" in result.stdout


# --------------------------------------------------------------------------------------------- install


def _installed() -> set[tuple[str, str]]:
    return {(d.metadata["name"], d.version) for d in importlib.metadata.distributions()}


@pytest.fixture
def no_pip(monkeypatch: pytest.MonkeyPatch) -> list:
    """Records (and refuses) every pip call the CLI would make."""
    calls: list = []

    def refuse(args, quiet):
        calls.append(args)
        raise AssertionError(f"pip {args} must not run in this test")

    monkeypatch.setattr(tokenflow.cli.plugins, "_pip", refuse)
    return calls


@dataclass
class FakePluginDist:
    """An installed distribution providing one tokenflow plugin (for ``tf uninstall``'s list)."""

    metadata: dict
    version: str
    entry_points: list


@pytest.fixture
def fake_plugin_dist(monkeypatch: pytest.MonkeyPatch) -> str:
    fake = FakePluginDist({"name": "tokenflow-fakeplug"}, "0.9",
                          [types.SimpleNamespace(group="tokenflow", name="tokenflow_fakeplug.stages")])
    real = importlib.metadata.distributions
    monkeypatch.setattr(importlib.metadata, "distributions", lambda: [*real(), fake])
    return "tokenflow-fakeplug"


def _refused(args: list[str], no_pip: list) -> str:
    before = _installed()
    result = CliRunner().invoke(cli, args, env=ENV)
    line = _one_error_line(result)
    assert result.exit_code == 1
    assert no_pip == [] and _installed() == before
    return line


@pytest.mark.parametrize("target", ["{tmp}/no-such-plugin", "./no-such-plugin-dir", "~/no/such/plugin"])
def test_install_of_a_missing_path_is_refused(target: str, tmp_path: Path, no_pip: list) -> None:
    target = target.format(tmp=tmp_path)
    line = _refused(["install", target], no_pip)
    assert line == f"Error: {target} does not exist"


@pytest.mark.parametrize("name", ["tokenflow", "TokenFlow"])
def test_uninstall_of_tokenflow_itself_is_refused(name: str, no_pip: list) -> None:
    line = _refused(["uninstall", name], no_pip)
    assert "not tokenflow itself" in line


def test_uninstall_of_an_unknown_name_lists_the_plugin_distributions(no_pip: list,
                                                                     fake_plugin_dist: str) -> None:
    line = _refused(["uninstall", "nosuchdist"], no_pip)
    head, _, listed = line.partition("installed plugin distributions: ")
    assert head.startswith("Error: nosuchdist is not installed")
    names = set(listed.split(", "))
    assert fake_plugin_dist in names and "tokenflow" not in names and "click" not in names


def test_uninstall_of_a_distribution_without_plugins_is_refused(no_pip: list) -> None:
    assert ("click", importlib.metadata.version("click")) in _installed()
    line = _refused(["uninstall", "click"], no_pip)
    assert line.startswith("Error: click provides no tokenflow plugins")
