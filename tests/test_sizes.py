"""Sizes end to end on the tiny model (issue 12, point 1): a 16:9 clip keeps its aspect (the
frames are padded to the UNet's multiples and cropped back, with a note), the outputs come back
at the source's size by default, ``--output-size working|S|WxH``, what ``run.json`` says, and
bad values refused before anything loads."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from click.testing import Result
from helpers import CliWorld, cli_env
from PIL import Image

import tokenflow
from tokenflow.cli import cli
from tokenflow.video import read_video, resize_frames, write_frames

N = 4
SOURCE = (144, 256)  # 16:9
WORKING = (64, 114)  # --size 64: 256 * 64 / 144 = 113.8
CANVAS = (64, 128)  # the next multiples of 64
SETTINGS = ["--steps", "2", "--inversion-steps", "2", "--frames", str(N), "--batch-size", "2",
            "--size", "64"]


@dataclass(kw_only=True)
class World(CliWorld):
    """A 16:9 clip and its first run (default output size) into ``out``."""

    out: Path
    frames: np.ndarray
    result: Result | None = None
    doc: dict = field(default_factory=dict)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, tf_tiny_model_dir: Path) -> World:
    root = tmp_path_factory.mktemp("sizes")
    frames = sharp_clip(N, *SOURCE)
    write_frames(root / "clip", frames)
    world = World(root=root, clip=root / "clip", model=Path(tf_tiny_model_dir),
                  cache=root / "cache", env=cli_env(root), settings=SETTINGS, out=root / "out",
                  frames=frames)
    world.result = world.run(out=world.out)
    assert world.result.exit_code == 0, world.result.output
    world.doc = json.loads((world.out / "run.json").read_text())
    return world


def sharp_clip(n: int, height: int, width: int) -> np.ndarray:
    """Colour ramps over a 4 px checkerboard with a red square moving right: detail that the
    working size loses and H.264 keeps, so that source.mp4 tells the source from a resize."""
    yy, xx = np.mgrid[:height, :width]
    checks = ((xx // 4 + yy // 4) % 2) * 160 + 40
    base = np.stack([xx * 255 // width, yy * 255 // height, checks], axis=-1).astype(np.uint8)
    frames = np.repeat(base[None], n, axis=0)
    for i in range(n):
        frames[i, 50:82, 20 + 8 * i:52 + 8 * i] = (230, 30, 30)
    return frames


def _size(height: int, width: int) -> dict:
    return {"width": width, "height": height}


def _notes(result: Result) -> list[str]:
    return [line for line in result.output.splitlines() if line.startswith("note:")]


def _canvas(doc: dict) -> np.ndarray:
    """The decoded edit as the blender stored it: what the UNet saw, padding included."""
    return np.asarray(zarr.open_group(doc["cache"]["blender"]["path"], mode="r")["frames"][...])


def _cropped(doc: dict) -> np.ndarray:
    return _canvas(doc)[:, :doc["size"]["height"], :doc["size"]["width"]]  # at the top left


def _pngs(out: Path) -> np.ndarray:
    return np.stack([np.asarray(Image.open(p).convert("RGB"))
                     for p in sorted((out / "frames").glob("*.png"))])


def _mean_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(float) - b.astype(float)).mean())


# --------------------------------------------------------------------------------- the aspect


def test_a_16_9_clip_is_edited_at_its_aspect_on_a_padded_canvas(world: World) -> None:
    doc = world.doc
    assert doc["source_size"] == _size(*SOURCE)
    assert doc["size"] == _size(*WORKING)
    assert doc["canvas"] == _size(*CANVAS)
    assert _canvas(doc).shape == (N, *CANVAS, 3)
    notes = _notes(world.result)
    assert ("note: working size 114x64: the UNet needs sides in multiples of 64, so each 114x64 "
            "frame is padded to 128x64 by mirroring its right and bottom edges (+12 % pixels), "
            "cropped after decoding") in notes
    assert not [n for n in notes if "aspect" in n]  # kept: nothing to say
    # the mirrored margin is part of what the UNet edited, and only the frame comes back
    assert _canvas(doc)[:, :, WORKING[1]:].std() > 0


def test_outputs_are_at_the_source_size_by_default(world: World) -> None:
    assert world.doc["output_size"] == {**_size(*SOURCE), "as": "source"}
    assert ("note: outputs at 256x144 (the source's size), resized from the working size 114x64; "
            "--output-size working keeps them as edited") in _notes(world.result)
    edited = read_video(world.out / "edited.mp4").frames
    source = read_video(world.out / "source.mp4").frames
    both = read_video(world.out / "side_by_side.mp4").frames
    assert edited.shape == source.shape == (N, *SOURCE, 3)
    assert both.shape == (N, SOURCE[0], 2 * SOURCE[1], 3)
    # frames/ is the decoded edit, cropped to the working size and resized: nothing else
    pngs = _pngs(world.out)
    np.testing.assert_array_equal(pngs, resize_frames(np.ascontiguousarray(_cropped(world.doc)),
                                                      *SOURCE))
    assert _mean_diff(edited, pngs) < 6 < _mean_diff(edited, world.frames)
    # source.mp4 is the source as decoded, not the working frames scaled back up
    round_trip = resize_frames(resize_frames(world.frames, *WORKING), *SOURCE)
    assert _mean_diff(source, world.frames) < 6
    assert _mean_diff(source, round_trip) > 12
    assert _mean_diff(both[:, :, :SOURCE[1]], world.frames) < 6
    assert _mean_diff(both[:, :, SOURCE[1]:], pngs) < 6


def test_output_size_working_writes_the_frames_as_edited(world: World) -> None:
    out = world.root / "out-working"
    result = world.run("--output-size", "working", out=out)
    assert result.exit_code == 0, result.output
    doc = json.loads((out / "run.json").read_text())
    assert doc["keys"] == world.doc["keys"]  # the output size is not part of any key
    assert all(entry["cached"] for entry in doc["cache"].values())
    assert doc["output_size"] == {**_size(*WORKING), "as": "working"}
    assert not [n for n in _notes(result) if n.startswith("note: outputs at")]
    np.testing.assert_array_equal(_pngs(out), _cropped(doc))
    assert read_video(out / "edited.mp4").frames.shape == (N, *WORKING, 3)
    assert read_video(out / "source.mp4").frames.shape == (N, *WORKING, 3)
    # the preview shows the working frames: the edit cropped off the padded canvas
    from tokenflow.preview import preview_sheet

    expected = preview_sheet(resize_frames(world.frames, *WORKING), _pngs(out),
                             f"edit: {doc['stages']['editor']['params']['prompt']}")
    np.testing.assert_array_equal(np.asarray(Image.open(out / "preview.png").convert("RGB")),
                                  expected)


def test_large_outputs_stream_in_smaller_chunks(world: World,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from tokenflow import outputs

    assert outputs.output_chunk(144, 256) == outputs.OUTPUT_CHUNK == 16
    assert outputs.output_chunk(2160, 3840) == 2  # 4K: 2 frames of 24.9 MB in 64 MB
    assert outputs.output_chunk(20000, 20000) == 1
    # one frame a chunk: the same outputs
    monkeypatch.setattr(outputs, "OUTPUT_CHUNK_BYTES", SOURCE[0] * SOURCE[1] * 3)
    out = world.root / "out-chunked"
    result = world.run(out=out)
    assert result.exit_code == 0, result.output
    np.testing.assert_array_equal(_pngs(out), _pngs(world.out))
    assert read_video(out / "edited.mp4").frames.shape == (N, *SOURCE, 3)


@pytest.mark.parametrize(("value", "shape", "stretch"), [
    ("200x100", (100, 200), "aspect 1.78 -> 2.00 (+12 %)"),
    ("72", (72, 128), None),  # a short side: the source's aspect
])
def test_output_size_s_or_wxh(world: World, value: str, shape: tuple[int, int],
                              stretch: str | None) -> None:
    out = world.root / f"out-{value}"
    result = world.run("--output-size", value, out=out)
    assert result.exit_code == 0, result.output
    doc = json.loads((out / "run.json").read_text())
    assert doc["output_size"] == {**_size(*shape), "as": value}
    for name, width in (("edited.mp4", shape[1]), ("source.mp4", shape[1]),
                        ("side_by_side.mp4", 2 * shape[1])):
        assert read_video(out / name).frames.shape == (N, shape[0], width, 3), name
    assert _pngs(out).shape == (N, *shape, 3)
    aspect = [n for n in _notes(result) if "aspect" in n]
    assert aspect == ([f"note: --output-size {value} changes the source's {stretch}"]
                      if stretch else [])


def test_size_wxh_of_another_aspect_says_how_much(world: World) -> None:
    out = world.root / "out-size-200x100"
    result = world.run(out=out, settings=[*SETTINGS[:-1], "200x100"])
    assert result.exit_code == 0, result.output
    notes = _notes(result)
    assert "note: --size 200x100 changes the source's aspect 1.78 -> 2.00 (+12 %)" in notes
    assert any("padded to 256x128" in n for n in notes)
    doc = json.loads((out / "run.json").read_text())
    assert doc["size"] == _size(100, 200)
    assert doc["canvas"] == _size(128, 256)
    assert doc["output_size"] == {**_size(*SOURCE), "as": "source"}
    assert read_video(out / "edited.mp4").frames.shape == (N, *SOURCE, 3)


# --------------------------------------------------------------------------------- bad values


@pytest.mark.parametrize("value", ["0", "huge", "12x", "1280x0", "-5"])
def test_a_bad_output_size_is_a_usage_error_before_anything_loads(world: World,
                                                                  value: str) -> None:
    # the video does not exist: the output size is refused first, as a usage error
    result = world.invoke("run", str(world.root / "nope.mp4"), "--prompt", "a ball",
                          "--output-size", value)
    assert result.exit_code == 2, result.output
    assert "Invalid value for '--output-size'" in result.output
    assert "expected source, working, S or WxH" in result.output
    assert "no such file" not in result.output and "Traceback" not in result.output


def test_edit_checks_the_output_size_before_reading_the_video(tmp_path: Path) -> None:
    with pytest.raises(tokenflow.EditError, match="--output-size: invalid output size 'huge'") \
            as caught:
        tokenflow.edit(tmp_path / "nope.mp4", prompt="a ball", output_size="huge")
    assert caught.value.usage


def test_edit_takes_an_output_size_tuple(world: World, tf_tiny_model, tmp_path: Path) -> None:
    result = tokenflow.edit(world.clip, prompt=world.prompt, model=tf_tiny_model,
                            cache_dir=world.cache, steps=2, inversion_steps=2, frames=N,
                            batch_size=2, size=64, out=tmp_path / "out", output_size=(128, 72))
    assert result.output == {**_size(72, 128), "as": "128x72"}
    assert result.record["output_size"] == result.output
    assert result.frames.shape == (N, *WORKING, 3)  # the edit as made: the working size
    assert read_video(tmp_path / "out" / "edited.mp4").frames.shape == (N, 72, 128, 3)


# --------------------------------------------------------------------------------- the model's grid


def test_the_canvas_multiple_comes_from_the_models_config(world: World) -> None:
    """A UNet with three down blocks halves its latents twice: multiples of 8 * 4 = 32."""
    from tokenflow.models import Model
    from tokenflow.testing.tiny import build_tiny_model

    parts = build_tiny_model(seed=1, unet={
        "down_block_types": ("CrossAttnDownBlock2D",) * 2 + ("DownBlock2D",),
        "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 2,
        "block_out_channels": (32, 64, 64)})
    for name in ("unet", "vae", "text_encoder"):
        parts[name].eval().requires_grad_(False)
    model = Model(**parts, model_id="three-downs", revision=None, key="three-downs",
                  device=torch.device("cpu"), dtype=torch.float32, label="three downs")
    assert model.size_multiple == 32
    source = tokenflow.api.prepare(world.clip, model=model, frames=N, size=48)
    assert source.working.shape == (N, 48, 85, 3)  # 256 * 48 / 144 = 85.3
    assert source.frames.shape == (N, 64, 96, 3)  # 64 would give 64x128
    np.testing.assert_array_equal(source.crop(source.frames), source.working)
