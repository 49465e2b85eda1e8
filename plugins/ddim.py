"""Inversion stage ``ddim``: deterministic DDIM inversion of every frame (ALGORITHM.md section 1)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tokenflow import INVERSION, Params, StageBase, StageContext, StageError, hookimpl
from tokenflow.cache.store import create_array, write_coord
from tokenflow.diffusion import ddim_scheduler, editing_grid, to_epsilon
from tokenflow.stages import FRAME, LATENT_DIMS, TIMESTEP


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
    return sorted(int(t) for t in ddim_scheduler(model, steps).timesteps)


@torch.no_grad()
def invert(model, x0: torch.Tensor, text: torch.Tensor, grid: list[int], keep: set[int],
           on_step=None, batch_size: int = 8) -> tuple[dict[int, torch.Tensor], torch.Tensor]:
    """DDIM-invert latents ``x0`` (N, c, h, w) along ascending ``grid``.

    Step i goes from p = t_{i-1} to t = t_i (for i = 1, a_p is the scheduler's final alpha):
    eps = UNet(x, t); x0_hat = (x - sqrt(1-a_p) eps)/sqrt(a_p); x = sqrt(a_t) x0_hat + sqrt(1-a_t) eps.
    Returns the latents at the timesteps in ``keep`` and the noisiest latents.
    """
    scheduler = model.scheduler
    alphas = scheduler.alphas_cumprod.to(torch.float64)
    a_final = float(scheduler.final_alpha_cumprod)
    x = x0.clone()
    kept: dict[int, torch.Tensor] = {}
    a_prev = a_final
    for t in grid:
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
        x = torch.cat(parts)
        a_prev = a_t
        if t in keep:
            kept[t] = x.clone()
        if on_step is not None:
            on_step()
    return kept, x


class DDIMInversion(StageBase):
    kind = INVERSION
    name = "ddim"
    version = 1
    requires = ()
    reads_config = ("steps",)
    Params = DDIMInversionParams
    summary = "DDIM inversion of each frame with the inversion prompt, no guidance"

    def estimate_bytes(self, ctx: StageContext) -> int:
        n, h, w = ctx.frames.shape[:3]
        f = ctx.model.vae_scale_factor
        per = 4 * ctx.model.unet.config.in_channels * (h // f) * (w // f)
        return per * n * (ctx.config.steps + 2)

    def run(self, ctx: StageContext) -> None:
        model, out = ctx.model, ctx.output
        grid = inversion_grid(model, self.params.inversion_steps)
        editing = editing_grid(model, ctx.config.steps)
        missing = sorted(set(editing) - set(grid))
        if missing:
            raise StageError(
                f"editing timesteps {missing[:4]} are not on the {len(grid)}-step inversion grid; "
                f"use --inversion-steps a multiple of --steps ({ctx.config.steps})"
            )
        batch = int(ctx.options.get("unet_batch", 8))
        with ctx.bar(1, "encode frames") as bar:
            x0 = model.encode_frames(ctx.frames, batch_size=batch).to(torch.float32)
            bar.update(1)
        text = model.encode_prompts([self.params.prompt])
        with ctx.bar(len(grid), f"invert ({len(grid)} steps)") as bar:
            kept, x_max = invert(model, x0, text, grid, set(editing), on_step=lambda: bar.update(1),
                                 batch_size=batch)
        n = x0.shape[0]
        lat = tuple(x0.shape[1:])
        write_coord(out, TIMESTEP, editing)
        write_coord(out, FRAME, range(n))
        latents = create_array(out, "latents", dims=(TIMESTEP, FRAME, *LATENT_DIMS),
                               shape=(len(editing), n) + lat, dtype="float32",
                               chunks=(1, n) + lat)
        for i, t in enumerate(editing):
            latents[i] = kept[t].cpu().numpy()
        create_array(out, "x0", dims=(FRAME, *LATENT_DIMS), data=x0.cpu().numpy())
        create_array(out, "x_max", dims=(FRAME, *LATENT_DIMS), data=x_max.cpu().numpy())
        out.attrs.update({"t_max": int(grid[-1]), "prompt": self.params.prompt,
                          "inversion_steps": len(grid),
                          "stats": {"unet_frame_evals": int(n * len(grid))}})


@hookimpl
def register_inversions(register):
    register(DDIMInversion)
