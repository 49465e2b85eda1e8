"""Small diffusion helpers shared by stages: schedulers, grids, prediction types, regeneration."""

from __future__ import annotations

import numpy as np
import torch


def ddim_scheduler(model, steps: int):
    """A fresh DDIM scheduler from the model's config, set to ``steps`` inference steps."""
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler.from_config(model.scheduler.config)
    scheduler.set_timesteps(steps)
    return scheduler


def editing_grid(model, steps: int) -> list[int]:
    """The editing timesteps in denoising order (SD, 50 steps: 981, 961, ..., 1)."""
    return [int(t) for t in ddim_scheduler(model, steps).timesteps]


def to_epsilon(output: torch.Tensor, x: torch.Tensor, alpha: float, prediction_type: str):
    """The noise prediction from a UNet output of either prediction type, at level ``alpha``."""
    if prediction_type == "epsilon":
        return output
    if prediction_type == "v_prediction":
        return alpha ** 0.5 * output + (1 - alpha) ** 0.5 * x
    raise ValueError(f"unsupported prediction type {prediction_type!r}")


@torch.no_grad()
def regenerate(model, x_t: torch.Tensor, text: torch.Tensor, steps: int, *, batch_size: int = 8,
               on_step=None) -> torch.Tensor:
    """Denoise ``x_t`` (at the noisiest level of a ``steps``-step grid) with DDIM, eta 0, no CFG."""
    scheduler = ddim_scheduler(model, steps)
    x = x_t.clone()
    for t in scheduler.timesteps:
        parts = []
        for s in range(0, x.shape[0], batch_size):
            xb = x[s:s + batch_size]
            emb = text.expand(xb.shape[0], -1, -1).to(model.device, model.dtype)
            out = model.unet(xb.to(model.device, model.dtype), int(t), encoder_hidden_states=emb,
                             return_dict=False)[0].to(torch.float32)
            parts.append(scheduler.step(out, t, xb, eta=0.0, return_dict=False)[0])
        x = torch.cat(parts)
        if on_step is not None:
            on_step()
    return x


def psnr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-frame PSNR in dB of two uint8 videos (N, H, W, 3); inf where identical."""
    diff = a.astype(np.float64) - b.astype(np.float64)
    mse = (diff ** 2).reshape(len(a), -1).mean(axis=1)
    with np.errstate(divide="ignore"):
        return 10 * np.log10(255.0 ** 2 / mse)
