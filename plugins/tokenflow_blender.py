"""Blender ``tokenflow``: propagate the keyframes' edited tokens to every frame (docs/algorithm.md section 6).

Per timestep, one UNet call per chunk in which every self-attention layer returns, in each
branch, the keyframe outputs gathered through the correspondences and blended:
``out = w T1 + (1 - w) T2``; the block then continues normally. A DDIM step follows.
With ``reuse_keyframes`` (off by default; it departs from the method) the keyframes are left out
of these calls and step with the keyframe call's own prediction.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np

from tokenflow import (
    BLENDER,
    CORRESPONDENCE,
    EDITOR,
    Params,
    StageBase,
    StageError,
    hookimpl,
    opt_in,
)

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from tokenflow import EditStep


@dataclass(frozen=True)
class TokenFlowBlendParams(Params):
    """``weights``: ``reference`` (released: sigmoid of distances to the chunk centres, reading
    from this chunk's and the previous chunk's keyframes) or ``linear`` (the paper: linear
    interpolation between the nearest keyframes before and after the frame).
    ``reuse_keyframes``: a speed option that changes the output (docs/benchmarks.md): the
    propagation calls leave the keyframes out and take their next latents from the keyframe
    call's own prediction instead of propagating into them too, so a step costs 2·N UNet
    frame-evaluations instead of 2·(N+K). Off by default (the method)."""

    weights: Literal["reference", "linear"] = "reference"
    reuse_keyframes: bool = opt_in(False)


def blend_weights(frames, references: np.ndarray, batch_size: int, mode: str) -> np.ndarray:
    """Weight of the first reference keyframe (T1) for each frame; the second gets 1 - w."""
    frames = np.asarray(frames, dtype=np.float64)
    if mode == "reference":
        chunk = np.floor(frames / batch_size)
        p1 = chunk * batch_size + batch_size // 2
        p2 = (chunk - 1) * batch_size + batch_size // 2
        d1, d2 = np.abs(frames - p1), np.abs(frames - p2)
        w = 1.0 / (1.0 + np.exp(-(d2 / (d1 + d2))))
        return np.where(chunk == 0, 1.0, w)
    if mode == "linear":
        prev = references[:, 0].astype(np.float64)
        nxt = references[:, 1].astype(np.float64)
        span = nxt - prev
        safe = np.where(span == 0, 1.0, span)
        return np.where(span == 0, 1.0, (nxt - frames) / safe)
    raise ValueError(f"unknown weights {mode!r}")


def gather(tokens: torch.Tensor, slots: torch.Tensor, index: torch.Tensor, w: torch.Tensor):
    """Blend keyframe tokens (nb, K, S, C) into frames: slots (F, 2), index (F, 2, S), w (F,).

    Returns (nb * F, S, C), branch-major.
    """
    t1 = tokens[:, slots[:, 0, None], index[:, 0]]
    t2 = tokens[:, slots[:, 1, None], index[:, 1]]
    w = w.to(tokens.dtype)[None, :, None, None]
    out = w * t1 + (1 - w) * t2
    return out.reshape(-1, *out.shape[2:])


class TokenFlowBlender(StageBase):
    kind = BLENDER
    name = "tokenflow"
    version = 2  # 2: the loop keeps latents in the standard memory format (resumable bit for bit)
    requires = (CORRESPONDENCE,)
    reads_config = ("steps", "batch_size")
    Params = TokenFlowBlendParams
    summary = "TokenFlow propagation: gather keyframe tokens by NN fields, blend, DDIM step"

    def estimate_bytes(self, ctx) -> int:
        n, h, w = ctx.frames.shape[:3]
        f = ctx.model.vae_scale_factor
        latents = 4 * ctx.model.unet.config.in_channels * (h // f) * (w // f)
        return n * (ctx.config.steps * latents + h * w * 3)

    def frame_evaluations(self, ctx) -> int:
        """The propagation calls: every frame (but the keyframes with ``reuse_keyframes``) in
        the editor's branches at every step it runs; none after an editor that does not
        propagate."""
        editor = ctx.stages.get(EDITOR)
        if editor is None or not getattr(editor, "propagates", True):
            return 0
        n, steps = len(ctx.frames), ctx.config.steps
        frames = n - -(-n // ctx.config.batch_size) if self.params.reuse_keyframes else n
        step_branches = getattr(editor, "step_branches", None)
        branches = step_branches(steps) if step_branches is not None else [2] * steps
        return frames * sum(branches)

    def upstream_params(self, config) -> dict:
        refs = "chunk" if self.params.weights == "reference" else "nearest"
        return {CORRESPONDENCE: {"references": refs}}

    def blend_step(self, step: EditStep, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        import torch

        run = step.run
        corr = run.correspondence
        if corr is None:
            raise StageError("the tokenflow blender needs a correspondence store")
        slot_of = {f: j for j, f in enumerate(step.keyframes)}
        new = torch.empty_like(step.latents)
        device = step.latents.device
        reuse = self.params.reuse_keyframes
        if reuse:  # the keyframes step with their own prediction from the keyframe call
            if step.keyframe_output is None:
                raise StageError("reuse_keyframes needs the keyframes' model output of this step")
            x = step.latents[step.keyframes]
            new[step.keyframes] = step.ddim(step.keyframe_output.to(x), x)
        for group in run.call_groups():  # whole chunks, batched for the UNet
            frames = [f for f in group if f not in slot_of] if reuse else group
            if not frames:
                continue
            refs = corr.references(step.index, frames)
            try:
                slots = torch.tensor([[slot_of[int(r)] for r in row] for row in refs], device=device)
            except KeyError as exc:
                raise StageError(f"reference frame {exc} is not a keyframe of this step") from None
            w = torch.from_numpy(blend_weights(frames, refs, run.batch_size, self.params.weights))
            w = w.to(device)

            def provide(layer: str, frames=frames, slots=slots, w=w) -> torch.Tensor | None:
                if layer not in tokens:
                    return None
                index = corr.index(step.index, layer, frames).to(device)
                return gather(tokens[layer], slots, index, w)

            x = step.latents[frames]
            output = run.editor.predict(step, frames, x, provide=provide)
            new[frames] = step.ddim(output, x)
        return new


@hookimpl
def register_blenders(register):
    register(TokenFlowBlender)
