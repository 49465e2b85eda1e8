"""Keyframe sampler ``random``: one uniform draw per chunk per timestep (docs/algorithm.md section 3).

Same draws as the released TokenFlow code for a seed: a generator seeded once, then per
timestep ``randint(B, (K,)) + arange(0, N, B)``; a last, shorter chunk of length L takes its
draw modulo L.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tokenflow import (
    CHUNK,
    INVERSION,
    KEYFRAMES,
    TIMESTEP,
    Params,
    StageBase,
    StageContext,
    hookimpl,
)


@dataclass(frozen=True)
class RandomKeyframeParams(Params):
    """``seed``: seeds the draws (the CLI's ``--seed``)."""

    seed: int = 1


def draw_keyframes(n_frames: int, batch_size: int, steps: int, seed: int) -> np.ndarray:
    """(steps, K) keyframe indices, K = ceil(n_frames / batch_size)."""
    import torch

    if n_frames < 1 or batch_size < 1:
        raise ValueError("need at least one frame and a batch size of at least 1")
    generator = torch.Generator().manual_seed(seed)
    starts = torch.arange(0, n_frames, batch_size)
    last = n_frames - int(starts[-1])
    out = np.empty((steps, len(starts)), dtype=np.int64)
    for i in range(steps):
        draw = torch.randint(batch_size, (len(starts),), generator=generator)
        if last < batch_size:
            draw[-1] = draw[-1] % last
        out[i] = (draw + starts).numpy()
    return out


class RandomKeyframes(StageBase):
    kind = KEYFRAMES
    name = "random"
    version = 1
    requires = (INVERSION,)
    reads_config = ("steps", "batch_size")
    Params = RandomKeyframeParams
    summary = "a uniformly drawn keyframe per chunk of --batch-size frames, new each timestep"

    def estimate_bytes(self, ctx: StageContext) -> int:
        return 8 * ctx.config.steps * -(-len(ctx.frames) // ctx.config.batch_size)

    def frame_evaluations(self, ctx: StageContext) -> int:
        return 0

    def run(self, ctx: StageContext) -> None:
        from tokenflow import create_array, read_timesteps, write_coord

        inv = ctx.inputs[INVERSION]
        timesteps = read_timesteps(inv)
        n = int(inv["latents"].shape[1])
        keyframes = draw_keyframes(n, ctx.config.batch_size, len(timesteps), self.params.seed)
        write_coord(ctx.output, TIMESTEP, timesteps)
        write_coord(ctx.output, CHUNK, range(keyframes.shape[1]))
        create_array(ctx.output, "keyframes", dims=(TIMESTEP, CHUNK), data=keyframes)


@hookimpl
def register_keyframes(register):
    register(RandomKeyframes)
