"""Plugins: entry-point and hook guards, the registry, TOKENFLOW_LOAD_PLUGINS, lifecycle hooks on a
real tiny run, replacing a stage with a test plugin, and the built-ins loaded from a built wheel."""

from __future__ import annotations

import inspect
import re
from importlib.metadata import entry_points
from pathlib import Path

import numpy as np
import pytest
import tomllib
import zarr
from click.testing import CliRunner
from helpers import FakeDist, FakeEntryPoint, add_entry_points
from helpers_venv import build_tokenflow_wheel, clean_env, make_venv, run

from tokenflow import (
    BLENDER,
    CORRESPONDENCE,
    EDITOR,
    FEATURES,
    INVERSION,
    KEYFRAMES,
    KINDS,
    Params,
    StageBase,
    StageContext,
    hookimpl,
    hookspecs,
)
from tokenflow.cache.store import StageCache, create_array, write_coord
from tokenflow.cli import cli
from tokenflow.cache.layouts import read_timesteps
from tokenflow.manager import PluginLoadError, make_plugin_manager
from tokenflow.registry import REGISTER_HOOKS, RegistryError, build_registry
from tokenflow.stages import CHUNK, TIMESTEP
from tokenflow.testing import fake_stage, make_job, stage_plugin, synthetic_frames

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
BUILTIN_EPS: dict[str, str] = PYPROJECT["project"]["entry-points"]["tokenflow"]
DOCS = ROOT / "docs" / "plugins.md"
STEPS, BATCH, N = 4, 3, 6
PROMPT = "a blue ball"
#: ``make_job``'s settings for the lifecycle runs.
RUN = {"steps": STEPS, "batch_size": BATCH,
       "params": {"inversion": {"inversion_steps": STEPS}, "editor": {"prompt": PROMPT}}}

#: Every hookspec of tokenflow.hookspecs, by name (found by pluggy's marker, not by a list).
HOOKSPECS = {name: fn for name, fn in vars(hookspecs).items()
             if callable(fn) and hasattr(fn, "tokenflow_spec")}


# --------------------------------------------------------------------------------------------- guards


def test_every_plugin_module_is_an_entry_point_and_back() -> None:
    package_dir = PYPROJECT["tool"]["setuptools"]["package-dir"]["tokenflow_plugins"]
    modules = {f"tokenflow_plugins.{p.stem}" for p in (ROOT / package_dir).glob("*.py")
               if p.stem != "__init__"}
    assert modules, "no plugin modules found"
    assert set(BUILTIN_EPS) == modules
    for name, target in BUILTIN_EPS.items():
        assert name == target, "entry-point names must be the module path"


def test_installed_metadata_matches_pyproject() -> None:
    """A plugin added to pyproject but not reinstalled would silently not load."""
    installed = {ep.name: ep.value for ep in entry_points(group="tokenflow")
                 if ep.dist is not None and ep.dist.metadata["name"] == "tokenflow"}
    assert installed == BUILTIN_EPS


def test_every_builtin_module_registers_stages() -> None:
    import importlib

    discovery = [*REGISTER_HOOKS.values(), "register_control_extractors", "register_scorers"]
    for module_name in BUILTIN_EPS:
        module = importlib.import_module(module_name)
        impls = [n for n in discovery if hasattr(getattr(module, n, None), "tokenflow_impl")]
        assert impls, f"{module_name} implements no register_* hook"


def test_every_hook_has_a_test() -> None:
    assert len(HOOKSPECS) >= 10
    own = inspect.getsource(test_every_hook_has_a_test)
    text = "\n".join(p.read_text() for p in sorted((ROOT / "tests").glob("test_*.py"))).replace(own, "")
    untested = [name for name in HOOKSPECS if not re.search(rf"\b{name}\b", text)]
    assert untested == []


def _doc_blocks(text: str) -> list[str]:
    sections = re.split(r"(?m)^#{1,6} ", text)
    return text.splitlines() + sections


def test_docs_list_every_hook_with_its_arguments() -> None:
    text = DOCS.read_text()
    blocks = _doc_blocks(text)
    for name, fn in HOOKSPECS.items():
        args = list(inspect.signature(fn).parameters)
        assert re.search(rf"\b{name}\b", text), f"docs/plugins.md does not mention {name}"
        assert any(re.search(rf"\b{name}\b", block)
                   and all(re.search(rf"\b{arg}\b", block) for arg in args) for block in blocks), (
            f"docs/plugins.md has no line or section with {name} and all of {args}")


def test_hookspecs_have_docstrings_and_firstresult_only_on_run_stage() -> None:
    for name, fn in HOOKSPECS.items():
        assert fn.__doc__ and len(fn.__doc__.strip()) > 40, name
        first = fn.tokenflow_spec.get("firstresult", False)
        assert first == (name == "run_stage"), name
    assert set(REGISTER_HOOKS.values()) <= set(HOOKSPECS)


# --------------------------------------------------------------------------------------------- registry


def test_builtin_stage_names_are_unique_per_kind(tf_plugin_manager) -> None:
    seen: dict[tuple[str, str], list[str]] = {}
    for kind, hook_name in REGISTER_HOOKS.items():
        for impl in getattr(tf_plugin_manager.hook, hook_name).get_hookimpls():
            impl.function(register=lambda cls, _k=kind, _p=impl.plugin_name:
                          seen.setdefault((_k, cls.name), []).append(_p))
    dupes = {k: v for k, v in seen.items() if len(v) > 1}
    assert dupes == {}
    registry = build_registry(tf_plugin_manager)
    for kind in KINDS:
        assert registry.stages[kind], f"no built-in {kind} stage"
        for name, cls in registry.stages[kind].items():
            assert (cls.kind, cls.name) == (kind, name)


@pytest.mark.parametrize(
    "kind, hook_name",
    [
        (INVERSION, "register_inversions"),
        (FEATURES, "register_features"),
        (KEYFRAMES, "register_keyframes"),
        (CORRESPONDENCE, "register_correspondences"),
        (EDITOR, "register_editors"),
        (BLENDER, "register_blenders"),
    ],
)
def test_each_register_hook_adds_stages_of_its_kind(tf_register, kind: str, hook_name: str) -> None:
    assert REGISTER_HOOKS[kind] == hook_name
    cls = fake_stage(kind, f"test-{kind}")
    registry = tf_register(stage_plugin(cls, hook=hook_name), name=f"test-plugin-{kind}")
    assert registry.get(kind, f"test-{kind}") is cls
    assert registry.owner(kind, f"test-{kind}") == f"test-plugin-{kind}"
    others = [k for k in KINDS if k != kind]
    assert all(f"test-{kind}" not in registry.stages[k] for k in others)


def test_register_hooks_are_exactly_the_kinds() -> None:
    assert set(REGISTER_HOOKS) == set(KINDS)
    # every discovery hook is a stage kind's, except the control extractors' and the scorers'
    # (helpers, not stages)
    assert set(REGISTER_HOOKS.values()) | {"register_control_extractors", "register_scorers"} == {
        n for n in HOOKSPECS if n.startswith("register_")}


def test_duplicate_stage_name_names_both_plugins(tf_register) -> None:
    dup = fake_stage(EDITOR, "pnp")
    with pytest.raises(RegistryError) as info:
        tf_register(stage_plugin(dup, hook="register_editors"), name="my-dup-plugin")
    message = str(info.value)
    assert "'pnp'" in message and "editor" in message
    assert "tokenflow_plugins.pnp" in message and "my-dup-plugin" in message


def test_duplicate_within_one_plugin_is_an_error(tf_register) -> None:
    a, b = fake_stage(KEYFRAMES, "same"), fake_stage(KEYFRAMES, "same")
    with pytest.raises(RegistryError, match="registered twice"):
        tf_register(stage_plugin(a, b, hook="register_keyframes"), name="twice")


def test_stage_under_the_wrong_hook_is_rejected(tf_register) -> None:
    with pytest.raises(RegistryError, match="kind 'keyframes' but was registered as 'editor'"):
        tf_register(stage_plugin(fake_stage(KEYFRAMES, "misplaced"), hook="register_editors"),
                    name="wrong-hook")


@pytest.mark.parametrize(
    "cls, match",
    [
        (type("NoName", (StageBase,), {"kind": EDITOR, "edit_step": lambda s, st: None}), "no name"),
        (fake_stage(EDITOR, "noop", edit_step=None), r"lacks edit_step\(\), required by the editor protocol"),
        (type("Bare", (), {"kind": EDITOR, "name": "bare"}), "has no 'version'"),
    ],
)
def test_malformed_stage_classes_are_rejected(tf_register, cls, match: str) -> None:
    with pytest.raises(RegistryError, match=match):
        tf_register(stage_plugin(cls, hook="register_editors"), name="malformed")


def test_a_plugin_failing_in_its_register_hook_is_named(tf_register) -> None:
    class Broken:
        @hookimpl
        def register_blenders(self, register):
            raise ZeroDivisionError("oops")

    with pytest.raises(RegistryError, match=r"plugin broken-plugin failed in register_blenders: oops"):
        tf_register(Broken(), name="broken-plugin")


def test_tf_register_unregisters_after_the_test(tf_plugin_manager, tf_register) -> None:
    plugin = stage_plugin(fake_stage(KEYFRAMES, "temp"), hook="register_keyframes")
    registry = tf_register(plugin, name="temp-plugin")
    assert "temp" in registry.stages[KEYFRAMES]
    assert tf_plugin_manager.get_plugin("temp-plugin") is plugin
    # the fixture's teardown is exercised by every other test here; a fresh manager never has it
    assert make_plugin_manager(environ={}).get_plugin("temp-plugin") is None


# --------------------------------------------------------------------------------------------- loading


FAKE_EP_NAME = "tokenflow_fake.editor"


@pytest.fixture
def fake_ep(monkeypatch: pytest.MonkeyPatch) -> FakeEntryPoint:
    """A third-party distribution ``tokenflow-fake 9.9`` providing the editor ``fake-editor``."""
    ep = FakeEntryPoint(FAKE_EP_NAME, FakeDist("tokenflow-fake", "9.9"),
                        stage_plugin(fake_stage(EDITOR, "fake-editor")))
    add_entry_points(monkeypatch, ep)
    return ep


def _builtins_loaded(pm) -> None:
    for name in BUILTIN_EPS:
        assert pm.get_plugin(name) is not None, name
        assert pm.distributions[name] == ("tokenflow", "0.1.0")
    assert pm.get_plugin("tokenflow.cache") is not None and pm.get_plugin("tokenflow.runner") is not None


@pytest.mark.parametrize("allowed", [None, "tokenflow-fake", "Tokenflow_Fake", " other , tokenflow-fake "])
def test_third_party_plugin_loads_when_allowed(fake_ep: FakeEntryPoint, allowed) -> None:
    environ = {} if allowed is None else {"TOKENFLOW_LOAD_PLUGINS": allowed}
    pm = make_plugin_manager(environ=environ)
    _builtins_loaded(pm)
    assert fake_ep.loads == 1
    assert pm.get_plugin(FAKE_EP_NAME) is not None
    assert pm.distributions[FAKE_EP_NAME] == ("tokenflow-fake", "9.9")
    registry = build_registry(pm)
    assert "fake-editor" in registry.stages[EDITOR]
    assert registry.owner(EDITOR, "fake-editor") == f"{FAKE_EP_NAME} (tokenflow-fake 9.9)"


@pytest.mark.parametrize("allowed", ["", "other-dist", "tokenflow", "tokenflow-fake-2"])
def test_third_party_plugin_is_blocked_when_not_listed(fake_ep: FakeEntryPoint, allowed: str) -> None:
    pm = make_plugin_manager(environ={"TOKENFLOW_LOAD_PLUGINS": allowed})
    _builtins_loaded(pm)
    assert fake_ep.loads == 0, "a blocked plugin must not even be imported"
    assert pm.get_plugin(FAKE_EP_NAME) is None
    assert pm.is_blocked(FAKE_EP_NAME)
    assert "fake-editor" not in build_registry(pm).stages[EDITOR]
    assert "pnp" in build_registry(pm).stages[EDITOR]


def test_environment_variable_is_read_from_os_environ(fake_ep: FakeEntryPoint,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOKENFLOW_LOAD_PLUGINS", "nobody")
    assert make_plugin_manager().get_plugin(FAKE_EP_NAME) is None
    monkeypatch.delenv("TOKENFLOW_LOAD_PLUGINS")
    assert make_plugin_manager().get_plugin(FAKE_EP_NAME) is not None


def test_no_entry_points_means_core_only(fake_ep: FakeEntryPoint) -> None:
    pm = make_plugin_manager(load_entry_points=False, environ={})
    assert {name for name, _ in pm.list_name_plugin()} == {"tokenflow.cache", "tokenflow.runner"}
    assert fake_ep.loads == 0


def test_allow_list_uses_pep503_normalised_names(monkeypatch: pytest.MonkeyPatch) -> None:
    ep = FakeEntryPoint(FAKE_EP_NAME, FakeDist("tokenflow.fake", "1.0"),
                        stage_plugin(fake_stage(EDITOR, "fake-editor")))
    add_entry_points(monkeypatch, ep, installed=False)
    pm = make_plugin_manager(environ={"TOKENFLOW_LOAD_PLUGINS": "tokenflow-fake"})
    assert pm.get_plugin(FAKE_EP_NAME) is not None


def test_plugin_that_fails_to_import_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    ep = FakeEntryPoint("broken_pkg.stages", FakeDist("broken-pkg", "0.3"),
                        error=ImportError("No module named 'missing_dependency'"))
    add_entry_points(monkeypatch, ep)
    # the default skips it and records one line naming it and its distribution
    pm = make_plugin_manager(environ={})
    assert list(pm.failures) == ["broken_pkg.stages"]
    message = pm.failures["broken_pkg.stages"]
    assert "broken_pkg.stages" in message and "broken-pkg" in message
    assert "missing_dependency" in message and "\n" not in message
    assert pm.get_plugin("broken_pkg.stages") is None
    _builtins_loaded(pm)
    # strict loading makes it an error with the same message
    with pytest.raises(PluginLoadError) as info:
        make_plugin_manager(environ={}, strict=True)
    assert str(info.value) == message
    # blocked, it is never imported, so it cannot break a run
    loads = ep.loads
    pm = make_plugin_manager(environ={"TOKENFLOW_LOAD_PLUGINS": ""})
    assert ep.loads == loads and pm.is_blocked("broken_pkg.stages") and pm.failures == {}
    # tf plugins lists it as failed and exits 1, with one line of error
    result = CliRunner().invoke(cli, ["plugins"], env={"TOKENFLOW_LOAD_PLUGINS": None,
                                                       "TOKENFLOW_DEBUG": None})
    assert result.exit_code == 1 and "Traceback" not in result.output
    (failed,) = [ln for ln in result.stdout.splitlines() if "broken_pkg.stages" in ln]
    assert failed.startswith("broken_pkg.stages  [FAILED]") and "broken-pkg" in failed
    assert result.stderr.strip().splitlines() == [
        "Error: 1 plugin(s) failed to import (listed above)"]


def test_tf_plugins_lists_a_third_party_plugin(fake_ep: FakeEntryPoint) -> None:
    result = CliRunner().invoke(cli, ["plugins"], env={"TOKENFLOW_LOAD_PLUGINS": None})
    assert result.exit_code == 0, result.output
    (line,) = [ln for ln in result.stdout.splitlines() if ln.startswith(FAKE_EP_NAME)]
    assert "[tokenflow-fake 9.9]" in line and "register_editors" in line


def test_tf_plugins_does_not_list_a_blocked_plugin_as_loaded(fake_ep: FakeEntryPoint) -> None:
    result = CliRunner().invoke(cli, ["plugins"], env={"TOKENFLOW_LOAD_PLUGINS": "someone-else"})
    assert result.exit_code == 0
    assert all(name in result.stdout for name in BUILTIN_EPS)
    listed = [ln for ln in result.stdout.splitlines() if ln.startswith(FAKE_EP_NAME)]
    assert all("blocked" in ln for ln in listed), listed


# --------------------------------------------------------------------------------------------- lifecycle


@pytest.fixture(scope="module")
def frames() -> np.ndarray:
    return synthetic_frames(N, height=64, width=64)


def _temps(root: Path) -> list[Path]:
    return [p for p in root.rglob(".*") if ".tmp-" in p.name] if root.exists() else []


class Observer:
    """Records the lifecycle hooks and checks the cache state at each one."""

    def __init__(self) -> None:
        self.events: list[tuple] = []
        self.wrapped: list[tuple] = []

    @hookimpl
    def before_stage(self, ctx, stage, key):
        assert ctx.keys[stage.kind] == key
        complete = ctx.cache.lookup(stage.kind, stage.name, key) is not None
        self.events.append(("before", stage.kind, key, complete))

    @hookimpl
    def after_stage(self, ctx, stage, key, result):
        assert ctx.cache.lookup(stage.kind, stage.name, key) == result.path  # complete by now
        self.events.append(("after", stage.kind, key, result.cached, result.key))

    @hookimpl
    def on_stage_error(self, ctx, stage, key, error):
        self.events.append(("error", stage.kind, key, error, _temps(ctx.cache.root),
                            ctx.cache.lookup(stage.kind, stage.name, key)))

    @hookimpl(wrapper=True)
    def run_stage(self, ctx, stage):
        result = yield
        self.wrapped.append((stage.kind, result.cached))
        return result


def test_lifecycle_hooks_see_every_stage_in_order(tf_register, tf_plugin_manager, tf_tiny_model,
                                                  frames, tmp_path: Path) -> None:
    observer = Observer()
    tf_register(observer, name="observer")
    cache = tmp_path / "cache"

    job = make_job(tf_plugin_manager, tf_tiny_model, frames, cache=cache, **RUN)
    results = job.run()
    seen = [e[1] for e in observer.events if e[0] == "before"]
    # The editor runs inside the blender's run_stage (the editing loop writes both stores): the
    # observers see both around that one call.
    assert seen == list(KINDS)
    assert observer.events == _expected_events(job, complete=False, cached=False)
    assert observer.wrapped == [(kind, False) for kind in KINDS if kind != EDITOR]
    assert set(results) == set(KINDS)
    assert all(not r.cached for r in results.values())

    observer.events.clear()
    observer.wrapped.clear()
    again = make_job(tf_plugin_manager, tf_tiny_model, frames, cache=cache, **RUN)
    assert again.keys == job.keys and again.pending() == []
    results = again.run()
    assert observer.events == _expected_events(job, complete=True, cached=True)
    assert observer.wrapped == [(kind, True) for kind in KINDS if kind != EDITOR]
    assert all(r.cached for r in results.values())

    # the loop writes the editor's and the blender's stores together: with only the blender's
    # gone, both are computed again, and the plan says so (not "reusing editor")
    import shutil

    from tokenflow.plan_report import describe_job
    from tokenflow.preflight import plan_line

    blender = again.stages[BLENDER]
    shutil.rmtree(again.base.cache.path(BLENDER, blender.name, again.keys[BLENDER]))
    third = make_job(tf_plugin_manager, tf_tiny_model, frames, cache=cache, **RUN)
    assert third.pending() == [EDITOR, BLENDER]
    line = plan_line(third, third.pending(), 0)
    assert f"computing {EDITOR}, {BLENDER}" in line and EDITOR not in line.split(";")[0]
    status = {s.kind: s.status for s in describe_job(third).stages}
    assert status[EDITOR] == status[BLENDER] != status[INVERSION]


def _expected_events(job, *, complete: bool, cached: bool) -> list[tuple]:
    """before/after per stage; the editing loop's two stages are announced together."""
    events: list[tuple] = []
    for group in [[k] for k in KINDS if k not in (EDITOR, BLENDER)] + [[EDITOR, BLENDER]]:
        events += [("before", k, job.keys[k], complete) for k in group]
        events += [("after", k, job.keys[k], cached, job.keys[k]) for k in group]
    return events


class BoomKeyframes(StageBase):
    kind = KEYFRAMES
    name = "boom"
    requires = (INVERSION,)

    def run(self, ctx: StageContext) -> None:
        create_array(ctx.output, "keyframes", dims=(TIMESTEP, CHUNK), data=np.zeros((STEPS, 2), np.int64))
        raise RuntimeError("boom in keyframes")


def test_stage_error_calls_on_stage_error_and_leaves_nothing_partial(
        tf_register, tf_plugin_manager, tf_tiny_model, frames, module_cache: Path) -> None:
    observer = Observer()
    tf_register(observer, name="observer")
    tf_register(stage_plugin(BoomKeyframes), name="boom-plugin")
    job = make_job(tf_plugin_manager, tf_tiny_model, frames, cache=module_cache,
                   stages={KEYFRAMES: "boom"}, **RUN)
    with pytest.raises(RuntimeError, match="boom in keyframes"):
        job.run()
    kinds = [(e[0], e[1]) for e in observer.events]
    assert kinds == [("before", INVERSION), ("after", INVERSION), ("before", FEATURES),
                     ("after", FEATURES), ("before", KEYFRAMES), ("error", KEYFRAMES)]
    _, _, key, error, temps_then, entry_then = observer.events[-1]
    assert key == job.keys[KEYFRAMES]
    assert isinstance(error, RuntimeError) and str(error) == "boom in keyframes"
    assert temps_then == [] and entry_then is None  # nothing partial when the hook runs
    cache = StageCache(module_cache)
    assert cache.lookup(KEYFRAMES, "boom", job.keys[KEYFRAMES]) is None
    assert not cache.path(KEYFRAMES, "boom", job.keys[KEYFRAMES]).exists()
    assert _temps(module_cache) == []
    assert {e.kind for e in cache.entries() if e.key in job.keys.values()} == {INVERSION, FEATURES}
    assert KEYFRAMES not in job.results and CORRESPONDENCE not in job.results


class FixedKeyframes(StageBase):
    """Always the first frame of each chunk."""

    kind = KEYFRAMES
    name = "fixed"
    requires = (INVERSION,)
    reads_config = ("steps", "batch_size")

    def run(self, ctx: StageContext) -> None:
        inv = ctx.inputs[INVERSION]
        timesteps = read_timesteps(inv)
        n = int(inv["latents"].shape[1])
        keyframes = np.tile(np.arange(0, n, ctx.config.batch_size), (len(timesteps), 1))
        write_coord(ctx.output, TIMESTEP, timesteps)
        write_coord(ctx.output, CHUNK, range(keyframes.shape[1]))
        create_array(ctx.output, "keyframes", dims=(TIMESTEP, CHUNK), data=keyframes)


def test_a_test_plugin_replaces_the_keyframe_sampler(tf_register, tf_plugin_manager, tf_tiny_model,
                                                     frames, module_cache: Path) -> None:
    tf_register(stage_plugin(FixedKeyframes), name="fixed-plugin")
    job = make_job(tf_plugin_manager, tf_tiny_model, frames, cache=module_cache,
                   stages={KEYFRAMES: "fixed"}, **RUN)
    assert job.stages[KEYFRAMES].name == "fixed"
    results = job.run()
    expected = np.tile(np.arange(0, N, BATCH), (STEPS, 1))
    assert results[KEYFRAMES].path.name.startswith("fixed-")
    editor = zarr.open_group(str(results[EDITOR].path), mode="r")
    np.testing.assert_array_equal(np.asarray(editor["keyframes"][...]), expected)
    keyframes = zarr.open_group(str(results[KEYFRAMES].path), mode="r")
    np.testing.assert_array_equal(np.asarray(keyframes["keyframes"][...]), expected)
    # the released blending reads this chunk's keyframe and the previous chunk's
    corr = zarr.open_group(str(results[CORRESPONDENCE].path), mode="r")
    chunk = np.arange(N) // BATCH
    refs = np.stack([chunk * BATCH, np.maximum(chunk - 1, 0) * BATCH], axis=1)
    np.testing.assert_array_equal(np.asarray(corr["reference"][...]), np.tile(refs, (STEPS, 1, 1)))
    frames_out = np.asarray(zarr.open_group(str(results[BLENDER].path), mode="r")["frames"][...])
    assert frames_out.shape == (N, 64, 64, 3)
    random_job = make_job(tf_plugin_manager, tf_tiny_model, frames, cache=module_cache, **RUN)
    assert random_job.keys[KEYFRAMES] != job.keys[KEYFRAMES]
    assert random_job.keys[INVERSION] == job.keys[INVERSION]
    assert random_job.keys[FEATURES] == job.keys[FEATURES]


# --------------------------------------------------------------------------------------------- wheel


@pytest.mark.slow
def test_wheel_installs_the_builtin_plugins(tmp_path: Path) -> None:
    env = clean_env()
    wheel = build_tokenflow_wheel(tmp_path, env)
    assert wheel.name.startswith("tokenflow-0.1.0-")
    venv = make_venv(tmp_path, env, wheel, with_pip=False)
    python = venv / "bin" / "python"

    probe = run([python, "-c",
                  "import tokenflow_plugins, tokenflow, importlib.metadata as m; "
                  "print(tokenflow.__file__); print(tokenflow_plugins.__file__); "
                  "print(len([d for d in m.distributions() if d.metadata['name'] == 'tokenflow']))"],
                 cwd=tmp_path, env=env)
    assert probe.code == 0, probe.err
    tf_file, plugins_file, n_dists = probe.out.split()
    assert Path(tf_file).resolve().is_relative_to(venv.resolve()), tf_file
    assert Path(plugins_file).resolve().is_relative_to(venv.resolve()), plugins_file
    assert not Path(tf_file).resolve().is_relative_to(ROOT)
    assert n_dists == "1"

    import zipfile

    names = set(zipfile.ZipFile(wheel).namelist())
    for part in ("unet/diffusion_pytorch_model", "vae/diffusion_pytorch_model", "text_encoder/model"):
        assert f"tokenflow/embedded/{part}.safetensors" in names  # the embedded model ships
    loaded = run([python, "-c", "from tokenflow.models import load_model; "
                   "print(load_model(None, device='cpu').model_id)"], cwd=tmp_path, env=env)
    assert loaded.code == 0 and loaded.out.strip() == "embedded", loaded.err

    listed = run([venv / "bin" / "tf", "plugins"], cwd=tmp_path, env=env)
    assert listed.code == 0, listed.err
    lines = listed.out.splitlines()
    for name in BUILTIN_EPS:
        (line,) = [ln for ln in lines if ln.split()[0] == name]
        assert "[tokenflow 0.1.0]" in line, line
        assert "register_" in line
