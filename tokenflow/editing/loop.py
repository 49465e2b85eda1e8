"""The per-timestep editing loop: keyframes -> editor -> blender, every step.

The editor and the blender are coupled (the editor edits latents the blender produced at the
previous step), so the loop writes both stores in one run. The source branch is never integrated:
everything it provides comes from the feature store.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import zarr

from tokenflow.editing.attention import AttentionState, tokenflow_attention
from tokenflow.cache.store import create_array, write_coord
from tokenflow.cache.layouts import CorrespondenceReader, FeatureReader, read_timesteps
from tokenflow.editing.lockstep import unet_call
from tokenflow.editing.source import SourcePass
from tokenflow.memory import release_memory
from tokenflow.stages import (
    BLENDER,
    CORRESPONDENCE,
    EDITOR,
    FEATURES,
    FRAME,
    HEIGHT,
    INVERSION,
    KEYFRAME,
    KEYFRAMES,
    LATENT_DIMS,
    RGB,
    TIMESTEP,
    WIDTH,
    StageContext,
    StageError,
)


#: Default bound on one piece of extended attention's matrix (``EditRun.attention_bytes``).
ATTENTION_BYTES = 256 * 2**20


@dataclass
class EditorOutput:
    """What an editor returns for one timestep.

    ``tokens``: per self-attention layer, the keyframes' attention outputs, shaped
    ``(n_branches, K, S, C)``; ``model_output``: the keyframes' guided prediction ``(K, c, h, w)``
    (kept in the editor's store for inspection). An editor that does not propagate
    (``propagates = False``) edits every frame itself and returns the next ``latents`` of all
    frames; the blender is then not called.

    Optional editor methods the loop calls when present: ``first_step(run) -> int`` (the index on
    the editing grid where the loop starts, default 0; SDEdit starts later) and
    ``finish_step(step, latents) -> latents`` (post-processes every frame's next latents after
    the blender's step, e.g. to keep the source outside a region).
    """

    tokens: dict[str, torch.Tensor]
    model_output: torch.Tensor
    latents: torch.Tensor | None = None


@dataclass
class EditRun:
    """Everything that stays fixed during one editing loop."""

    ctx: StageContext
    editor: Any
    blender: Any
    timesteps: list[int]
    scheduler: Any
    features: FeatureReader
    correspondence: CorrespondenceReader | None
    keyframes: np.ndarray
    x0: torch.Tensor
    x_max: torch.Tensor
    t_max: int
    state: AttentionState = field(default_factory=AttentionState)
    layers: list[str] = field(default_factory=list)
    editor_state: Any = None
    #: The editor's store being written: an editor may add arrays of its own (with named dims,
    #: see ``tokenflow.cache.store.create_array``), e.g. a mask per timestep.
    editor_out: zarr.Group | None = None
    unet_frames: int = 0
    unet_calls: int = 0

    @property
    def model(self):
        return self.ctx.model

    @property
    def n_frames(self) -> int:
        return int(self.x0.shape[0])

    @property
    def batch_size(self) -> int:
        return self.ctx.config.batch_size

    def chunks(self) -> list[list[int]]:
        """Frame indices of every chunk of ``batch_size`` consecutive frames."""
        n, b = self.n_frames, self.batch_size
        return [list(range(s, min(s + b, n))) for s in range(0, n, b)]

    @property
    def unet_batch(self) -> int:
        """Frames per UNet call (per branch): the run's ``unet_batch`` knob, which changes memory
        use and speed, not what is computed (default: the chunk size)."""
        return max(1, int(self.ctx.options.get("unet_batch", self.batch_size)))

    @property
    def attention_bytes(self) -> int:
        """Extended attention takes its queries in pieces whose attention matrix stays under
        this many bytes (the run's ``attention_bytes`` knob; memory, not results)."""
        return int(self.ctx.options.get("attention_bytes", ATTENTION_BYTES))

    def call_groups(self) -> list[list[int]]:
        """Frame indices per UNet call for work done frame by frame (propagation, per-frame
        editing): whole chunks, as many as fit in :attr:`unet_batch` (at least one)."""
        per_call = max(1, self.unet_batch // self.batch_size)
        chunks = self.chunks()
        return [[f for chunk in chunks[s:s + per_call] for f in chunk]
                for s in range(0, len(chunks), per_call)]

    def alpha(self, t: int) -> torch.Tensor:
        return self.scheduler.alphas_cumprod[int(t)].to(torch.float32)

    def call_unet(
        self,
        latents: torch.Tensor,
        t: int,
        text: torch.Tensor,
        *,
        n_branches: int,
        extended: bool = False,
        inject: dict[str, torch.Tensor] | None = None,
        conv: dict[str, torch.Tensor] | None = None,
        provide: Callable[[str], torch.Tensor | None] | None = None,
        keep: dict[str, torch.Tensor] | None = None,
        extra: Callable[[torch.Tensor, int, torch.Tensor], dict[str, Any]] | None = None,
    ) -> torch.Tensor:
        """One UNet call on ``n_branches`` x frames (branch-major), with the given instructions.
        An extended call on more frames than :attr:`unet_batch` runs as one UNet pass per
        batch, in lockstep (:mod:`tokenflow.editing.lockstep`): the same result, to float
        rounding, with the memory of a UNet batch.

        ``latents`` has the frames once (F, c, h, w); it is repeated for every branch. ``text``
        holds one embedding per branch (n_branches, T, D). ``extra(x, t, emb)`` may return more
        keyword arguments for the UNet, computed from its batched inputs (ControlNet residuals,
        for example). Returns the raw model output, ``(n_branches * F, c, h, w)``.
        """
        model, state = self.model, self.state
        frames = latents.shape[0]
        x = latents.to(model.device, model.dtype).repeat(n_branches, 1, 1, 1)
        emb = text.to(model.device, model.dtype).repeat_interleave(frames, dim=0)
        state.reset()
        state.n_branches = n_branches
        state.extended = extended
        state.inject = {k: v.to(model.device) for k, v in (inject or {}).items()}
        state.conv = {k: v.to(model.device) for k, v in (conv or {}).items()}
        state.provide = provide
        state.keep = keep
        state.attention_bytes = self.attention_bytes
        try:
            out = unet_call(model.unet, state, x, t, emb, unet_batch=self.unet_batch, extra=extra)
        finally:
            state.reset()
            release_memory()  # the call's working set, before the next call allocates its own
        self.unet_frames += x.shape[0]
        self.unet_calls += 1
        return out.to(torch.float32)

    def conv_inputs(self, step: int, frames: Sequence[int], paths: Sequence[str]) -> dict:
        """Source conv residuals of ``paths`` for ``frames`` at ``step`` (where stored)."""
        return {p: self.features.conv(step, p, frames) for p in paths
                if self.features.has_conv(step, p)}


@dataclass
class EditStep:
    """One timestep of the loop, as the editor and the blender see it."""

    run: EditRun
    index: int
    timestep: int
    latents: torch.Tensor  # (N, c, h, w) current edited latents, float32, on device
    keyframes: list[int]
    #: The editor's ``model_output`` for :attr:`keyframes` at this step (set by the loop before
    #: the blender runs; a blender may integrate the keyframes with it instead of predicting
    #: them again).
    keyframe_output: torch.Tensor | None = None

    def ddim(self, model_output: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        """One deterministic DDIM step (eta 0) from this timestep to the next."""
        return self.run.scheduler.step(
            model_output, self.timestep, latents, eta=0.0, return_dict=False
        )[0]


def _open_inputs(ctx: StageContext) -> dict[str, Any]:
    """The upstream stores. Without keyframes (an editor that does not propagate), every frame
    is a keyframe; without correspondences there is nothing to propagate with."""
    missing = [k for k in (INVERSION, FEATURES) if k not in ctx.inputs]
    if missing:
        raise StageError(f"the editing loop needs the {', '.join(missing)} store(s)")
    inv = ctx.inputs[INVERSION]
    timesteps = read_timesteps(inv)
    if KEYFRAMES in ctx.inputs:
        keyframes = np.asarray(ctx.inputs[KEYFRAMES]["keyframes"][...])
    else:
        keyframes = np.tile(np.arange(inv["x0"].shape[0]), (len(timesteps), 1))
    corr = ctx.inputs.get(CORRESPONDENCE)
    return {
        "inv": inv,
        "timesteps": timesteps,
        "features": FeatureReader(ctx.inputs[FEATURES], SourcePass(ctx.model, inv)),
        "correspondence": CorrespondenceReader(corr) if corr is not None else None,
        "keyframes": keyframes,
    }


def make_run(ctx: StageContext) -> EditRun:
    """Prepare an :class:`EditRun` from the upstream stores of ``ctx``."""
    from diffusers import DDIMScheduler

    model = ctx.model
    opened = _open_inputs(ctx)
    timesteps = opened["timesteps"]
    scheduler = DDIMScheduler.from_config(model.scheduler.config)
    scheduler.set_timesteps(len(timesteps))
    grid = [int(t) for t in scheduler.timesteps]
    if grid != timesteps:
        raise StageError(f"inversion timesteps {timesteps[:3]}... differ from the scheduler's {grid[:3]}...")
    inv = opened["inv"]
    device = model.device
    return EditRun(
        ctx=ctx,
        editor=ctx.stages[EDITOR],
        blender=ctx.stages[BLENDER],
        timesteps=timesteps,
        scheduler=scheduler,
        features=opened["features"],
        correspondence=opened["correspondence"],
        keyframes=opened["keyframes"],
        x0=torch.from_numpy(np.asarray(inv["x0"][...], dtype=np.float32)).to(device),
        x_max=torch.from_numpy(np.asarray(inv["x_max"][...], dtype=np.float32)).to(device),
        t_max=int(inv.attrs["t_max"]),
    )


def start_latents(run: EditRun, t: int) -> torch.Tensor:
    """Latents at level ``t`` rebuilt from x0 and the inverted noise (released behaviour)."""
    a_max, a_t = run.alpha(run.t_max), run.alpha(t)
    eps = (run.x_max - a_max.sqrt() * run.x0) / (1 - a_max).sqrt()
    return a_t.sqrt() * run.x0 + (1 - a_t).sqrt() * eps


def decode_frames(model, latents: torch.Tensor, out: zarr.Group, batch: int = 8) -> zarr.Array:
    """Decode ``latents`` into ``out["frames"]`` (frame, y, x, rgb) ``batch`` frames at a time
    (the VAE's batch, whatever the UNet's), so that no copy of every frame's pixels is held."""
    n = int(latents.shape[0])
    f = model.vae_scale_factor
    shape = (n, int(latents.shape[2]) * f, int(latents.shape[3]) * f, 3)
    arr = create_array(out, "frames", dims=(FRAME, HEIGHT, WIDTH, RGB), shape=shape,
                       dtype="uint8", chunks=(1,) + shape[1:])
    for s in range(0, n, batch):
        arr[s:s + batch] = model.decode_latents(latents[s:s + batch], batch_size=batch)
    release_memory()
    return arr


def loop_label(editor, blender) -> str:
    """The editing loop's progress label: ``edit (pnp + tokenflow)``; an editor that does not
    propagate (per-frame baselines) edits every frame alone, and says so."""
    if getattr(editor, "propagates", True):
        return f"edit ({editor.name} + {blender.name})"
    return f"edit ({editor.name}, every frame edited alone)"


def run_edit(ctx: StageContext, editor_out: zarr.Group, blender_out: zarr.Group,
             progress: Sequence[Any] = ()) -> EditRun:
    """Run the loop, writing the editor's and the blender's stores; returns the run (counters).

    The stores hold the timesteps the loop ran: ``timesteps[first:]`` where ``first`` is the
    editor's ``first_step(run)`` (0 unless the editor starts later on the grid).

    ``progress``: the stores' :class:`tokenflow.cache.store.Progress`. Every finished timestep is
    marked in them; a rerun after an interruption resumes after the last timestep both stores
    finished, from the latents stored for it (bit-identical to an uninterrupted run: a step
    depends only on the latents, the timestep and the upstream stores). An editor whose state
    carries from one step to the next sets ``resumable = False`` and restarts instead.
    """
    run = make_run(ctx)
    run.editor_out = editor_out
    editor, blender = run.editor, run.blender
    n = run.n_frames
    k = run.keyframes.shape[1]
    lat_shape = tuple(run.x0.shape[1:])
    finish = getattr(editor, "finish_step", None)
    with torch.no_grad(), tokenflow_attention(
        ctx.model.unet, run.state, editor.conv_layers(run)
    ) as layers:
        run.layers = layers
        run.editor_state = editor.start(run)
        first = int(editor.first_step(run)) if hasattr(editor, "first_step") else 0
        if not 0 <= first < len(run.timesteps):
            raise StageError(f"editor {editor.name!r} starts at step {first} of a "
                             f"{len(run.timesteps)}-step grid")
        ran = run.timesteps[first:]
        steps = len(ran)
        write_coord(editor_out, TIMESTEP, ran)
        ed_kf = create_array(editor_out, "keyframes", dims=(TIMESTEP, KEYFRAME), shape=(steps, k),
                             dtype="int64")
        ed_out = create_array(editor_out, "model_output", dims=(TIMESTEP, KEYFRAME, *LATENT_DIMS),
                              shape=(steps, k) + lat_shape, dtype="float32",
                              chunks=(1, k) + lat_shape)
        write_coord(blender_out, TIMESTEP, ran)
        write_coord(blender_out, FRAME, range(n))
        bl_lat = create_array(blender_out, "latents", dims=(TIMESTEP, FRAME, *LATENT_DIMS),
                              shape=(steps, n) + lat_shape, dtype="float32",
                              chunks=(1, n) + lat_shape)
        blender_out.attrs["latents_note"] = "latents after the DDIM step taken at each timestep"
        resume = 0
        if progress and getattr(editor, "resumable", True):
            while resume < steps and all(p.done(f"step:{resume}") for p in progress):
                resume += 1
        if resume:
            ctx.note(f"editing loop: resuming at step {resume + 1} of {steps} (an interrupted "
                     f"run finished steps 1-{resume})")
            latents = torch.from_numpy(np.asarray(bl_lat[resume - 1])).to(run.x0.device)
            latents = latents.contiguous()
            counters = progress[-1].state
            run.unet_calls = int(counters.get("unet_calls", 0))
            run.unet_frames = int(counters.get("unet_frames", 0))
        else:
            latents = editor.initial_latents(run).contiguous()
        with ctx.bar(steps, loop_label(editor, blender)) as bar:
            bar.update(resume)
            for j, t in enumerate(ran):
                if j < resume:
                    continue
                i = first + j
                keyframes = [int(f) for f in run.keyframes[i]]
                step = EditStep(run=run, index=i, timestep=int(t), latents=latents,
                                keyframes=keyframes)
                edited = editor.edit_step(step)
                step.keyframe_output = edited.model_output
                if edited.latents is not None:
                    latents = edited.latents
                else:
                    latents = blender.blend_step(step, edited.tokens)
                if finish is not None:
                    latents = finish(step, latents)
                # the standard memory format, as a resumed run reads it back from the store
                latents = latents.contiguous()
                ed_kf[j] = np.asarray(keyframes)
                ed_out[j] = edited.model_output.detach().cpu().numpy()
                bl_lat[j] = latents.detach().cpu().numpy()
                for p in progress:
                    p.mark(f"step:{j}", unet_calls=run.unet_calls, unet_frames=run.unet_frames)
                del step, edited
                release_memory()
                bar.update(1)
    decode_frames(ctx.model, latents, blender_out)
    stats = {"unet_calls": run.unet_calls, "unet_frame_evals": run.unet_frames,
             "steps": steps, "first_step": first, "frames": n, "keyframes_per_step": k}
    blender_out.attrs["stats"] = stats
    editor_out.attrs["stats"] = stats
    return run
