"""Editors ``sdedit`` (SDEdit on the keyframes, propagated like PnP; docs/algorithm.md,
section 4) and ``sdedit-frames`` (every frame on its own, no propagation: the baseline for
comparisons).

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
from typing import TYPE_CHECKING

from tokenflow import (
    FEATURES,
    INVERSION,
    KeyframeEditor,
    TextParams,
    check_strength,
    hookimpl,
    sdedit_steps,
    strength_first_step,
)

if TYPE_CHECKING:  # pragma: no cover
    from tokenflow import EditRun


@dataclass(frozen=True)
class SDEditParams(TextParams):
    """``prompt``: the target prompt; ``negative_prompt``: the unconditional branch's text;
    ``guidance_scale``: CFG scale; ``strength``: the fraction of the editing grid that runs, from
    the noise level it starts at (1.0 starts from the fully inverted noise); ``cfg_from`` /
    ``cfg_until``: the guidance window (``TextParams``)."""

    strength: float = 0.9

    def __post_init__(self) -> None:
        super().__post_init__()
        check_strength(self.strength)


class SDEditEditor(KeyframeEditor):
    """The keyframe editor with nothing injected, starting later on the grid."""

    name = "sdedit"
    version = 1
    Params = SDEditParams
    summary = "SDEdit on keyframes (noise to a strength, denoise; no injection), propagated"

    def first_step(self, run: EditRun) -> int:
        return strength_first_step(run, self.params.strength, self.name)

    def skipped_steps(self, steps: int) -> int:
        return sdedit_steps(steps, self.params.strength)[0]


class SDEditFramesEditor(SDEditEditor):
    """Per-frame SDEdit: every frame denoised on its own from the same start, no extended
    attention, no propagation (the SDEdit baseline for comparisons)."""

    name = "sdedit-frames"
    requires = (INVERSION, FEATURES)
    summary = "per-frame SDEdit, no propagation (the baseline for comparisons)"
    propagates = False
    extended = False


@hookimpl
def register_editors(register):
    register(SDEditEditor)
    register(SDEditFramesEditor)
