"""Building blocks for editors: text parameters, PnP's injection schedule, and
:class:`KeyframeEditor`, a complete implementation of the :class:`tokenflow.stages.Editor`
protocol that edits the keyframes jointly and lets the blender propagate (docs/algorithm.md,
section 4).

The built-in ``pnp``, ``sdedit`` and ``controlnet`` editors are subclasses that only choose what
is injected (:meth:`KeyframeEditor.injection`), where on the grid the loop starts
(:meth:`KeyframeEditor.first_step`) and what else the UNet gets
(:meth:`KeyframeEditor.unet_extra`). A third-party editor may subclass it the same way, or
implement the protocol from scratch.

Importing this module does not import torch or the editing loop (they load when an edit runs), so
that a plugin subclassing :class:`KeyframeEditor` can be imported, and its parameters checked,
before torch loads.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from tokenflow.params import Params, opt_in
from tokenflow.stages import (
    CORRESPONDENCE,
    EDITOR,
    FEATURES,
    INVERSION,
    KEYFRAMES,
    StageBase,
    StageError,
)

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from tokenflow.editing.loop import EditorOutput, EditRun, EditStep

DEFAULT_NEGATIVE_PROMPT = "ugly, blurry, low res, unrealistic, unaesthetic"
#: Self-attention layers whose queries and keys PnP injects (module-path prefixes), in Stable
#: Diffusion's block layout: every decoder layer but the first at the lowest resolution; none in
#: the encoder or the middle. In a UNet of another layout, :func:`pnp_qk_layers` applies the same
#: rule to its own layers.
PNP_QK_LAYERS: tuple[str, ...] = (
    "up_blocks.1.attentions.1.",
    "up_blocks.1.attentions.2.",
    "up_blocks.2.attentions.0.",
    "up_blocks.2.attentions.1.",
    "up_blocks.2.attentions.2.",
    "up_blocks.3.attentions.0.",
    "up_blocks.3.attentions.1.",
    "up_blocks.3.attentions.2.",
)


def pnp_qk_layers(layers: Sequence[str]) -> list[str]:
    """PnP's rule on any UNet, given its self-attention layers in module order: every layer of the
    decoder (``up_blocks``) but those of its first attention module (the lowest resolution). For
    Stable Diffusion's layout this is :data:`PNP_QK_LAYERS`."""
    decoder = [layer for layer in layers if layer.startswith("up_blocks.")]
    if not decoder:
        return []
    first = ".".join(decoder[0].split(".")[:4]) + "."  # up_blocks.B.attentions.A.
    return [layer for layer in decoder if not layer.startswith(first)]


#: ResNets whose residual branch PnP injects, by default.
PNP_CONV_LAYERS: tuple[str, ...] = ("up_blocks.1.resnets.1",)


@dataclass(frozen=True)
class TextParams(Params):
    """What every text-guided editor takes: ``prompt``, the target prompt; ``negative_prompt``,
    the unconditional branch's text; ``guidance_scale``, the CFG scale; ``cfg_from`` /
    ``cfg_until``: a speed option that changes the output (docs/benchmarks.md): classifier-free
    guidance only on the editing steps from ``int(cfg_from * steps)`` up to (not including)
    ``int(cfg_until * steps)``, counted from the noisiest; the other steps run the conditional
    branch alone, with half the UNet work. The defaults 0 and 1 guide every step (the method)."""

    prompt: str = ""
    negative_prompt: str = DEFAULT_NEGATIVE_PROMPT
    guidance_scale: float = 7.5
    cfg_from: float = opt_in(0.0)
    cfg_until: float = opt_in(1.0)

    def __post_init__(self) -> None:
        if not 0.0 <= self.cfg_from <= self.cfg_until <= 1.0:
            raise ValueError(f"cfg_from {self.cfg_from} and cfg_until {self.cfg_until} must "
                             "satisfy 0 <= cfg_from <= cfg_until <= 1")


@dataclass(frozen=True)
class PnPParams(TextParams):
    """``prompt``: the target prompt; ``negative_prompt``: the unconditional branch's text;
    ``guidance_scale``: CFG scale; ``pnp_attn_t`` / ``pnp_f_t``: fractions of the editing steps,
    from the noisiest, with query/key and conv injection; ``conv_layers``: the ResNets whose
    residual is injected (docs/algorithm.md: ``up_blocks.1.resnets.1``); ``cfg_from`` /
    ``cfg_until``: the guidance window (:class:`TextParams`)."""

    pnp_attn_t: float = 0.5
    pnp_f_t: float = 0.8
    conv_layers: tuple[str, ...] = PNP_CONV_LAYERS

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("pnp_attn_t", "pnp_f_t"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1")

    def feature_needs(self) -> dict[str, dict[str, Any]]:
        """What the feature store must keep for this injection: the conv residuals of
        ``conv_layers`` for the first ``pnp_f_t`` of the steps (an ``upstream_params`` value)."""
        return {FEATURES: {"conv_layers": self.conv_layers, "conv_t": self.pnp_f_t}}


@dataclass(frozen=True)
class Injection:
    """What an editor injects from the source branch, and for how many of the first steps.

    ``qk_layers``: module-path prefixes of the self-attention layers whose queries and keys are
    replaced by the source's, during the first ``qk_steps`` steps (keyframe calls only);
    ``conv_layers``: ResNets whose residual is replaced by the source's during the first
    ``conv_steps`` steps (keyframe and propagation calls). ``qk_layers`` equal to
    :data:`PNP_QK_LAYERS` means PnP's layers of whatever UNet runs (:func:`pnp_qk_layers`).
    """

    qk_layers: tuple[str, ...] = ()
    qk_steps: int = 0
    conv_layers: tuple[str, ...] = ()
    conv_steps: int = 0

    @classmethod
    def pnp(cls, params: PnPParams, steps: int) -> Injection:
        """PnP's schedule on a grid of ``steps``: q/k in :data:`PNP_QK_LAYERS` for
        ``int(pnp_attn_t * steps)`` steps, conv residuals for ``int(pnp_f_t * steps)``."""
        return cls(qk_layers=PNP_QK_LAYERS, qk_steps=int(params.pnp_attn_t * steps),
                   conv_layers=tuple(params.conv_layers), conv_steps=int(params.pnp_f_t * steps))


def check_strength(strength: float) -> None:
    """``ValueError`` unless ``0 < strength <= 1`` (for a Params ``__post_init__``)."""
    if not 0.0 < strength <= 1.0:
        raise ValueError("strength must be in (0, 1]")


def sdedit_steps(steps: int, strength: float) -> tuple[int, int]:
    """``(first, n)``: the grid index an SDEdit-style loop starts at and how many steps it runs
    (diffusers' img2img convention: ``n = min(int(steps * strength), steps)``)."""
    n = min(int(steps * strength), steps)
    return steps - n, n


def strength_first_step(run: EditRun, strength: float, editor: str) -> int:
    """The grid index a loop at ``strength`` starts at, or a StageError if it would run none."""
    first, n = sdedit_steps(len(run.timesteps), strength)
    if n == 0:
        raise StageError(f"{editor}: strength {strength} runs no step of a "
                         f"{len(run.timesteps)}-step grid; raise it or --steps")
    return first


def guided(output: torch.Tensor, scale: float) -> torch.Tensor:
    """CFG on a branch-major [uncond, cond] batch."""
    uncond, cond = output.chunk(2)
    return uncond + scale * (cond - uncond)


class KeyframeEditor(StageBase):
    """Edits the K keyframes of a step jointly (one UNet call, branches [uncond, cond], extended
    attention across the keyframes of a branch), with the source injection of
    :meth:`injection`, and returns their self-attention outputs for the blender to propagate.
    :meth:`predict` is the call the ``tokenflow`` blender makes on every chunk of frames.

    With ``propagates = False`` (the per-frame baselines) every frame is edited on its own, in
    chunks, with no extended attention, and the editor takes the DDIM step itself.

    Subclasses set ``name``, ``version``, ``Params`` (with :class:`TextParams`' fields) and
    ``summary``, and override what differs: :meth:`injection`, :meth:`first_step`,
    :meth:`unet_extra`, :meth:`start`.
    """

    kind = EDITOR
    #: The version of this shared machinery. Subclasses set their own ``version``; one whose
    #: output depends on this code may hash ``KeyframeEditor.version`` through ``key_inputs``.
    version = 1
    requires = (INVERSION, FEATURES, KEYFRAMES, CORRESPONDENCE)
    reads_config = ("steps", "batch_size")
    Params = TextParams
    #: Whether the blender propagates this editor's keyframe tokens to all frames.
    propagates: ClassVar[bool] = True
    #: Whether the keyframes attend to each other (extended attention) in the keyframe call.
    extended: ClassVar[bool] = True

    # -- what subclasses choose ---------------------------------------------------------------

    def injection(self, steps: int) -> Injection:
        """What is injected on a grid of ``steps`` timesteps; nothing by default."""
        return Injection()

    def first_step(self, run: EditRun) -> int:
        """The grid index the loop starts at (0: from the fully inverted noise)."""
        return 0

    def skipped_steps(self, steps: int) -> int:
        """How many steps of a ``steps``-step grid the loop skips before :meth:`first_step`,
        known before the run (for the plan's count of UNet work): 0 by default. A subclass
        that overrides ``first_step`` overrides this to match."""
        return 0

    def unet_extra(self, step: EditStep, frames: list[int]):
        """Extra UNet inputs for a call on ``frames`` (``EditRun.call_unet``'s ``extra``), or
        None. The ControlNet editor returns its residuals."""
        return None

    # -- the Editor protocol ------------------------------------------------------------------

    def estimate_bytes(self, ctx) -> int:
        n, h, w = ctx.frames.shape[:3]
        k = n if not self.propagates else -(-n // ctx.config.batch_size)
        f = ctx.model.vae_scale_factor
        latents = 4 * ctx.model.unet.config.in_channels * (h // f) * (w // f)
        return ctx.config.steps * k * (latents + 8)

    def step_branches(self, steps: int) -> list[int]:
        """The branches of this editor's UNet calls at each index of a ``steps``-step grid: 2
        where classifier-free guidance runs, 1 outside the ``cfg_from`` .. ``cfg_until`` window
        (the conditional branch alone), 0 on the steps the loop skips. The blender's calls
        through :meth:`predict` have the same branches."""
        first = self.skipped_steps(steps)
        return [0 if i < first else 2 if self.guided_at(i, steps) else 1 for i in range(steps)]

    def frame_evaluations(self, ctx) -> int:
        """The keyframe calls (every frame's calls when the editor does not propagate), and the
        source passes that read the injected queries and keys when the feature store keeps no
        tokens."""
        n, steps = len(ctx.frames), ctx.config.steps
        k = n if not self.propagates else -(-n // ctx.config.batch_size)
        branches = self.step_branches(steps)
        evals = k * sum(branches)
        features = ctx.stages.get(FEATURES)
        if features is not None and not getattr(features.params, "store_tokens", True):
            inject = self.injection(steps)
            if inject.qk_layers:
                evals += k * sum(1 for i in range(min(steps, inject.qk_steps)) if branches[i])
        return evals

    def conv_layers(self, run: EditRun) -> Sequence[str]:
        return self.injection(len(run.timesteps)).conv_layers

    def start(self, run: EditRun) -> dict[str, Any]:
        """Per-run state: the text embeddings and the injected layers present in this UNet."""
        inject = self.injection(len(run.timesteps))
        if run.features.conv_steps < inject.conv_steps:
            raise StageError(
                f"the feature store keeps conv residuals for {run.features.conv_steps} steps; "
                f"{self.name} injects them for {inject.conv_steps}"
            )
        if tuple(inject.qk_layers) == PNP_QK_LAYERS:
            qk = pnp_qk_layers(run.layers)
        else:
            qk = [layer for layer in run.layers if inject.qk_layers and layer.startswith(inject.qk_layers)]
        if inject.qk_layers and not qk:
            raise StageError(f"the UNet has none of {self.name}'s injection layers "
                             f"({', '.join(p.rstrip('.') for p in inject.qk_layers)})")
        text = run.model.encode_prompts([self.params.negative_prompt, self.params.prompt])
        return {"text": text, "qk_layers": qk, "injection": inject}

    def initial_latents(self, run: EditRun) -> torch.Tensor:
        from tokenflow.editing.loop import start_latents

        return start_latents(run, run.timesteps[self.first_step(run)])

    def injections(self, step: EditStep, frames: list[int], *,
                   qk: bool = True) -> tuple[dict, dict]:
        """The source queries/keys (``inject``) and conv residuals (``conv``) for ``frames`` at
        this step, as ``EditRun.call_unet`` takes them; ``qk=False`` skips reading the former
        (propagation calls inject no queries or keys)."""
        run, i = step.run, step.index
        inject: Injection = run.editor_state["injection"]
        tokens = {}
        if qk and i < inject.qk_steps:
            tokens = {layer: run.features.tokens(i, layer, frames)
                      for layer in run.editor_state["qk_layers"]}
        conv = run.conv_inputs(i, frames, inject.conv_layers) if i < inject.conv_steps else {}
        return tokens, conv

    def guides(self, step: EditStep) -> bool:
        """Whether this step uses classifier-free guidance (branches [uncond, cond]) or, outside
        the ``cfg_from`` .. ``cfg_until`` window of :class:`TextParams`, the conditional branch
        alone."""
        return self.guided_at(step.index, len(step.run.timesteps))

    def guided_at(self, index: int, steps: int) -> bool:
        """Whether index ``index`` of a ``steps``-step grid is in the guidance window."""
        lo = int(getattr(self.params, "cfg_from", 0.0) * steps)
        hi = int(getattr(self.params, "cfg_until", 1.0) * steps)
        return lo <= index < hi

    def call_branches(self, step: EditStep, latents: torch.Tensor, frames: list[int],
                      **instructions) -> torch.Tensor:
        """One UNet call on ``frames`` (``latents``) in the branches of this step, returning the
        model output to integrate: CFG of [uncond, cond], or the cond branch alone outside the
        guidance window. ``instructions`` are ``EditRun.call_unet``'s keywords."""
        run = step.run
        guide = self.guides(step)
        text = run.editor_state["text"]
        out = run.call_unet(latents, step.timestep, text if guide else text[1:],
                            n_branches=2 if guide else 1,
                            extra=self.unet_extra(step, frames), **instructions)
        return guided(out, self.params.guidance_scale) if guide else out

    def edit_step(self, step: EditStep) -> EditorOutput:
        from tokenflow.editing.loop import EditorOutput

        if not self.propagates:
            return self.edit_frames(step)
        frames = step.keyframes
        inject, conv = self.injections(step, frames)
        keep: dict[str, torch.Tensor] = {}
        output = self.call_branches(step, step.latents[frames], frames, extended=self.extended,
                                    inject=inject, conv=conv, keep=keep)
        k = len(frames)
        tokens = {layer: v.reshape(-1, k, *v.shape[1:]) for layer, v in keep.items()}
        return EditorOutput(tokens=tokens, model_output=output)

    def predict(self, step: EditStep, frames: list[int], latents: torch.Tensor, *,
                provide=None) -> torch.Tensor:
        """Guided model output for ``frames`` with conv injection and the given propagation."""
        _, conv = self.injections(step, frames, qk=False)
        return self.call_branches(step, latents, frames, conv=conv, provide=provide)

    def edit_frames(self, step: EditStep) -> EditorOutput:
        """Every frame edited on its own (no extended attention, no propagation; the UNet takes
        whole chunks, batched), then a DDIM step: what ``edit_step`` does when ``propagates`` is
        False."""
        import torch

        from tokenflow.editing.loop import EditorOutput

        outputs, latents = [], []
        for frames in step.run.call_groups():
            inject, conv = self.injections(step, frames)
            x = step.latents[frames]
            g = self.call_branches(step, x, frames, inject=inject, conv=conv)
            outputs.append(g)
            latents.append(step.ddim(g, x))
        return EditorOutput(tokens={}, model_output=torch.cat(outputs), latents=torch.cat(latents))


__all__ = ["DEFAULT_NEGATIVE_PROMPT", "Injection", "KeyframeEditor", "PNP_CONV_LAYERS",
           "PNP_QK_LAYERS", "PnPParams", "pnp_qk_layers", "TextParams", "check_strength", "guided", "sdedit_steps",
           "strength_first_step"]
