"""Runs that need hardware or weights this test machine may lack; ``tokenflow.testing`` skips
them with the reason otherwise:

* ``gpu``: a short edit on CUDA agrees with the same edit on the CPU (float32, TF32 off);
* ``fullsize``: a short edit with real Stable Diffusion weights (``TOKENFLOW_FULLSIZE_MODEL``)
  writes frames of the working size, and the DDIM inversion regenerates the source well.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from tokenflow.editing.diffusion import psnr
from tokenflow.manager import make_plugin_manager
from tokenflow.models import load_model
from tokenflow.editing.reconstruction import reconstruction_check
from tokenflow.testing import make_job, synthetic_frames


def _edit(model, frames: np.ndarray, cache: Path, *, steps: int, inversion_steps: int,
          batch_size: int, prompt: str):
    job = make_job(make_plugin_manager(), model, frames, cache=cache, steps=steps,
                   batch_size=batch_size,
                   params={"inversion": {"inversion_steps": inversion_steps},
                           "editor": {"prompt": prompt}})
    return job, job.run()


def _store(results, kind: str) -> zarr.Group:
    return zarr.open_group(str(results[kind].path), mode="r")


def _indices(store: zarr.Group) -> np.ndarray:
    groups = sorted(set(dict(store.attrs["groups"]).values()))
    return np.concatenate([np.asarray(store[g]["index"][...]).ravel() for g in groups])


@pytest.fixture
def no_tf32():
    """Full float32 matmuls and convolutions on CUDA for the test, restored afterwards."""
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    precision = torch.get_float32_matmul_precision()
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn
        torch.set_float32_matmul_precision(precision)


@pytest.mark.gpu
@pytest.mark.slow
def test_a_short_edit_on_cuda_matches_the_cpu(tf_tiny_model_dir: Path, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch, no_tf32) -> None:
    monkeypatch.setenv("TOKENFLOW_HASH_CACHE", str(tmp_path / "memo"))
    frames = synthetic_frames(6, height=64, width=64)
    runs = {}
    for device in ("cpu", "cuda"):
        model = load_model(str(tf_tiny_model_dir), device=device, dtype=torch.float32)
        assert model.device.type == device
        _, results = _edit(model, frames, tmp_path / device, steps=4, inversion_steps=8,
                           batch_size=3, prompt="a blue ball")
        runs[device] = results
    assert runs["cpu"]["blender"].key == runs["cuda"]["blender"].key  # the device is no input
    cpu = {k: _store(runs["cpu"], k) for k in runs["cpu"]}
    gpu = {k: _store(runs["cuda"], k) for k in runs["cuda"]}
    np.testing.assert_allclose(np.asarray(gpu["inversion"]["latents"][...]),
                               np.asarray(cpu["inversion"]["latents"][...]), rtol=0, atol=1e-3)
    np.testing.assert_array_equal(np.asarray(gpu["keyframes"]["keyframes"][...]),
                                  np.asarray(cpu["keyframes"]["keyframes"][...]))
    # a near tie may pick another token on another device, rarely
    same = _indices(gpu["correspondence"]) == _indices(cpu["correspondence"])
    assert same.mean() >= 0.99
    out_cpu = np.asarray(cpu["blender"]["frames"][...])
    out_gpu = np.asarray(gpu["blender"]["frames"][...])
    assert out_gpu.shape == out_cpu.shape == frames.shape
    assert psnr(out_gpu, out_cpu).min() >= 30.0


def _smooth_frames(n: int, side: int) -> np.ndarray:
    """Gradients and a soft disc moving right: content a VAE reproduces well."""
    y, x = np.mgrid[0:side, 0:side].astype(np.float64) / side
    frames = np.empty((n, side, side, 3), dtype=np.uint8)
    for i in range(n):
        cx, cy = 0.3 + 0.05 * i, 0.5
        disc = np.clip(1.5 - np.hypot(x - cx, y - cy) / 0.12, 0.0, 1.0)
        rgb = np.stack([0.2 + 0.5 * x, 0.3 + 0.4 * y, 0.6 - 0.3 * x], axis=-1)
        rgb = rgb * (1 - disc[..., None]) + np.array([0.9, 0.15, 0.1]) * disc[..., None]
        frames[i] = np.round(255 * np.clip(rgb, 0, 1)).astype(np.uint8)
    return frames


@pytest.mark.fullsize
@pytest.mark.slow
def test_a_short_edit_on_the_full_size_model(tf_fullsize_model_dir: Path, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOKENFLOW_HASH_CACHE", str(tmp_path / "memo"))
    model = load_model(str(tf_fullsize_model_dir))  # CUDA float16 where available
    # the native size on a GPU; a quarter of the pixels keeps a CPU run to minutes
    side = model.native_size if model.device.type == "cuda" else model.native_size // 2
    frames = _smooth_frames(4, side)
    job, results = _edit(model, frames, tmp_path / "cache", steps=10, inversion_steps=50,
                         batch_size=2, prompt="a photo of a blue ball")
    out = np.asarray(_store(results, "blender")["frames"][...])
    assert out.shape == frames.shape and out.dtype == np.uint8
    assert np.abs(out.astype(int) - frames.astype(int)).mean() > 1.0  # the edit did something
    check = reconstruction_check(job, results)
    assert len(check["per_frame"]) == len(frames)
    # DDIM inversion with 50 steps and no guidance regenerates the source closely: within a few
    # dB of what the VAE alone reproduces
    assert check["min"] >= 20.0, check
    assert check["mean"] >= check["vae_mean"] - 8.0, check
