"""Inversion stage ``ddim``: deterministic DDIM inversion of every frame (docs/algorithm.md section 1).

torch and the helpers that need it are imported where they are used, so that importing this
plugin (to check a run's parameters) does not load torch.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from tokenflow import (
    FRAME,
    INVERSION,
    LATENT_DIMS,
    TIMESTEP,
    Params,
    StageBase,
    StageContext,
    StageError,
    check_inversion_grid,
    hookimpl,
)

if TYPE_CHECKING:  # pragma: no cover
    import torch


@dataclass(frozen=True)
class DDIMInversionParams(Params):
    """``prompt``: the inversion prompt (describe the source, or leave empty);
    ``inversion_steps``: DDIM steps from clean to noisiest (the editing grid must be a subset)."""

    prompt: str = ""
    inversion_steps: int = 500

    def __post_init__(self) -> None:
        if self.inversion_steps < 1:
            raise ValueError("inversion_steps must be at least 1")


def inversion_grid(model, steps: int) -> list[int]:
    """The inversion timesteps, ascending (t_1 < t_2 < ...)."""
    from tokenflow import ddim_scheduler

    return sorted(int(t) for t in ddim_scheduler(model, steps).timesteps)


def invert(model, x0: torch.Tensor, text: torch.Tensor, grid: list[int], keep: set[int],
           on_step=None, batch_size: int = 8, start: int = 0,
           x_start: torch.Tensor | None = None) -> tuple[dict[int, torch.Tensor], torch.Tensor]:
    """DDIM-invert latents ``x0`` (N, c, h, w) along ascending ``grid``.

    Step i goes from p = t_{i-1} to t = t_i (for i = 1, a_p is the scheduler's final alpha):
    eps = UNet(x, t); x0_hat = (x - sqrt(1-a_p) eps)/sqrt(a_p); x = sqrt(a_t) x0_hat + sqrt(1-a_t) eps.
    Returns the latents at the timesteps in ``keep`` and the noisiest latents. ``on_step(i, t,
    x)`` is called after each step. To resume, ``start`` is the first step to run and
    ``x_start`` the latents after step ``start - 1``.
    """
    import torch

    from tokenflow import to_epsilon

    with torch.no_grad():
        scheduler = model.scheduler
        alphas = scheduler.alphas_cumprod.to(torch.float64)
        a_final = float(scheduler.final_alpha_cumprod)
        # always the standard memory format: convolutions may hand back channels-last tensors, and
        # a layout that differs after a resume would change the last bits of the result
        x = (x0 if start == 0 else x_start).clone().contiguous()
        kept: dict[int, torch.Tensor] = {}
        a_prev = a_final if start == 0 else float(alphas[grid[start - 1]])
        for index, t in enumerate(grid):
            if index < start:
                continue
            a_t = float(alphas[t])
            parts = []
            for s in range(0, x.shape[0], batch_size):
                xb = x[s:s + batch_size]
                emb = text.expand(xb.shape[0], -1, -1).to(model.device, model.dtype)
                out = model.unet(xb.to(model.device, model.dtype), t, encoder_hidden_states=emb,
                                 return_dict=False)[0].to(torch.float32)
                eps = to_epsilon(out, xb, a_t, model.prediction_type)
                x0_hat = (xb - (1 - a_prev) ** 0.5 * eps) / a_prev ** 0.5
                parts.append(a_t ** 0.5 * x0_hat + (1 - a_t) ** 0.5 * eps)
            x = torch.cat(parts).contiguous()
            a_prev = a_t
            if t in keep:
                kept[t] = x.clone()
            if on_step is not None:
                on_step(index, t, x)
        return kept, x


class DDIMInversion(StageBase):
    kind = INVERSION
    name = "ddim"
    version = 2  # 2: latents kept in the standard memory format (resumable bit for bit)
    requires = ()
    reads_config = ("steps",)
    Params = DDIMInversionParams
    summary = "DDIM inversion of each frame with the inversion prompt, no guidance"

    def estimate_bytes(self, ctx: StageContext) -> int:
        n, h, w = ctx.frames.shape[:3]
        f = ctx.model.vae_scale_factor
        per = 4 * ctx.model.unet.config.in_channels * (h // f) * (w // f)
        return per * n * (ctx.config.steps + 2)

    def frame_evaluations(self, ctx: StageContext) -> int:
        """Every frame through the UNet once per inversion step."""
        return len(ctx.frames) * self.params.inversion_steps

    def check(self, config, checkpoint) -> None:
        """Before the model loads: every editing timestep must be on the inversion grid."""
        try:
            check_inversion_grid(checkpoint.scheduler_config, config.steps,
                                 self.params.inversion_steps)
        except ValueError as exc:
            raise StageError(str(exc)) from None

    def run(self, ctx: StageContext) -> None:
        import torch

        from tokenflow import BackgroundWriter, create_array, editing_grid, write_coord

        model, out = ctx.model, ctx.output
        self.check(ctx.config, model.checkpoint)
        grid = inversion_grid(model, self.params.inversion_steps)
        editing = editing_grid(model, ctx.config.steps)
        batch = int(ctx.options.get("unet_batch", ctx.config.batch_size))
        progress = ctx.progress
        resumed = progress is not None and progress.done("x0")
        if resumed:  # an interrupted run encoded the frames already
            x0 = torch.from_numpy(np.asarray(out["x0"][...])).to(model.device)
        else:
            with ctx.bar(1, "encode frames") as bar:
                # the VAE works at full resolution: its own small batch, whatever the UNet's
                x0 = model.encode_frames(ctx.frames).to(torch.float32)
                bar.update(1)
        n = x0.shape[0]
        lat = tuple(x0.shape[1:])
        write_coord(out, TIMESTEP, editing)
        write_coord(out, FRAME, range(n))
        if not resumed:
            create_array(out, "x0", dims=(FRAME, *LATENT_DIMS), data=x0.cpu().numpy())
            if progress is not None:
                progress.mark("x0")
        latents = create_array(out, "latents", dims=(TIMESTEP, FRAME, *LATENT_DIMS),
                               shape=(len(editing), n) + lat, dtype="float32",
                               chunks=(1, n) + lat)
        slots = {s: create_array(out, f"resume_{s}", dims=(FRAME, *LATENT_DIMS), shape=(n, *lat),
                                 dtype="float32") for s in "ab"}
        start, x_start = 0, None
        state = progress.state if progress is not None else {}
        if resumed and "step" in state:  # latents after step `step`, in slot `slot`
            start = int(state["step"]) + 1
            x_start = torch.from_numpy(np.asarray(slots[state["slot"]][...])).to(model.device)
            ctx.note(f"inversion: resuming at step {start + 1} of {len(grid)} (an interrupted "
                     f"run finished steps 1-{start})")
        elif resumed:
            ctx.note("inversion: resuming after the frames' encoding (an interrupted run "
                     "finished it)")
        every = float(ctx.options.get("checkpoint_seconds", 0.0))  # 0: every timestep
        last = [time.monotonic()]
        last_slot = [state.get("slot")]
        index_of = {t: i for i, t in enumerate(editing)}
        text = model.encode_prompts([self.params.prompt])

        def checkpoint(index: int, slot: str, x: np.ndarray) -> None:
            slots[slot][...] = x
            progress.mark("x0", step=index, slot=slot)

        def step_done(index: int, t: int, x: torch.Tensor) -> None:
            if t in index_of:  # an editing timestep: final data, written in the background
                writer.submit(latents.__setitem__, index_of[t], x.cpu().numpy())
            if progress is not None and (time.monotonic() - last[0] >= every
                                         or index == len(grid) - 1):
                # alternate, so the slot being written is never the one the last mark names
                slot = last_slot[0] = "b" if last_slot[0] == "a" else "a"
                writer.submit(checkpoint, index, slot, x.cpu().numpy())
                last[0] = time.monotonic()
            bar.update(1)

        with ctx.bar(len(grid), f"invert ({len(grid)} steps)") as bar, \
                BackgroundWriter() as writer:
            bar.update(start)
            _, x_max = invert(model, x0, text, grid, set(), on_step=step_done,
                              batch_size=batch, start=start, x_start=x_start)
        for s in "ab":
            del out[f"resume_{s}"]
        create_array(out, "x_max", dims=(FRAME, *LATENT_DIMS), data=x_max.cpu().numpy())
        out.attrs.update({"t_max": int(grid[-1]), "prompt": self.params.prompt,
                          "inversion_steps": len(grid),
                          "stats": {"unet_frame_evals": int(n * len(grid))}})


@hookimpl
def register_inversions(register):
    register(DDIMInversion)
