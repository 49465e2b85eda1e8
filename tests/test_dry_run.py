"""Plans before work (issue 12): ``tf run --dry-run`` prints every stage with its parameters and
where each value comes from, whether it is cached or will be computed, the bytes and the UNet
frame-evaluations, loads no weights and writes nothing; the plan's counts are what the run
counts; ``tf stages --model M`` shows the values a run on M uses, with their sources."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from helpers import CliWorld, cli_env

import tokenflow
from tokenflow.cache.store import StageCache
from tokenflow.manager import make_plugin_manager
from tokenflow.plan_report import CACHED, COMPUTE, describe_job
from tokenflow.stages import KINDS
from tokenflow.testing import build_registry, make_job, synthetic_frames
from tokenflow.video import write_frames

N, B, STEPS = 5, 3, 4
K = -(-N // B)
SETTINGS = ["--steps", str(STEPS), "--inversion-steps", str(STEPS), "--frames", str(N),
            "--batch-size", str(B), "--size", "64"]
#: What the module's model suggests (its tokenflow.json); the last key matches no stage.
SUGGESTS = {"editor.guidance_scale": 3.0, "inversion.prompt": "a square", "editor.nosuch": 1}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, tf_tiny_model_dir: Path) -> CliWorld:
    root = tmp_path_factory.mktemp("dry-run")
    write_frames(root / "clip", synthetic_frames())
    model = root / "model"
    shutil.copytree(tf_tiny_model_dir, model)
    (model / "tokenflow.json").write_text(json.dumps({"defaults": SUGGESTS}))
    return CliWorld(root=root, clip=root / "clip", model=model, cache=root / "cache",
                    env=cli_env(root, TOKENFLOW_DEBUG=None), settings=SETTINGS)


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


def _stage_lines(stdout: str) -> dict[str, str]:
    """{kind: its line} of a printed plan."""
    return {m.group(1): m.group(0) for m in re.finditer(rf"^({'|'.join(KINDS)}) .*$", stdout, re.M)}


def test_dry_run_prints_the_plan_and_writes_nothing(world: CliWorld, tmp_path: Path) -> None:
    cache, out = tmp_path / "cache", tmp_path / "out"
    result = world.run("--dry-run", "-o", "blender.weights", "linear", out=out, cache=cache)
    assert result.exit_code == 0, result.output
    stages = _stage_lines(result.stdout)
    assert list(stages) == list(KINDS)
    names = {"inversion": "ddim", "features": "unet", "keyframes": "random",
             "correspondence": "nn", "editor": "pnp", "blender": "tokenflow"}
    for kind, line in stages.items():
        assert re.fullmatch(rf"{kind} {names[kind]} v\d+ \[[0-9a-f]{{16}}\]: to compute, up to "
                            r"[\d.]+ (?:B|[KM]iB), [\d,]+ UNet frame-evaluations", line), line
    for line in ['    prompt = "a blue ball"  (flag)',              # --prompt
                 '    guidance_scale = 3.0  (model)',               # tokenflow.json
                 '    prompt = "a square"  (model)',                # inversion.prompt, suggested
                 '    weights = "linear"  (-o)',
                 '    references = "nearest"  (blender \'tokenflow\')',  # what the blender needs
                 '    conv_t = 0.8  (editor \'pnp\')',
                 '    cfg_from = 0.0  (default)',
                 '    inversion_steps = 4  (flag)']:
        assert line in result.stdout.splitlines(), line
    total = result.stdout.strip().splitlines()[-1]
    assert total.startswith("to compute: inversion, features, keyframes, correspondence, editor, "
                            "blender: up to ")
    loop = 2 * STEPS * (N + K)
    assert f"{N * STEPS + N * STEPS + loop:,} UNet frame-evaluations" in total
    assert f"the editing loop {loop / STEPS:g} per step" in total
    assert "dry run" in result.stderr and "nothing computed or written" in result.stderr
    assert not cache.exists() and not out.exists()


def test_dry_run_after_a_run_says_what_is_cached(world: CliWorld, tmp_path: Path) -> None:
    out = tmp_path / "out"
    done = world.run("-q", out=out)
    assert done.exit_code == 0, done.output
    keys = json.loads((out / "run.json").read_text())["keys"]
    before = _files(world.cache)

    same = world.run("--dry-run", out=out)
    assert same.exit_code == 0, same.output
    for kind, line in _stage_lines(same.stdout).items():
        assert line.endswith(f"[{keys[kind][:16]}]: cached"), line
    assert same.stdout.strip().splitlines()[-1] == "to compute: nothing, every stage is cached"

    other = world.run("--dry-run", prompt="a red box", out=tmp_path / "other")
    assert other.exit_code == 0, other.output
    status = {k: line.split(": ", 1)[1].split(",")[0] for k, line in _stage_lines(other.stdout).items()}
    assert status == {"inversion": "cached", "features": "cached", "keyframes": "cached",
                      "correspondence": "cached", "editor": "to compute", "blender": "to compute"}

    refused = world.run("--dry-run", prompt="a red box", out=out)  # as the run would be
    assert refused.exit_code == 2 and "holds another result" in refused.output
    assert _files(world.cache) == before and not (tmp_path / "other").exists()


def test_a_dry_run_loads_no_weights(world: CliWorld, tmp_path: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import tokenflow.models
    import tokenflow.models.loading

    def no_loading(*args, **kwargs):
        raise AssertionError("a dry run loaded the weights")

    monkeypatch.setattr(tokenflow.models.loading, "load_model", no_loading)
    monkeypatch.setattr(tokenflow.models, "load_model", no_loading, raising=False)
    result = tokenflow.edit(world.clip, prompt="a blue ball", model=world.model, steps=STEPS,
                            inversion_steps=STEPS, frames=N, batch_size=B, size="64",
                            cache_dir=tmp_path / "cache", out=tmp_path / "out", dry_run=True)
    model = result.source.model
    assert model.weights is False and next(model.unet.parameters()).is_meta
    assert result.results == {} and result.plan.frames == N
    assert {s.status for s in result.plan.stages} == {COMPUTE}
    assert model.defaults == SUGGESTS and model.root == world.model
    assert not (tmp_path / "cache").exists() and not (tmp_path / "out").exists()


def test_a_described_model_has_the_loaded_models_identity(world: CliWorld) -> None:
    import torch

    from tokenflow.models import describe_model, load_model

    described = describe_model(str(world.model), device="cpu", dtype=torch.float32)
    loaded = load_model(str(world.model), device="cpu", dtype=torch.float32)
    assert described.key == loaded.key and described.label == loaded.label
    assert described.defaults == loaded.defaults == SUGGESTS
    assert described.native_size == loaded.native_size
    assert described.checkpoint == loaded.checkpoint
    for part in ("unet", "vae"):
        config = {k: v for k, v in getattr(loaded, part).config.items() if k != "_name_or_path"}
        assert {k: getattr(described, part).config[k] for k in config} == config, part
    assert loaded.weights and not described.weights


# --------------------------------------------------------------------------------------------- counts


@pytest.fixture(scope="module")
def plan_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("plan-counts") / "cache"


@pytest.mark.parametrize("editor, options", [
    ("pnp", []),
    ("pnp-frames", []),
    ("sdedit", [("strength", "0.5"), ("cfg_until", "0.75")]),
    ("pnp", [("blender.reuse_keyframes", "true"), ("editor.cfg_from", "0.25")]),
    ("pnp", [("features.store_tokens", "false")]),
], ids=["pnp", "pnp-frames", "sdedit-strength-cfg", "pnp-reuse-cfg", "no-stored-tokens"])
def test_the_plans_counts_are_what_the_run_counts(tf_tiny_model, plan_cache: Path, editor: str,
                                                  options: list) -> None:
    job = make_job(make_plugin_manager(), tf_tiny_model, synthetic_frames(N, 64, 64),
                   cache=plan_cache, steps=STEPS, batch_size=B, editor=editor, options=options,
                   params={"inversion": {"inversion_steps": STEPS}, "editor": {"prompt": "a cat"}})
    plan = {s.kind: s for s in describe_job(job).stages}
    results = job.run()
    for kind in ("inversion", "features"):
        assert plan[kind].frame_evaluations == results[kind].stats["unet_frame_evals"], kind
    loop = plan["editor"].frame_evaluations + plan["blender"].frame_evaluations
    stored = ("features.store_tokens", "false") not in options
    # without stored tokens the keyframe call's source passes (K per q/k step) are the editor's
    # too; the loop's own count is of its calls only
    extra = 0 if stored else K * int(0.5 * STEPS)
    assert loop == results["blender"].stats["unet_frame_evals"] + extra
    if editor == "pnp-frames":  # no keyframes, no correspondences, nothing to propagate
        assert "keyframes" not in plan and plan["blender"].frame_evaluations == 0
    else:
        assert plan["keyframes"].frame_evaluations == 0
        assert (plan["correspondence"].frame_evaluations == 0) == stored
    assert {s.status for s in describe_job(job).stages} == {CACHED}


# --------------------------------------------------------------------------------------------- tf stages


def test_tf_stages_model_shows_the_values_a_run_uses(world: CliWorld) -> None:
    result = world.invoke("stages", "--model", str(world.model), "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    pnp = {item["name"]: item for item in doc["editor"]}["pnp"]["params"]
    assert pnp["guidance_scale"] == {"type": "float", "default": 7.5, "value": 3.0, "source": "model"}
    assert pnp["cfg_from"]["source"] == "default" and pnp["cfg_from"]["value"] == 0.0
    ddim = doc["inversion"][0]["params"]
    assert ddim["prompt"]["value"] == "a square" and ddim["prompt"]["source"] == "model"
    assert doc["model"]["suggestions"] == SUGGESTS
    assert any("editor.nosuch" in note for note in doc["model"]["notes"])

    text = world.invoke("stages", "--model", str(world.model))
    assert "      guidance_scale: float = 3.0  (model; default 7.5)" in text.stdout
    assert "      cfg_from: float = 0.0  (default)" in text.stdout
    assert "editor.nosuch, which no installed stage has" in text.stderr


def test_tf_stages_model_embedded_shows_what_a_default_run_uses(world: CliWorld) -> None:
    doc = json.loads(world.invoke("stages", "--model", "embedded", "--json").stdout)
    pnp = {item["name"]: item for item in doc["editor"]}["pnp"]["params"]
    assert (pnp["guidance_scale"]["value"], pnp["guidance_scale"]["source"]) == (5.0, "model")
    assert (pnp["conv_layers"]["value"], pnp["conv_layers"]["source"]) == (
        ["up_blocks.2.resnets.0"], "model")
    assert pnp["conv_layers"]["default"] == ["up_blocks.1.resnets.1"]
    ddim = doc["inversion"][0]["params"]
    assert (ddim["inversion_steps"]["value"], ddim["inversion_steps"]["source"]) == (100, "model")
    assert "--model M shows them" in " ".join(world.invoke("stages", "--help").stdout.split())


def test_tf_stages_model_that_does_not_exist_is_a_usage_error(world: CliWorld,
                                                              tmp_path: Path) -> None:
    result = world.invoke("stages", "--model", str(tmp_path / "nope"))
    assert result.exit_code == 2
    assert "does not exist" in result.output and "Traceback" not in result.output
    assert world.invoke("stages", "--model", str(world.clip)).exit_code == 2  # not a checkpoint


def test_every_builtin_stage_says_its_frame_evaluations() -> None:
    registry = build_registry(make_plugin_manager())
    for kind, names in registry.stages.items():
        for name, cls in names.items():
            counter = cls.frame_evaluations
            assert counter is not tokenflow.StageBase.frame_evaluations, f"{kind} {name}"
