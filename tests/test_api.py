"""``tokenflow.edit`` and ``tokenflow.invert``: the one way to run an edit, which ``tf run``,
``tf invert`` and ``tf compare`` wrap."""

from __future__ import annotations

import json
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from click.testing import CliRunner

import tokenflow
from tokenflow.cli import cli

ARGS = dict(prompt="a blue square", steps=3, inversion_steps=3, batch_size=4, size="64x64")


def test_edit_gives_the_frames_and_keys_of_tf_run(tf_tiny_model_dir, tf_video, tmp_path: Path):
    out = tmp_path / "cli-out"
    result = CliRunner().invoke(cli, [
        "run", str(tf_video), "--model", str(tf_tiny_model_dir), "--prompt", ARGS["prompt"],
        "--steps", "3", "--inversion-steps", "3", "--batch-size", "4", "--size", "64x64",
        "--cache-dir", str(tmp_path / "cli-cache"), "--out", str(out), "-q",
        "--output-size", "working"])
    assert result.exit_code == 0, result.output
    record = json.loads((out / "run.json").read_text())

    seen: list[tuple[str, int, int]] = []
    edited = tokenflow.edit(tf_video, model=str(tf_tiny_model_dir), out=tmp_path / "api-out",
                            cache_dir=tmp_path / "api-cache", progress=lambda *a: seen.append(a),
                            **ARGS)
    assert edited.keys == record["keys"]
    assert not any(r.cached for r in edited.results.values())  # computed afresh, not reused
    cli_frames = np.stack([iio.imread(f) for f in sorted((out / "frames").glob("*.png"))])
    np.testing.assert_array_equal(edited.frames, cli_frames)
    api_record = json.loads((tmp_path / "api-out" / "run.json").read_text())
    assert api_record["stages"] == record["stages"] and api_record["keys"] == record["keys"]
    assert edited.record["keys"] == record["keys"]
    # progress: every long stage reports, and each reaches its total
    finished = {desc for desc, done, total in seen if done == total}
    assert {d.split(" ")[0] for d in finished} >= {"invert", "features", "correspondence",
                                                    "edit"}
    # every store, with named dims
    ds = edited.dataset("inversion")
    assert ds["latents"].dims == ("timestep", "frame", "latent_channel", "latent_y", "latent_x")
    assert ds["latents"].shape[:2] == (3, 8) and ds["timestep"].values[0] > ds["timestep"].values[-1]


def test_edit_takes_a_loaded_model_and_reuses_the_cache(tf_tiny_model, tf_video, tmp_path: Path):
    first = tokenflow.edit(tf_video, model=tf_tiny_model, cache_dir=tmp_path / "cache", **ARGS)
    again = tokenflow.edit(tf_video, model=tf_tiny_model, cache_dir=tmp_path / "cache", **ARGS)
    assert all(r.cached for r in again.results.values())
    np.testing.assert_array_equal(first.frames, again.frames)
    assert first.out is None  # no output folder unless asked


@pytest.mark.parametrize(("kwargs", "usage", "message"), [
    ({"prompt": " "}, True, "--prompt is empty"),
    ({"size": "12x"}, True, "--size"),
    ({"editor": "no-such-editor"}, True, "unknown editor 'no-such-editor'"),
    ({"stages": {"nonsense": "x"}}, True, "unknown stage kind 'nonsense'"),
    ({"options": [("editor.pnp_attn_t", "2")]}, True, "pnp_attn_t must be between 0 and 1"),
    ({"video": "no/such/video.mp4"}, True, "no/such/video.mp4"),  # a bad path: usage
])
def test_edit_errors_are_one_line_edit_errors(tf_tiny_model, tf_video, tmp_path: Path, kwargs,
                                              usage, message) -> None:
    args = {**ARGS, "video": tf_video, "model": tf_tiny_model, "cache_dir": tmp_path / "cache",
            **kwargs}
    with pytest.raises(tokenflow.EditError, match=message) as info:
        tokenflow.edit(args.pop("video"), **args)
    assert info.value.usage is usage
    assert "\n" not in str(info.value)
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("*.zarr"))


def test_invert_measures_the_reconstruction_without_the_padding(tf_tiny_model, tf_video,
                                                                tmp_path: Path) -> None:
    from tokenflow.editing.diffusion import psnr

    result = tokenflow.invert(tf_video, model=tf_tiny_model, cache_dir=tmp_path / "cache",
                              steps=3, inversion_steps=3, batch_size=4, size="64x40")
    source = result.source
    assert source.framing is not None and source.frames.shape[1:3] != (40, 64)  # padded
    assert source.working.shape[1:3] == (40, 64)
    clean = np.asarray(result.job.base.cache.open(result.results["inversion"].path)["x0"][...])
    decoded = tf_tiny_model.decode_latents(torch.from_numpy(clean.astype(np.float32)))
    cropped = psnr(source.crop(decoded), source.working)
    padded = psnr(decoded, source.frames)
    assert not np.allclose(cropped, padded)  # the padding changes the figure
    assert result.psnr["vae_per_frame"] == pytest.approx(cropped.tolist())
    assert len(result.psnr["per_frame"]) == len(source.working)


def test_invert_runs_inversion_and_features_and_checks_the_reconstruction(
        tf_tiny_model, tf_video, tmp_path: Path) -> None:
    result = tokenflow.invert(tf_video, model=tf_tiny_model, cache_dir=tmp_path / "cache",
                              steps=3, inversion_steps=3, batch_size=4, size="64x64")
    assert set(result.keys) == {"inversion", "features"}
    assert len(result.psnr["per_frame"]) == 8 and np.isfinite(result.psnr["mean"])
