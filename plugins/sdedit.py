"""Editors ``sdedit`` (SDEdit on the keyframes, propagated like PnP; ALGORITHM.md section 4) and
``sdedit-frames`` (every frame on its own, no propagation: the baseline for comparisons).

No injection at all: the keyframes are denoised jointly with extended attention from the source
latents noised to a level set by ``strength``, and the blender propagates their tokens to every
frame as for ``pnp``.

Which timesteps run (the convention of diffusers' img2img pipelines): with an editing grid of
``steps`` timesteps ``t_0 > t_1 > ... > t_{steps-1}``, ``n = min(int(steps * strength), steps)``
steps run, starting at index ``first = steps - n``. The loop starts from the source's clean
latents noised to level ``t_first`` with the inverted noise, and runs ``t_first ... t_{steps-1}``.
With 50 steps and the default strength 0.9 that is 45 steps, from ``t_5`` (timestep 881 on SD's
1000-step schedule) down to ``t_49`` (timestep 1).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tokenflow_plugins.pnp import PnPEditor, PnPFramesEditor, TextParams

from tokenflow import (
    FEATURES,
    INVERSION,
    StageError,
    hookimpl,
)
from tokenflow.loop import EditRun, start_latents


def sdedit_steps(steps: int, strength: float) -> tuple[int, int]:
    """``(first, n)``: the grid index SDEdit starts at and how many steps it runs."""
    n = min(int(steps * strength), steps)
    return steps - n, n


def sdedit_first_step(run: EditRun, strength: float, editor: str) -> int:
    """The grid index an SDEdit loop starts at, or a StageError if it would run no step."""
    first, n = sdedit_steps(len(run.timesteps), strength)
    if n == 0:
        raise StageError(f"{editor}: strength {strength} runs no step of a "
                         f"{len(run.timesteps)}-step grid; raise it or --steps")
    return first


def check_strength(strength: float) -> None:
    if not 0.0 < strength <= 1.0:
        raise ValueError("strength must be in (0, 1]")


@dataclass(frozen=True)
class SDEditParams(TextParams):
    """``prompt``: the target prompt; ``negative_prompt``: the unconditional branch's text;
    ``guidance_scale``: CFG scale; ``strength``: the fraction of the editing grid that runs, from
    the noise level it starts at (1.0 starts from the fully inverted noise)."""

    strength: float = 0.9

    def __post_init__(self) -> None:
        check_strength(self.strength)


class SDEditEditor(PnPEditor):
    """PnP's loop methods with nothing injected (kind, inputs and propagation as PnP's)."""

    name = "sdedit"
    version = 1  # its own, independent of PnP's
    Params = SDEditParams
    summary = "SDEdit on keyframes (noise to a strength, denoise; no injection), propagated"

    def upstream_params(self, config) -> dict:
        return {}  # any feature store will do: SDEdit injects nothing

    def conv_layers(self, run: EditRun) -> tuple[str, ...]:
        return ()

    def qk_steps(self, steps: int) -> int:
        return 0

    def conv_steps(self, steps: int) -> int:
        return 0

    def first_step(self, run: EditRun) -> int:
        return sdedit_first_step(run, self.params.strength, self.name)

    def start(self, run: EditRun) -> dict:
        """Text embeddings only; ``edit_step`` and ``predict`` are PnP's with nothing injected."""
        text = run.model.encode_prompts([self.params.negative_prompt, self.params.prompt])
        return {"text": text, "qk_layers": []}

    def initial_latents(self, run: EditRun) -> torch.Tensor:
        return start_latents(run, run.timesteps[self.first_step(run)])


class SDEditFramesEditor(SDEditEditor):
    """Per-frame SDEdit: every frame denoised on its own from the same start, no extended
    attention, no propagation (the SDEdit baseline for comparisons)."""

    name = "sdedit-frames"
    requires = (INVERSION, FEATURES)
    summary = "per-frame SDEdit, no propagation (the baseline for comparisons)"
    propagates = False
    extended = False
    edit_step = PnPFramesEditor.edit_step


@hookimpl
def register_editors(register):
    register(SDEditEditor)
    register(SDEditFramesEditor)
