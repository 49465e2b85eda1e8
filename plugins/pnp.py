"""Editors ``pnp`` (keyframes edited jointly, then propagated) and ``pnp-frames`` (the per-frame
PnP baseline with no propagation). ALGORITHM.md section 4.

``pnp``: one UNet call per timestep on the K keyframes, branches [uncond, cond]; extended attention
across the keyframes of a branch in every self-attention layer; PnP query/key injection from the
source tokens in the decoder layers during the first ``pnp_attn_t`` of the steps; conv injection
of the source residual in ``up_blocks.1.resnets.1`` during the first ``pnp_f_t``; CFG.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from tokenflow import (
    CORRESPONDENCE,
    EDITOR,
    FEATURES,
    INVERSION,
    KEYFRAMES,
    Params,
    StageBase,
    StageError,
    hookimpl,
)
from tokenflow.loop import EditorOutput, EditRun, EditStep, start_latents

DEFAULT_NEGATIVE_PROMPT = "ugly, blurry, low res, unrealistic, unaesthetic"
#: Self-attention layers whose queries and keys PnP injects (module-path prefixes).
QK_LAYERS = (
    "up_blocks.1.attentions.1.",
    "up_blocks.1.attentions.2.",
    "up_blocks.2.attentions.0.",
    "up_blocks.2.attentions.1.",
    "up_blocks.2.attentions.2.",
    "up_blocks.3.attentions.0.",
    "up_blocks.3.attentions.1.",
    "up_blocks.3.attentions.2.",
)
#: ResNets whose residual branch PnP injects.
CONV_LAYERS = ("up_blocks.1.resnets.1",)


@dataclass(frozen=True)
class TextParams(Params):
    """What every text-guided editor takes: ``prompt``, the target prompt; ``negative_prompt``,
    the unconditional branch's text; ``guidance_scale``, the CFG scale."""

    prompt: str = ""
    negative_prompt: str = DEFAULT_NEGATIVE_PROMPT
    guidance_scale: float = 7.5


@dataclass(frozen=True)
class PnPParams(TextParams):
    """``prompt``: the target prompt; ``negative_prompt``: the unconditional branch's text;
    ``guidance_scale``: CFG scale; ``pnp_attn_t`` / ``pnp_f_t``: fractions of the editing steps,
    from the noisiest, with query/key and conv injection; ``conv_layers``: the ResNets whose
    residual is injected (ALGORITHM.md: ``up_blocks.1.resnets.1``)."""

    pnp_attn_t: float = 0.5
    pnp_f_t: float = 0.8
    conv_layers: tuple[str, ...] = CONV_LAYERS

    def __post_init__(self) -> None:
        for name in ("pnp_attn_t", "pnp_f_t"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1")


def guided(output: torch.Tensor, scale: float) -> torch.Tensor:
    """CFG on a branch-major [uncond, cond] batch."""
    uncond, cond = output.chunk(2)
    return uncond + scale * (cond - uncond)


class PnPEditor(StageBase):
    kind = EDITOR
    name = "pnp"
    version = 1
    requires = (INVERSION, FEATURES, KEYFRAMES, CORRESPONDENCE)
    reads_config = ("steps", "batch_size")
    Params = PnPParams
    summary = "Plug-and-Play on keyframes with extended attention (TokenFlow's editor)"
    #: Whether the blender propagates this editor's keyframe tokens to all frames.
    propagates: ClassVar[bool] = True
    extended: ClassVar[bool] = True

    def estimate_bytes(self, ctx) -> int:
        n, h, w = ctx.frames.shape[:3]
        k = n if not self.propagates else -(-n // ctx.config.batch_size)
        f = ctx.model.vae_scale_factor
        latents = 4 * ctx.model.unet.config.in_channels * (h // f) * (w // f)
        return ctx.config.steps * k * (latents + 8)

    def upstream_params(self, config) -> dict:
        return {FEATURES: {"conv_layers": self.params.conv_layers, "conv_t": self.params.pnp_f_t}}

    def conv_layers(self, run: EditRun) -> tuple[str, ...]:
        return self.params.conv_layers

    def qk_steps(self, steps: int) -> int:
        return int(self.params.pnp_attn_t * steps)

    def conv_steps(self, steps: int) -> int:
        return int(self.params.pnp_f_t * steps)

    def start(self, run: EditRun) -> dict:
        """Per-run state: text embeddings and the injection layers present in this UNet."""
        steps = len(run.timesteps)
        if run.features.conv_steps < self.conv_steps(steps):
            raise StageError(
                f"the feature store keeps conv residuals for {run.features.conv_steps} steps; "
                f"pnp_f_t={self.params.pnp_f_t} needs {self.conv_steps(steps)}"
            )
        qk = [layer for layer in run.layers if layer.startswith(QK_LAYERS)]
        if not qk:
            raise StageError("the UNet has none of PnP's injection layers (up_blocks.1-3)")
        text = run.model.encode_prompts([self.params.negative_prompt, self.params.prompt])
        return {"text": text, "qk_layers": qk}

    def initial_latents(self, run: EditRun) -> torch.Tensor:
        return start_latents(run, run.timesteps[0])

    def unet_extra(self, step: EditStep, frames: list[int]):
        """Extra UNet inputs for a call on ``frames`` (``EditRun.call_unet``'s ``extra``); none
        here. The ControlNet editor returns its residuals."""

    def _injections(self, step: EditStep, frames: list[int]) -> tuple[dict, dict]:
        run, i = step.run, step.index
        steps = len(run.timesteps)
        inject = {}
        if i < self.qk_steps(steps):
            inject = {layer: run.features.tokens(i, layer, frames)
                      for layer in run.editor_state["qk_layers"]}
        conv = (run.conv_inputs(i, frames, self.params.conv_layers)
                if i < self.conv_steps(steps) else {})
        return inject, conv

    def edit_step(self, step: EditStep) -> EditorOutput:
        run, frames = step.run, step.keyframes
        inject, conv = self._injections(step, frames)
        keep: dict[str, torch.Tensor] = {}
        out = run.call_unet(step.latents[frames], step.timestep, run.editor_state["text"],
                            n_branches=2, extended=self.extended, inject=inject, conv=conv,
                            keep=keep, extra=self.unet_extra(step, frames))
        k = len(frames)
        tokens = {layer: v.reshape(2, k, *v.shape[1:]) for layer, v in keep.items()}
        return EditorOutput(tokens=tokens, model_output=guided(out, self.params.guidance_scale))

    def predict(self, step: EditStep, frames: list[int], latents: torch.Tensor, *,
                provide=None) -> torch.Tensor:
        """Guided model output for ``frames`` with conv injection and the given propagation."""
        run = step.run
        _, conv = self._injections(step, frames)
        out = run.call_unet(latents, step.timestep, run.editor_state["text"], n_branches=2,
                            conv=conv, provide=provide, extra=self.unet_extra(step, frames))
        return guided(out, self.params.guidance_scale)


class PnPFramesEditor(PnPEditor):
    """Per-frame PnP: every frame edited on its own, no extended attention, no propagation."""

    name = "pnp-frames"
    requires = (INVERSION, FEATURES)
    summary = "per-frame Plug-and-Play, no propagation (the baseline for comparisons)"
    propagates = False
    extended = False

    def edit_step(self, step: EditStep) -> EditorOutput:
        run = step.run
        outputs, latents = [], []
        for frames in run.chunks():
            inject, conv = self._injections(step, frames)
            x = step.latents[frames]
            out = run.call_unet(x, step.timestep, run.editor_state["text"], n_branches=2,
                                inject=inject, conv=conv, extra=self.unet_extra(step, frames))
            g = guided(out, self.params.guidance_scale)
            outputs.append(g)
            latents.append(step.ddim(g, x))
        return EditorOutput(tokens={}, model_output=torch.cat(outputs), latents=torch.cat(latents))


@hookimpl
def register_editors(register):
    register(PnPEditor)
    register(PnPFramesEditor)
