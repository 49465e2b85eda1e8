"""Inversion quality: regenerate from the inverted noise and compare with the source frames."""

from __future__ import annotations

import numpy as np
import torch

from tokenflow.editing.diffusion import psnr, regenerate


def reconstruction_check(job, results, crop=None) -> dict:
    """Per-frame PSNR (dB) of the regeneration (same prompt, no CFG, DDIM over the inversion
    grid) from the inversion's noisiest latents against the working-resolution frames; and, to
    tell the two errors apart, of the VAE alone (decoding the clean latents ``x0``).

    ``crop``: takes frames as the UNet sees them to the working size (``Source.crop``: the
    padding to the UNet's multiples off), so the padding is not measured; None: no padding."""
    crop = crop or (lambda frames: frames)
    ctx = job.base
    model = ctx.model
    store = ctx.cache.open(results["inversion"].path)
    x_max = torch.from_numpy(np.asarray(store["x_max"][...], dtype=np.float32)).to(model.device)
    steps = int(store.attrs["inversion_steps"])
    text = model.encode_prompts([str(store.attrs.get("prompt", ""))])
    with ctx.bar(steps, "reconstruction check") as bar:
        x0 = regenerate(model, x_max, text, steps, batch_size=int(ctx.options.get("unet_batch", ctx.config.batch_size)),
                        on_step=lambda: bar.update(1))
    source = crop(ctx.frames)
    values = _finite(psnr(crop(model.decode_latents(x0)), source))
    clean = torch.from_numpy(np.asarray(store["x0"][...], dtype=np.float32))
    vae = _finite(psnr(crop(model.decode_latents(clean)), source))
    return {"per_frame": [float(v) for v in values], "mean": float(values.mean()),
            "min": float(values.min()), "vae_per_frame": [float(v) for v in vae],
            "vae_mean": float(vae.mean())}


def _finite(values: np.ndarray, cap: float = 100.0) -> np.ndarray:
    """PSNR of identical frames is infinite; report it as ``cap`` dB so JSON stays valid."""
    return np.where(np.isfinite(values), values, cap)
