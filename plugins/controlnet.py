"""Editor ``controlnet``: PnP or SDEdit on the keyframes plus a diffusers ``ControlNetModel``.

Every UNet call of the editing loop (the keyframes' joint edit and the propagation calls of the
blender) also gets the ControlNet's residuals, computed from the same noisy latents, timestep and
text, and from each frame's control image. Control images come from a control extractor
(``-o control canny``; others are registered by plugins through
``register_control_extractors``) applied to the source frames at the working resolution. The
ControlNet acts on both CFG branches with ``control_scale`` at every step.

``mode pnp`` (default) edits as ``pnp`` does (same injection parameters and defaults);
``mode sdedit`` as ``sdedit`` (``strength``; no injection).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from tokenflow import (
    Injection,
    KeyframeEditor,
    ModelError,
    PnPParams,
    StageError,
    check_strength,
    controlnet_key,
    get_extractor,
    hookimpl,
    load_controlnet,
    sdedit_steps,
    strength_first_step,
)

if TYPE_CHECKING:  # pragma: no cover
    from tokenflow import EditRun, EditStep


@dataclass(frozen=True)
class ControlNetParams(PnPParams):
    """PnP's parameters, plus: ``controlnet``: a diffusers ControlNet directory or Hub id (its
    weights' content is part of the cache key; a relative path that is not in the working
    directory is looked up in the model's directory, where a checkpoint may ship ControlNets); ``control``: the control extractor's name;
    ``control_scale``: the ControlNet's conditioning scale; ``mode``: ``pnp`` or ``sdedit``;
    ``strength``: SDEdit's strength (mode ``sdedit`` only); ``cfg_from`` / ``cfg_until``: the
    guidance window (``TextParams``)."""

    controlnet: str = ""
    control: str = "canny"
    control_scale: float = 1.0
    mode: Literal["pnp", "sdedit"] = "pnp"
    strength: float = 0.9

    def __post_init__(self) -> None:
        super().__post_init__()
        check_strength(self.strength)
        if self.control_scale < 0:
            raise ValueError("control_scale must be >= 0")


class ControlNetEditor(KeyframeEditor):
    name = "controlnet"
    version = 1
    Params = ControlNetParams
    summary = "PnP or SDEdit on keyframes guided by a ControlNet (-o controlnet DIR -o control canny)"

    @property
    def sdedit(self) -> bool:
        return self.params.mode == "sdedit"

    def check(self, pm) -> None:
        """Before the model loads: a ControlNet is named and the control extractor exists."""
        if not self.params.controlnet:
            raise StageError("the controlnet editor needs -o controlnet DIR_OR_HUB_ID")
        get_extractor(pm, self.params.control)

    def key_inputs(self, pm, model) -> dict:
        """The ControlNet weights' content and the extractor's version are inputs of the output."""
        self.check(pm)
        extractor = get_extractor(pm, self.params.control)
        try:
            key = controlnet_key(self.params.controlnet, base=model.root)
        except ModelError as exc:
            raise StageError(str(exc)) from None
        return {"controlnet": key, "control": [extractor.name, extractor.version]}

    def upstream_params(self, config) -> dict:
        return {} if self.sdedit else self.params.feature_needs()

    def injection(self, steps: int) -> Injection:
        return Injection() if self.sdedit else Injection.pnp(self.params, steps)

    def first_step(self, run: EditRun) -> int:
        return strength_first_step(run, self.params.strength, self.name) if self.sdedit else 0

    def skipped_steps(self, steps: int) -> int:
        return sdedit_steps(steps, self.params.strength)[0] if self.sdedit else 0

    def start(self, run: EditRun) -> dict:
        import torch

        state = super().start(run)
        extractor = get_extractor(run.ctx.pm, self.params.control)
        try:
            net = load_controlnet(self.params.controlnet, run.model)
        except ModelError as exc:
            raise StageError(str(exc)) from None
        images = extractor(run.ctx.frames)
        control = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
        state["controlnet"] = net
        state["control"] = control.to(run.model.device, run.model.dtype)
        return state

    def unet_extra(self, step: EditStep, frames: list[int]):
        run = step.run
        net = run.editor_state["controlnet"]
        images = run.editor_state["control"][frames]
        scale = float(self.params.control_scale)

        def residuals(x, t: int, emb) -> dict:
            cond = images.repeat(x.shape[0] // images.shape[0], 1, 1, 1)
            down, mid = net(x, t, encoder_hidden_states=emb, controlnet_cond=cond,
                            conditioning_scale=scale, return_dict=False)
            return {"down_block_additional_residuals": down, "mid_block_additional_residual": mid}

        return residuals


@hookimpl
def register_editors(register):
    register(ControlNetEditor)
