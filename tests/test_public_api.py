"""The public plugin API: plugins import only ``tokenflow``; what ``tokenflow`` exports resolves;
every stage kind's protocol is checked at registration; an editor written from scratch against
the public API propagates through the ``tokenflow`` blender."""

from __future__ import annotations

import ast
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

import tokenflow
from tokenflow import (
    CORRESPONDENCE,
    DEFAULT_NEGATIVE_PROMPT,
    EDITOR,
    FEATURES,
    INVERSION,
    KEYFRAMES,
    EditorOutput,
    Params,
    guided,
    start_latents,
)
from tokenflow.registry import Registry, RegistryError
from tokenflow.stages import PROTOCOLS
from tokenflow.testing import stage_plugin

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "plugins" / "tokenflow-localblend"
PLUGIN_MODULES = sorted(ROOT.glob("plugins/*.py")) + sorted(EXAMPLE.glob("tokenflow_localblend/*.py"))
PLUGIN_TESTS = sorted(EXAMPLE.glob("tests/*.py"))


def tokenflow_imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import of tokenflow or tokenflow_plugins in a file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
    return [(line, m) for line, m in found if m.split(".")[0] in ("tokenflow", "tokenflow_plugins")]


@pytest.mark.parametrize("path", PLUGIN_MODULES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_plugin_modules_import_only_the_public_api(path: Path) -> None:
    bad = [f"line {line}: {m}" for line, m in tokenflow_imports(path) if m != "tokenflow"]
    assert not bad, f"{path.name} imports tokenflow internals or another plugin: {bad}"


@pytest.mark.parametrize("path", PLUGIN_TESTS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_plugin_tests_import_only_the_public_api_and_testing(path: Path) -> None:
    allowed = {"tokenflow", "tokenflow.testing", "tokenflow.cli"}
    bad = [f"line {line}: {m}" for line, m in tokenflow_imports(path) if m not in allowed]
    assert not bad, f"{path.name} imports tokenflow internals: {bad}"


def test_the_guard_sees_a_forbidden_import(tmp_path: Path) -> None:
    plugin = tmp_path / "plugin.py"
    plugin.write_text("from tokenflow import hookimpl\nfrom tokenflow.editing.loop import EditRun\n"
                      "def f():\n    import tokenflow_plugins.pnp\n")
    assert [m for _, m in tokenflow_imports(plugin)] == ["tokenflow", "tokenflow.editing.loop",
                                                       "tokenflow_plugins.pnp"]


def test_every_exported_name_resolves() -> None:
    missing = [name for name in tokenflow.__all__ if not hasattr(tokenflow, name)]
    assert not missing
    assert "edit" in tokenflow.__all__ and callable(tokenflow.edit)
    with pytest.raises(AttributeError, match="no attribute 'loop'"):
        tokenflow.loop  # noqa: B018 - internals are not exported


def test_the_public_world_is_world_v2_with_its_checks() -> None:
    from tokenflow.embedded import world2, world2_checks

    world = tokenflow.world
    for module in (world2, world2_checks):
        for name in module.__all__:
            assert getattr(world, name) is getattr(module, name), name
    assert set(world.__all__) == set(world2.__all__) | set(world2_checks.__all__)
    scene = world.Scene("wood", (world.Thing("ball", "red", "striped", period=0.7),))
    image, _ = world.render(scene, 96, 128)
    read = world.read_frame(image)
    assert read["background"] == "wood"
    assert [(o["colour"], o["texture"]) for o in read["objects"]] == [("red", "striped")]


def test_importing_tokenflow_does_not_import_torch() -> None:
    code = "import sys, tokenflow; tokenflow.hookimpl; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_loading_the_builtin_plugins_does_not_import_torch() -> None:
    """A run's parameters are checked against the stages' Params before torch loads (errors in
    about a second): the built-in plugins import torch, diffusers and the machinery that needs
    them where they use it, and the public names they import at the top do not."""
    code = ("import sys; from tokenflow.api import plugins; pm, registry = plugins(); "
            "print(sum(len(v) for v in registry.stages.values()), "
            "[m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    count, loaded = out.stdout.strip().split(" ", 1)
    assert int(count) >= 10 and loaded == "[]", out.stdout


# ----------------------------------------------------------------------------------- protocols


@dataclass(frozen=True)
class ScratchParams(Params):
    prompt: str = ""
    negative_prompt: str = DEFAULT_NEGATIVE_PROMPT
    guidance_scale: float = 7.5


class ScratchEditor:
    """An editor from scratch: no base class at all, only the Editor protocol."""

    kind = EDITOR
    name = "scratch"
    version = 1
    requires = (INVERSION, FEATURES, KEYFRAMES, CORRESPONDENCE)
    reads_config = ("steps", "batch_size")
    Params = ScratchParams

    def __init__(self, params=None) -> None:
        self.params = params if params is not None else ScratchParams()

    def conv_layers(self, run):
        return ()

    def start(self, run):
        return run.model.encode_prompts([self.params.negative_prompt, self.params.prompt])

    def initial_latents(self, run):
        return start_latents(run, run.timesteps[0])

    def edit_step(self, step):
        kept: dict[str, torch.Tensor] = {}
        out = step.run.call_unet(step.latents[step.keyframes], step.timestep, step.run.editor_state,
                                 n_branches=2, extended=True, keep=kept)
        k = len(step.keyframes)
        return EditorOutput(tokens={n: v.reshape(2, k, *v.shape[1:]) for n, v in kept.items()},
                            model_output=guided(out, self.params.guidance_scale))

    def predict(self, step, frames, latents, *, provide=None):
        out = step.run.call_unet(latents, step.timestep, step.run.editor_state, n_branches=2,
                                 provide=provide)
        return guided(out, self.params.guidance_scale)


def test_a_from_scratch_editor_propagates_through_the_tokenflow_blender(
        tf_plugin_manager, tf_register, tf_tiny_model, tf_video, tmp_path: Path) -> None:
    """With nothing injected, the built-in ``sdedit`` at strength 1 computes exactly what this
    editor does: the same outputs bit for bit, through the same blender."""
    tf_register(stage_plugin(ScratchEditor))
    common = dict(model=tf_tiny_model, prompt="a blue square", steps=3, inversion_steps=3,
                  batch_size=4, size="64x64", cache_dir=tmp_path / "cache", pm=tf_plugin_manager)
    scratch = tokenflow.edit(tf_video, editor="scratch", **common)
    builtin = tokenflow.edit(tf_video, editor="sdedit", options=[("strength", "1.0")], **common)
    assert scratch.results["blender"].stats["unet_frame_evals"] > 0
    assert scratch.keys["blender"] != builtin.keys["blender"]
    np.testing.assert_array_equal(scratch.frames, builtin.frames)
    assert scratch.record["stages"]["editor"]["name"] == "scratch"


def _stage(kind: str, **members):
    attrs = dict(kind=kind, name="x", version=1, requires=(), Params=Params, **members)
    return type("Stage", (), attrs)


@pytest.mark.parametrize(("kind", "members", "missing"), [
    ("inversion", {}, "run()"),
    ("features", {}, "run()"),
    ("keyframes", {}, "run()"),
    ("correspondence", {}, "run()"),
    ("blender", {}, "blend_step()"),
    ("editor", {m: ScratchEditor.__dict__[m] for m in
                ("conv_layers", "start", "initial_latents", "edit_step")}, "predict()"),
    ("editor", {m: ScratchEditor.__dict__[m] for m in ("start", "initial_latents", "edit_step",
                                                       "predict")}, "conv_layers()"),
    ("editor", {"edit_step": 1, **{m: ScratchEditor.__dict__[m] for m in
                ("conv_layers", "start", "initial_latents", "predict")}}, "edit_step()"),
])
def test_a_class_missing_a_protocol_member_is_refused_naming_it(kind, members, missing) -> None:
    assert kind in PROTOCOLS
    with pytest.raises(RegistryError, match=rf"lacks {missing.replace('(', '[(]').replace(')', '[)]')}"
                                            rf", required by the {kind} protocol"):
        Registry().add(kind, _stage(kind, **members), "test-plugin")


def test_an_editor_that_does_not_propagate_needs_no_predict() -> None:
    members = {m: ScratchEditor.__dict__[m] for m in ("conv_layers", "start", "initial_latents",
                                                      "edit_step")}
    registry = Registry()
    registry.add(EDITOR, _stage(EDITOR, propagates=False, **members), "test-plugin")
    assert "x" in registry.stages[EDITOR]
    del members["edit_step"]  # the rest of the protocol still holds
    with pytest.raises(RegistryError, match=r"lacks edit_step\(\), required"):
        Registry().add(EDITOR, _stage(EDITOR, propagates=False, **members), "test-plugin")


# ----------------------------------------------------------------------------------- layout

#: Packages beside the core: the core (everything else but the CLI) imports none of them.
BESIDE = ("tokenflow.eval", "tokenflow.embedded", "tokenflow.testing", "tokenflow.cli",
          "tokenflow_plugins")
CORE = [p for p in sorted((ROOT / "tokenflow").rglob("*.py"))
        if p.relative_to(ROOT / "tokenflow").parts[0] not in ("eval", "embedded", "testing", "cli")]


@pytest.mark.parametrize("path", CORE, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_dependencies_point_one_way(path: Path) -> None:
    """The core never imports a plugin, evaluation, the embedded model's training or the CLI
    (the public API's ``world`` is resolved lazily, on use)."""
    tree = ast.parse(path.read_text(), str(path))
    checking = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
                and getattr(node.test, "id", "") == "TYPE_CHECKING" for n in ast.walk(node)}
    bad = [m for line, m in tokenflow_imports(path)
           if m.startswith(BESIDE) and not any(id(n) in checking for n in ast.walk(tree)
                                               if getattr(n, "lineno", None) == line)]
    assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


def test_no_core_module_is_over_about_500_lines() -> None:
    sizes = {p.relative_to(ROOT).as_posix(): len(p.read_text().splitlines())
             for p in (ROOT / "tokenflow").rglob("*.py")}
    assert {name: n for name, n in sizes.items() if n > 520} == {}
