"""The shipped embedded model edits an example clip for real: the named colour and texture show in
most frames while the object stays where the source has it (measured with the rules of
``tokenflow.world``, world v2). The texture is "checkered", the one the model draws in edits (its
``tokenflow.json`` says stripes, dots and rings come out as a rough check pattern)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from tokenflow.cli import cli
from tokenflow.embedded.suggestions import EMBEDDED_DEFAULTS
from tokenflow.models import EMBEDDED_DIR
from tokenflow.video import read_video
from tokenflow.embedded.public_world import mask_iou, object_masks, read_frame

ROOT = Path(__file__).resolve().parents[1]
CLIP = ROOT / "examples" / "clips" / "rolling_ball.mp4"
FRAMES = 12


def _centroid(mask: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    return np.array([ys.mean(), xs.mean()])


def _object(frame: np.ndarray) -> np.ndarray:
    """The largest object's mask (all False if the frame shows none)."""
    masks = object_masks(frame)
    return masks[0] if masks else np.zeros(frame.shape[:2], bool)


@pytest.fixture(scope="module")
def edit(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("embedded") / "out"
    result = CliRunner().invoke(cli, [
        "run", str(CLIP), "--inversion-prompt", "a red ball on wood",
        "--prompt", "a blue checkered ball on wood", "--frames", str(FRAMES),
        "--cache-dir", str(out.parent / "cache"), "--out", str(out),
        "--output-size", "working"])  # measured in the model's 96x96 pixels
    assert result.exit_code == 0, result.output
    assert "no --model given; using tokenflow's embedded model" in result.output
    return out


def test_embedded_model_ships_as_safetensors_within_budget() -> None:
    files = list(EMBEDDED_DIR.rglob("*"))
    assert not any(f.suffix in (".bin", ".pt", ".pth", ".ckpt") for f in files)
    weights = [f for f in files if f.suffix == ".safetensors"]
    assert len(weights) == 4  # unet, vae, text encoder, and the canny ControlNet
    assert sum(f.stat().st_size for f in files if f.is_file()) < 30 * 2**20


def test_edit_changes_colour_and_texture_and_keeps_the_motion(edit: Path) -> None:
    doc = json.loads((edit / "run.json").read_text())
    assert doc["model"]["id"] == "embedded"
    assert doc["stages"]["inversion"]["params"]["inversion_steps"] == EMBEDDED_DEFAULTS[
        "inversion.inversion_steps"]  # the model's suggestion, not the released 500
    source = read_video(edit / "source.mp4").frames
    edited = np.stack([np.asarray(Image.open(p).convert("RGB"))
                       for p in sorted((edit / "frames").glob("*.png"))])
    assert edited.shape == (FRAMES, 96, 96, 3)
    read = [read_frame(frame)["objects"] for frame in edited]
    seen = [(o[0]["colour"], o[0]["texture"]) if o else None for o in read]
    assert sum(s == ("blue", "checkered") for s in seen) >= 0.75 * FRAMES, seen
    assert all([(o["colour"], o["texture"]) for o in read_frame(frame)["objects"]] == [("red", "plain")]
               for frame in source)
    ious, shifts = [], []
    for src, out in zip(source, edited):
        a, b = _object(src), _object(out)
        ious.append(mask_iou(a, b))
        shifts.append(np.abs(_centroid(a) - _centroid(b)).max() if b.sum() else np.inf)
    assert np.median(ious) >= 0.7, ious
    assert np.median(shifts) <= 4.0, shifts  # pixels at 96x96: the ball goes where the source's goes
    # and it does travel: the edit's object moves right like the source's
    assert _centroid(_object(edited[-1]))[1] - _centroid(_object(edited[0]))[1] > 15


def test_the_shipped_controlnet_keeps_the_layout_sdedit_loses(tmp_path: Path) -> None:
    """SDEdit from the fully inverted noise keeps little of the layout; the same with the
    embedded canny ControlNet (the model's suggested ``editor.controlnet``) keeps the ball where
    the source has it."""
    import zarr

    from tokenflow.manager import make_plugin_manager
    from tokenflow.models import load_model
    from tokenflow.testing import make_job
    from tokenflow.video import resize_frames

    model = load_model(None, device="cpu")
    frames = resize_frames(read_video(CLIP, frames=8).frames, 96, 96)
    pm = make_plugin_manager()
    params = {"inversion": {"prompt": "a red ball on wood"},
              "editor": {"prompt": "a blue ball on wood"}}
    out, ious = {}, {}
    for editor in ("sdedit", "controlnet"):
        options = [("editor.strength", "1.0")]
        if editor == "controlnet":
            options.append(("editor.mode", "sdedit"))
        job = make_job(pm, model, frames, cache=tmp_path / "cache", steps=25, batch_size=8,
                       editor=editor, params=params, options=options)
        if editor == "controlnet":
            assert job.stages["editor"].params.controlnet == "controlnet-canny"
        results = job.run()
        out[editor] = np.asarray(zarr.open_group(str(results["blender"].path), mode="r")["frames"][...])
        ious[editor] = float(np.median([mask_iou(_object(a), _object(b))
                                        for a, b in zip(frames, out[editor])]))
    # measured 0.81 against 0.47 (2026-11-30): the model's blobby outlines cap the IoU with the
    # source's ball near the PnP edits' 0.88-0.92
    assert ious["controlnet"] >= 0.75, ious
    assert ious["controlnet"] > ious["sdedit"] + 0.2, ious
    assert all([o["colour"] for o in read_frame(f)["objects"]][:1] == ["blue"] for f in out["controlnet"])

