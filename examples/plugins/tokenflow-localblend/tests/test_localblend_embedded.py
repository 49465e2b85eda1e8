"""What ``localblend`` is for, on tokenflow's embedded model: "a red ball on wood" edited to "a
blue ball on sand" with ``words=ball`` turns the ball blue as ``pnp`` does, while ``pnp`` also
turns the wood into sand and ``localblend`` keeps it (scored with the rules of
``tokenflow.world``, no learned model)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import zarr

from tokenflow import load_model, world
from tokenflow.testing import make_job

N, B, STEPS = 4, 2, 5
SOURCE = "a red ball on wood"
TARGET = "a blue ball on sand"


def rolling_ball(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Frames (n, 64, 64, 3) of a red ball moving right on wood, and its masks."""
    scene = world.Scene("wood", (world.Thing("ball", "red", radius=0.24),), seed=11)
    drawn = [world.render(scene.with_thing(0, x=-0.22 + 0.44 * i / (n - 1)), 64, 64)
             for i in range(n)]
    return np.stack([image for image, _ in drawn]), np.stack([masks[0] for _, masks in drawn])


def grow(masks: np.ndarray, pixels: int) -> np.ndarray:
    t = torch.from_numpy(masks.astype(np.float32))[:, None]
    return F.max_pool2d(t, 2 * pixels + 1, stride=1, padding=pixels)[:, 0].numpy() > 0


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason=(
    "bounds measured on the first embedded model; on model v2 (issue 13) localblend edits no "
    "latent cell away from the ball, but the floor still differs by 13.1 (pnp: 60.4; its VAE "
    "alone: 8.4) and the edited ball covers 67 % of the source's: to recalibrate"))
def test_localblend_recolours_the_ball_and_keeps_the_floor(pm, tf_cache) -> None:
    model = load_model(None, device="cpu")
    frames, balls = rolling_ball(N)
    assert [world.object_colour(f) for f in frames] == ["red"] * N

    def edit(editor: str, options=()) -> tuple[np.ndarray, np.ndarray]:
        job = make_job(pm, model, frames, cache=tf_cache, steps=STEPS, batch_size=B,
                       editor=editor,
                       params={"inversion": {"prompt": SOURCE}, "editor": {"prompt": TARGET}},
                       options=options)
        results = job.run()
        blender = zarr.open_group(str(results["blender"].path), mode="r")
        x0 = zarr.open_group(str(results["inversion"].path), mode="r")["x0"][...]
        edited_cells = (np.asarray(blender["latents"][-1]) != np.asarray(x0)).any(axis=1)
        return np.asarray(blender["frames"][...]), edited_cells

    pnp, _ = edit("pnp")
    blend, cells = edit("localblend", [("editor.words", "ball")])

    away = ~grow(balls, 3)  # the wood, a few pixels away from the ball's edge
    floor_pnp = np.abs(pnp.astype(float) - frames)[away].mean()
    floor_blend = np.abs(blend.astype(float) - frames)[away].mean()
    assert [world.object_colour(f) for f in pnp] == ["blue"] * N
    assert [world.object_colour(f) for f in blend] == ["blue"] * N
    assert floor_pnp > 20, floor_pnp  # pnp paints sand over the wood, localblend does not
    assert floor_blend < 0.15 * floor_pnp and floor_blend < 4, (floor_blend, floor_pnp)
    # the ball is where the source has it, and the mask went with it
    assert np.median([np.mean(world.object_mask(f)[b]) for f, b in zip(blend, balls, strict=True)]) > 0.8
    ball_cells = balls.reshape(N, 8, 8, 8, 8).mean(axis=(2, 4)) >= 0.5
    near_ball = grow(ball_cells, 1)
    assert cells[ball_cells].mean() > 0.9  # edited where the ball is
    assert cells[~near_ball].mean() < 0.1  # and not more than a cell away from it
    columns = [np.nonzero(c)[1].mean() for c in cells]
    assert columns[-1] - columns[0] > 2  # latent cells: the ball moves 3.5 of them
