"""Tests for DDIM inversion (tokenflow_plugins.ddim), the timestep grids, prediction types and the
editing loop's start latents (docs/algorithm.md sections 1 and 7)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import zarr

from tokenflow.editing.diffusion import editing_grid, to_epsilon
from tokenflow.editing.loop import EditRun, start_latents
from tokenflow.models import SD_SCHEDULER_CONFIG, Model
from tokenflow.testing.tiny import build_tiny_model
from tokenflow.stages import RunConfig, StageContext, StageError
from tokenflow.testing import synthetic_frames
from tokenflow_plugins.ddim import DDIMInversion, DDIMInversionParams, invert, inversion_grid


@pytest.fixture(scope="module")
def model() -> Model:
    parts = build_tiny_model(seed=0)
    for name in ("unet", "vae", "text_encoder"):
        parts[name].eval().requires_grad_(False)
    return Model(**parts, model_id="tiny", revision=None, key="tiny-test", device=torch.device("cpu"),
                 dtype=torch.float32, label="tiny")


@pytest.fixture(scope="module")
def x0() -> torch.Tensor:
    gen = torch.Generator().manual_seed(3)
    return torch.randn(3, 4, 8, 8, generator=gen)


@pytest.fixture(scope="module")
def text(model) -> torch.Tensor:
    return model.encode_prompts(["a red ball"])


@torch.no_grad()
def _reference_inversion(model, x0, text, grid):
    """docs/algorithm.md section 1, frame by frame, in float64 arithmetic on the latents."""
    alphas = model.scheduler.alphas_cumprod.to(torch.float64)
    trajectory = {}
    frames = []
    for f in range(x0.shape[0]):
        x = x0[f:f + 1].to(torch.float64)
        a_p = alphas[0]  # set_alpha_to_one is False: the "final" level is a_0
        path = {}
        for t in grid:
            a_t = alphas[t]
            eps = model.unet(x.float(), t, encoder_hidden_states=text).sample.to(torch.float64)
            x0_hat = (x - torch.sqrt(1 - a_p) * eps) / torch.sqrt(a_p)
            x = torch.sqrt(a_t) * x0_hat + torch.sqrt(1 - a_t) * eps
            a_p = a_t
            path[t] = x
        frames.append(path)
    for t in grid:
        trajectory[t] = torch.cat([p[t] for p in frames]).float()
    return trajectory


def test_inversion_grid_ascending(model):
    grid = inversion_grid(model, 5)
    assert grid == [1, 201, 401, 601, 801]
    grid500 = inversion_grid(model, 500)
    assert len(grid500) == 500 and grid500 == sorted(grid500) and len(set(grid500)) == 500
    assert grid500[0] == 1 and grid500[-1] == 999


def test_editing_grid_subset_of_inversion_grid(model):
    editing = editing_grid(model, 50)
    assert editing == list(range(981, 0, -20))
    assert editing[0] == 981 and editing[-1] == 1 and len(editing) == 50
    assert set(editing) <= set(inversion_grid(model, 500))
    assert not set(editing) <= set(inversion_grid(model, 30))
    assert 21 not in inversion_grid(model, 30)


@torch.no_grad()
def test_invert_matches_formulas(model, x0, text):
    grid = inversion_grid(model, 5)
    assert float(model.scheduler.final_alpha_cumprod) == pytest.approx(
        float(model.scheduler.alphas_cumprod[0]))
    expected = _reference_inversion(model, x0, text, grid)
    kept, x_max = invert(model, x0, text, grid, keep=set(grid))
    assert sorted(kept) == grid
    for t in grid:
        torch.testing.assert_close(kept[t], expected[t], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(x_max, expected[grid[-1]], atol=1e-5, rtol=1e-5)
    # the inversion really moved the latents (not an identity)
    assert (x_max - x0).abs().max() > 0.1
    # input untouched
    torch.testing.assert_close(x0, torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(3)))


@torch.no_grad()
def test_invert_keep_and_batch_size(model, x0, text):
    grid = inversion_grid(model, 5)
    keep = {grid[1], grid[3]}
    steps = []
    kept, x_max = invert(model, x0, text, grid, keep=keep, on_step=lambda *step: steps.append(step[0]))
    assert set(kept) == keep and len(steps) == len(grid)
    full, full_max = invert(model, x0, text, grid, keep=set(grid), batch_size=1)
    for t in keep:
        torch.testing.assert_close(kept[t], full[t], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(x_max, full_max, atol=1e-5, rtol=1e-5)
    _, two = invert(model, x0, text, grid, keep=set(), batch_size=2)
    torch.testing.assert_close(two, full_max, atol=1e-5, rtol=1e-5)
    # a timestep off the grid is never kept
    kept, _ = invert(model, x0[:1], text, grid[:2], keep={grid[0], 5})
    assert set(kept) == {grid[0]}


def test_to_epsilon():
    gen = torch.Generator().manual_seed(4)
    x0, eps = torch.randn(2, 4, 3, 3, generator=gen), torch.randn(2, 4, 3, 3, generator=gen)
    for a in (0.9991, 0.5, 0.0047):
        x = math.sqrt(a) * x0 + math.sqrt(1 - a) * eps
        v = math.sqrt(a) * eps - math.sqrt(1 - a) * x0
        torch.testing.assert_close(to_epsilon(v, x, a, "v_prediction"), eps, atol=1e-5, rtol=1e-5)
        assert to_epsilon(eps, x, a, "epsilon") is eps
    with pytest.raises(ValueError):
        to_epsilon(eps, eps, 0.5, "sample")


def _stage_ctx(model, frames, steps):
    return StageContext(model=model, frames=frames, config=RunConfig(steps=steps, batch_size=8),
                        output=zarr.open_group(zarr.storage.MemoryStore(), mode="w"), quiet=True)


def test_inversion_stage_rejects_grid_that_is_not_a_superset(model):
    frames = synthetic_frames(2, 64, 64)
    stage = DDIMInversion(DDIMInversionParams(inversion_steps=30))
    with pytest.raises(StageError, match="not on the 30-step inversion grid"):
        stage.run(_stage_ctx(model, frames, 50))


@torch.no_grad()
def test_inversion_stage_writes_editing_timesteps(model):
    frames = synthetic_frames(2, 64, 64)
    stage = DDIMInversion(DDIMInversionParams(prompt="a red ball", inversion_steps=10))
    ctx = _stage_ctx(model, frames, 5)
    stage.run(ctx)
    out = ctx.output
    editing = [801, 601, 401, 201, 1]
    assert [int(t) for t in out["timestep"][...]] == editing
    x0 = model.encode_frames(frames)
    np.testing.assert_allclose(out["x0"][...], x0.numpy(), atol=1e-6)
    grid = inversion_grid(model, 10)
    assert grid == list(range(1, 1000, 100))
    expected = _reference_inversion(model, x0, model.encode_prompts(["a red ball"]), grid)
    latents = out["latents"][...]
    assert latents.shape == (5, 2, 4, 8, 8)
    for i, t in enumerate(editing):
        np.testing.assert_allclose(latents[i], expected[t].numpy(), atol=1e-5)
    np.testing.assert_allclose(out["x_max"][...], expected[901].numpy(), atol=1e-5)
    assert out.attrs["t_max"] == 901 and out.attrs["prompt"] == "a red ball"


def test_start_latents_formula():
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler.from_config(SD_SCHEDULER_CONFIG)
    gen = torch.Generator().manual_seed(5)
    x0 = torch.randn(2, 4, 3, 3, generator=gen)
    noise = torch.randn(2, 4, 3, 3, generator=gen)
    a = scheduler.alphas_cumprod.to(torch.float64)
    x_max = (a[999].sqrt() * x0 + (1 - a[999]).sqrt() * noise).float()
    run = EditRun(ctx=SimpleNamespace(config=RunConfig()), editor=None, blender=None,
                  timesteps=list(range(981, 0, -20)), scheduler=scheduler, features=None,
                  correspondence=None, keyframes=np.zeros((50, 1), dtype=np.int64), x0=x0,
                  x_max=x_max, t_max=999)
    got = start_latents(run, 981)
    eps_inv = (x_max.double() - a[999].sqrt() * x0.double()) / (1 - a[999]).sqrt()
    expected = a[981].sqrt() * x0.double() + (1 - a[981]).sqrt() * eps_inv
    torch.testing.assert_close(got.double(), expected, atol=1e-5, rtol=1e-5)
    # x_max was built from x0 with known noise: the start latent is that noise at level 981
    torch.testing.assert_close(got.double(), a[981].sqrt() * x0.double() + (1 - a[981]).sqrt() * noise.double(),
                               atol=1e-4, rtol=1e-4)
    # and it is not x_max itself (levels differ)
    assert (got - x_max).abs().max() > 1e-3
