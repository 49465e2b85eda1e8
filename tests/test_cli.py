"""The ``tf`` command line end to end on the tiny model: outputs, run.json, UNet cost, ``tf
invert``, ``tf stages``, ``tf plugins`` and one-line errors."""

from __future__ import annotations

import json
import math
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import zarr
from click.testing import CliRunner, Result
from helpers import CliWorld, cli_env
from PIL import Image

import tokenflow
from tokenflow.cache.store import StageCache
from tokenflow.cli import cli
from tokenflow.params import param_fields
from tokenflow.stages import KINDS
from tokenflow.testing import synthetic_frames
from tokenflow.video import read_video, write_frames

ROOT = Path(__file__).resolve().parents[1]
N, B, STEPS = 5, 3, 4  # a shorter last chunk on purpose
K = math.ceil(N / B)
HEIGHT, WIDTH = 64, 96  # --size 64 on the 64x96 synthetic clip: the source's size
CANVAS_WIDTH = 128  # what the UNet sees: padded to a multiple of 64 on the right
PROMPT = "a blue ball"
COMMON = ["--steps", str(STEPS), "--inversion-steps", str(STEPS), "--frames", str(N),
          "--batch-size", str(B), "--size", "64", "-q"]


@dataclass(kw_only=True)
class World(CliWorld):
    """The module's ``tf`` world and its first run: into ``out``, with its ``result`` and
    ``run.json`` (``doc``)."""

    out: Path
    result: Result | None = None
    doc: dict = field(default_factory=dict)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, tf_tiny_model_dir: Path) -> World:
    root = tmp_path_factory.mktemp("cli")
    write_frames(root / "clip", synthetic_frames())
    out = root / "out"
    world = World(root=root, clip=root / "clip", model=Path(tf_tiny_model_dir), cache=root / "cache",
                  env=cli_env(root), settings=COMMON, prompt=PROMPT, out=out)
    world.result = world.run(out=out)
    assert world.result.exit_code == 0, world.result.output
    world.doc = json.loads((out / "run.json").read_text())
    return world


def _blender_frames(doc: dict) -> np.ndarray:
    """The decoded edit in the blender's store, cropped to the working size as run.json says."""
    canvas = np.asarray(zarr.open_group(doc["cache"]["blender"]["path"], mode="r")["frames"][...])
    assert canvas.shape[1:3] == (doc["canvas"]["height"], doc["canvas"]["width"])
    return canvas[:, :doc["size"]["height"], :doc["size"]["width"]]  # at the top left


# --------------------------------------------------------------------------------------------- tf run


def test_run_writes_every_output(world: World) -> None:
    assert world.result.exit_code == 0
    assert world.result.stdout.strip().splitlines()[-1] == str(world.out)
    for name in ("edited.mp4", "source.mp4", "side_by_side.mp4", "run.json"):
        assert (world.out / name).is_file() and (world.out / name).stat().st_size > 0, name
    pngs = sorted(p.name for p in (world.out / "frames").iterdir())
    assert pngs == [f"{i:05d}.png" for i in range(N)]
    assert not [p for p in world.root.iterdir() if p.name.startswith(".out")]  # no temp dir left


def test_edited_video_is_an_edit_at_the_working_size(world: World) -> None:
    edited = read_video(world.out / "edited.mp4").frames
    source = read_video(world.out / "source.mp4").frames
    both = read_video(world.out / "side_by_side.mp4").frames
    assert edited.shape == (N, HEIGHT, WIDTH, 3)
    assert source.shape == (N, HEIGHT, WIDTH, 3)
    assert both.shape == (N, HEIGHT, 2 * WIDTH, 3)
    blended = _blender_frames(world.doc).astype(float)
    to_edit = np.abs(edited.astype(float) - blended).mean()
    to_source = np.abs(edited.astype(float) - source.astype(float)).mean()
    assert to_source > 10, "edited.mp4 is (nearly) the source video, not an edit"
    assert to_edit < to_source / 2, (to_edit, to_source)
    assert np.abs(both[:, :, WIDTH:].astype(float) - blended).mean() < to_source / 2


def test_frame_pngs_equal_the_cached_blender_frames(world: World) -> None:
    frames = _blender_frames(world.doc)
    assert frames.shape == (N, HEIGHT, WIDTH, 3) and frames.dtype == np.uint8
    for i in range(N):
        png = np.asarray(Image.open(world.out / "frames" / f"{i:05d}.png").convert("RGB"))
        np.testing.assert_array_equal(png, frames[i])


def test_run_writes_a_labelled_preview_and_a_looping_gif(world: World) -> None:
    from tokenflow.frame_figures import FOOTER, HEADER, LABEL_WIDTH
    from tokenflow.video import evenly_spaced

    sheet = np.asarray(Image.open(world.out / "preview.png").convert("RGB"))
    th, tw = 2 * HEIGHT, 2 * WIDTH  # enlarged 2x (nearest) to be at least 128 px tall
    assert sheet.shape == (2 * th + FOOTER, LABEL_WIDTH + 4 * tw, 3) and sheet.shape[1] >= 512
    edited = _blender_frames(world.doc)
    for c, i in enumerate(evenly_spaced(N, 4)):
        cell = sheet[th:2 * th, LABEL_WIDTH + c * tw:LABEL_WIDTH + (c + 1) * tw]
        np.testing.assert_array_equal(cell, edited[i].repeat(2, axis=0).repeat(2, axis=1))
    ink = sheet.max(axis=-1) < 128
    assert ink[:th, :LABEL_WIDTH].sum() > 20 and ink[th:2 * th, :LABEL_WIDTH].sum() > 20
    assert all(ink[2 * th:, LABEL_WIDTH + c * tw:LABEL_WIDTH + (c + 1) * tw].sum() > 10
               for c in range(4))  # frame numbers
    gif = Image.open(world.out / "preview.gif")
    assert gif.n_frames == N and gif.info["loop"] == 0
    assert abs(gif.info["duration"] - 1000 / world.doc["fps"]) < 10
    assert gif.size == (2 * tw, HEADER + th)


def test_run_json_records_the_run(world: World) -> None:
    from tokenflow.plan import DEFAULT_STAGES

    doc = world.doc
    assert doc["tokenflow_version"] == tokenflow.__version__ == "0.1.0"
    assert doc["model"]["id"] == str(world.model)
    assert re.fullmatch(r"[0-9a-f]{64}", doc["model"]["key"])
    assert doc["model"]["dtype"] == "float32" and doc["model"]["device"] == "cpu"
    assert doc["video"] == str(world.clip)
    assert (doc["frames"], doc["size"]) == (N, {"width": WIDTH, "height": HEIGHT})
    assert doc["source_size"] == {"width": 96, "height": 64}
    assert doc["canvas"] == {"width": CANVAS_WIDTH, "height": HEIGHT}
    assert doc["output_size"] == {"width": 96, "height": 64, "as": "source"}
    assert doc["config"] == {"steps": STEPS, "batch_size": B}
    assert set(doc["stages"]) == set(doc["keys"]) == set(doc["cache"]) == set(KINDS)
    for kind in KINDS:
        assert doc["stages"][kind]["name"] == DEFAULT_STAGES[kind]
        assert isinstance(doc["stages"][kind]["version"], int)
        assert re.fullmatch(r"[0-9a-f]{64}", doc["keys"][kind])
        path = Path(doc["cache"][kind]["path"])
        assert path == StageCache(world.cache).path(kind, DEFAULT_STAGES[kind], doc["keys"][kind])
        assert StageCache(world.cache).lookup(kind, DEFAULT_STAGES[kind], doc["keys"][kind]) == path
    assert len(set(doc["keys"].values())) == len(KINDS)
    params = {kind: doc["stages"][kind]["params"] for kind in KINDS}
    assert params["editor"]["prompt"] == PROMPT
    assert params["editor"]["guidance_scale"] == 7.5
    assert params["inversion"] == {"prompt": "", "inversion_steps": STEPS}
    assert params["keyframes"] == {"seed": 1}
    assert params["blender"] == {"weights": "reference", "reuse_keyframes": False}
    assert params["correspondence"] == {"references": "chunk"}
    assert params["features"]["conv_t"] == params["editor"]["pnp_f_t"]


def test_pnp_costs_two_branches_of_keyframes_plus_frames_per_step(world: World) -> None:
    stats = world.doc["cache"]["blender"]["stats"]
    assert (stats["steps"], stats["frames"], stats["keyframes_per_step"]) == (STEPS, N, K)
    assert stats["unet_frame_evals"] / stats["steps"] == 2 * (K + N)
    store = zarr.open_group(world.doc["cache"]["editor"]["path"], mode="r")
    keyframes = np.asarray(store["keyframes"][...])
    assert keyframes.shape == (STEPS, K)
    assert (keyframes // B == np.arange(K)[None]).all() and (keyframes < N).all()


def test_pnp_frames_costs_two_branches_of_every_frame_per_step(world: World) -> None:
    out = world.root / "out-frames"
    result = world.run("--editor", "pnp-frames", out=out)
    assert result.exit_code == 0, result.output
    doc = json.loads((out / "run.json").read_text())
    assert set(doc["stages"]) == {"inversion", "features", "editor", "blender"}
    assert doc["stages"]["editor"]["name"] == "pnp-frames"
    assert doc["cache"]["inversion"]["cached"] and doc["cache"]["features"]["cached"]
    assert doc["keys"]["inversion"] == world.doc["keys"]["inversion"]
    assert doc["keys"]["features"] == world.doc["keys"]["features"]
    stats = doc["cache"]["blender"]["stats"]
    assert stats["unet_frame_evals"] / stats["steps"] == 2 * N
    edited = read_video(out / "edited.mp4").frames
    assert edited.shape == (N, HEIGHT, WIDTH, 3)
    assert not np.array_equal(_blender_frames(doc), _blender_frames(world.doc))


def test_invert_reports_psnr_per_frame(world: World) -> None:
    result = world.invoke("invert", str(world.clip), "--model", str(world.model), *COMMON,
                          "--cache-dir", str(world.cache), "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    psnr = report["psnr"]
    assert len(psnr["per_frame"]) == N
    assert all(isinstance(v, float) and math.isfinite(v) and v > 0 for v in psnr["per_frame"])
    assert psnr["mean"] == pytest.approx(float(np.mean(psnr["per_frame"])))
    assert psnr["min"] == pytest.approx(min(psnr["per_frame"]))
    assert set(report["keys"]) == {"inversion", "features"}
    # tf invert and tf run share the inversion and feature stores
    assert report["keys"]["inversion"] == world.doc["keys"]["inversion"]
    assert report["keys"]["features"] == world.doc["keys"]["features"]
    assert report["paths"]["features"] == world.doc["cache"]["features"]["path"]


def test_invert_text_report(world: World) -> None:
    result = world.invoke("invert", str(world.clip), "--model", str(world.model), *COMMON,
                          "--cache-dir", str(world.cache), "--no-check")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert [line.split()[0] for line in lines] == ["inversion", "features"]
    assert "PSNR" not in result.stdout


# --------------------------------------------------------------------------------------------- tf stages / plugins

BUILTIN_STAGES = {
    "inversion": {"ddim"},
    "features": {"unet"},
    "keyframes": {"random"},
    "correspondence": {"nn"},
    "editor": {"pnp", "pnp-frames", "sdedit", "controlnet"},
    "blender": {"tokenflow"},
}


def _builtin_classes() -> dict[tuple[str, str], type]:
    from tokenflow.manager import make_plugin_manager
    from tokenflow.registry import build_registry

    registry = build_registry(make_plugin_manager(environ={"TOKENFLOW_LOAD_PLUGINS": ""}))
    return {(kind, name): cls for kind, names in registry.stages.items() for name, cls in names.items()}


def test_tf_stages_lists_every_builtin_stage_with_params(world: World) -> None:
    result = world.invoke("stages", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert list(doc) == [*KINDS, "control_extractors", "scorers"]
    assert {s["name"] for s in doc["scorers"]} >= {"attribute", "attribute-background", "clip"}
    (canny,) = [e for e in doc["control_extractors"] if e["name"] == "canny"]
    assert canny["version"] == 1 and canny["plugin"].startswith("tokenflow_plugins.canny_control ")
    classes = _builtin_classes()
    for kind, names in BUILTIN_STAGES.items():
        listed = {item["name"]: item for item in doc[kind]}
        assert names <= set(listed), kind
        for name in names:
            item, cls = listed[name], classes[(kind, name)]
            assert item["version"] == cls.version
            assert item["plugin"].startswith("tokenflow_plugins.")
            assert "(tokenflow 0.1.0)" in item["plugin"]
            assert item["summary"]
            fields = param_fields(cls.Params)
            assert set(item["params"]) == set(fields)
            for p, (_, default) in fields.items():
                assert item["params"][p]["default"] == (list(default) if isinstance(default, tuple) else default)
    assert doc["editor"][[i["name"] for i in doc["editor"]].index("pnp")]["params"]["guidance_scale"] == {
        "type": "float", "default": 7.5}

    text = world.invoke("stages")
    assert text.exit_code == 0
    for kind, names in BUILTIN_STAGES.items():
        assert f"{kind}:" in text.stdout
        for name in names:
            assert re.search(rf"^  {re.escape(name)} \(v\d+, ", text.stdout, re.M), name
    assert "      guidance_scale: float = 7.5" in text.stdout
    assert re.search(r"^control extractors \(-o control NAME\):\n  canny \(v1, tokenflow_plugins"
                     r"\.canny_control ", text.stdout, re.M)


def test_tf_plugins_lists_builtin_modules_with_distribution(world: World) -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    builtins = pyproject["project"]["entry-points"]["tokenflow"]
    result = world.invoke("plugins")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    for name in builtins:
        (line,) = [ln for ln in lines if ln.split()[0] == name]
        assert "[tokenflow 0.1.0]" in line
        assert re.search(r"hooks: register_\w+s", line), line
    assert any(ln.startswith("tokenflow.cache ") and "run_stage" in ln for ln in lines)
    assert any(ln.startswith("tokenflow.runner ") and "run_stage" in ln for ln in lines)


def test_version_option() -> None:
    result = CliRunner().invoke(cli, ["--version"])
    assert result.exit_code == 0 and "0.1.0" in result.stdout


# --------------------------------------------------------------------------------------------- errors


def _one_line_error(result: Result, code: int, *needles: str) -> str:
    assert result.exit_code == code, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.output
    for needle in needles:
        assert needle in errors[0], (needle, errors[0])
    return errors[0]


@pytest.mark.parametrize(
    "extra, code, needles",
    [
        (["--editor", "nosuch"], 2, ["nosuch", "installed: controlnet, pnp, pnp-frames, sdedit"]),
        (["-o", "nosuch", "1"], 2, ["nosuch", "valid:", "editor.guidance_scale", "blender.weights"]),
        (["-o", "guidance_scale", "abc"], 2, ["guidance_scale", "float", "'abc'"]),
        (["-o", "editor.nosuch", "1"], 2, ["nosuch", "valid: prompt"]),
        (["-o", "pnp_attn_t", "2"], 2, ["pnp_attn_t", "between 0 and 1"]),
        (["--stage", "bogus=x"], 2, ["bogus=x", "KIND=NAME"]),
        (["--stage", "keyframes=nosuch"], 2, ["nosuch", "installed: random"]),
    ],
)
def test_bad_arguments_give_one_line_and_compute_nothing(world: World, tmp_path: Path, extra, code,
                                                         needles) -> None:
    cache, out = tmp_path / "cache", tmp_path / "out"
    result = world.run(*extra, out=out, cache=cache)
    _one_line_error(result, code, *needles)
    assert not out.exists()
    assert StageCache(cache).entries() == []


def test_missing_video_file(world: World, tmp_path: Path) -> None:
    missing = tmp_path / "nope.mp4"
    result = world.run(video=missing, out=tmp_path / "out", cache=tmp_path / "cache")
    _one_line_error(result, 2, "no such file", str(missing))
    assert not (tmp_path / "out").exists()


def test_existing_output_of_another_run_needs_overwrite(world: World, tmp_path: Path) -> None:
    out = tmp_path / "out"
    first = world.run(out=out)  # every stage is cached by now
    assert first.exit_code == 0, first.output
    doc_a = json.loads((out / "run.json").read_text())
    assert doc_a["keys"] == world.doc["keys"]
    edited_a = (out / "edited.mp4").read_bytes()

    other = ["--frames", "4"]  # and another prompt: a different result with fewer frames
    refused = world.run(*other, prompt="a red box", out=out)
    _one_line_error(refused, 2, str(out), "--overwrite")
    assert json.loads((out / "run.json").read_text())["keys"] == doc_a["keys"]
    assert (out / "edited.mp4").read_bytes() == edited_a
    assert len(list((out / "frames").glob("*.png"))) == N

    accepted = world.run(*other, "--overwrite", prompt="a red box", out=out)
    assert accepted.exit_code == 0, accepted.output
    doc_b = json.loads((out / "run.json").read_text())
    assert doc_b["keys"]["blender"] != doc_a["keys"]["blender"]
    assert doc_b["frames"] == 4
    assert sorted(p.name for p in (out / "frames").iterdir()) == [f"{i:05d}.png" for i in range(4)]
    assert read_video(out / "edited.mp4").frames.shape[0] == 4

    again = world.run(*other, prompt="a red box", out=out)  # the very same run: no --overwrite needed
    assert again.exit_code == 0, again.output
    doc_c = json.loads((out / "run.json").read_text())
    assert doc_c["keys"] == doc_b["keys"]
    assert all(info["cached"] for info in doc_c["cache"].values())
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_existing_directory_with_other_files_is_refused(world: World, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    result = world.run(out=out)
    _one_line_error(result, 2, "--overwrite")
    assert (out / "notes.txt").read_text() == "mine"
    assert not (out / "run.json").exists()


def test_quiet_shows_no_progress_bar(world: World) -> None:
    """Not even the libraries' bars (transformers prints one while loading weights)."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    hf_logging.enable_progress_bar()  # the library default, whatever earlier tests did
    try:
        result = world.run(out=world.root / "out-quiet")
    finally:
        if not was:
            hf_logging.disable_progress_bar()
    assert result.exit_code == 0, result.output
    assert result.stderr == "", result.stderr


def test_out_that_is_a_file_is_a_one_line_error(world: World, tmp_path: Path) -> None:
    out = tmp_path / "a-file"
    out.write_text("not a directory")
    for extra in ([], ["--overwrite"]):
        result = world.run(*extra, out=out)
        _one_line_error(result, 2, str(out))
        assert out.read_text() == "not a directory"


def test_cache_dir_that_is_a_file_is_a_one_line_error(world: World, tmp_path: Path) -> None:
    cache = tmp_path / "a-file"
    cache.write_text("not a directory")
    result = world.run(out=tmp_path / "out", cache=cache)
    _one_line_error(result, 2, str(cache))
    assert cache.read_text() == "not a directory"


def test_stage_option_selects_the_editor(world: World, tmp_path: Path) -> None:
    result = world.run("--stage", "editor=nosuch", out=tmp_path / "out")
    _one_line_error(result, 2, "nosuch", "installed: controlnet, pnp, pnp-frames, sdedit")


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.mark.parametrize("device", [
    "nosuch",
    pytest.param("cuda", marks=pytest.mark.skipif(_cuda_available(), reason="CUDA is available")),
])
def test_bad_device_is_a_one_line_error(world: World, tmp_path: Path, device: str) -> None:
    result = world.run("--device", device, out=tmp_path / "out", cache=tmp_path / "cache")
    _one_line_error(result, 1, device)
    assert not (tmp_path / "out").exists()


def test_sd21_layout_with_v_prediction_runs_end_to_end(world: World, tmp_path: Path) -> None:
    """SD 2.x shape (linear proj_in, per-block head dims) and a v-prediction scheduler."""
    from tokenflow.testing.tiny import save_tiny_model

    model = save_tiny_model(tmp_path / "sd21v", "sd21", seed=5, prediction_type="v_prediction")
    out = tmp_path / "out"
    result = world.invoke("run", str(world.clip), "--prompt", PROMPT, "--model", str(model),
                          *COMMON, "--cache-dir", str(tmp_path / "cache"), "--out", str(out),
                          "-o", "weights", "linear")
    assert result.exit_code == 0, result.output
    doc = json.loads((out / "run.json").read_text())
    assert doc["stages"]["blender"]["params"] == {"weights": "linear", "reuse_keyframes": False}
    assert doc["stages"]["correspondence"]["params"] == {"references": "nearest"}
    stats = doc["cache"]["blender"]["stats"]
    assert stats["unet_frame_evals"] == STEPS * 2 * (K + N)
    edited = read_video(out / "edited.mp4").frames
    assert edited.shape == (N, HEIGHT, WIDTH, 3)
    cached = _blender_frames(doc)
    assert cached.shape == (N, HEIGHT, WIDTH, 3) and cached.std() > 0
