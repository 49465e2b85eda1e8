"""Tiny random Stable-Diffusion-shaped models for tests and plugin authors: stock diffusers and
transformers classes built from small configs (no download), saved as safetensors directories."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from tokenflow.embedded.tokenizer import tiny_tokenizer, write_tokenizer_files
from tokenflow.models.checkpoints import PREDICTION_TYPES, SD_SCHEDULER_CONFIG
from tokenflow.models.loading import ModelError


def _reinit_zero_weights(module: torch.nn.Module) -> None:
    """Give small random values to weight matrices/kernels that are exactly zero (uses the current RNG)."""
    for param in module.parameters():
        if param.ndim >= 2 and not torch.any(param):
            with torch.no_grad():
                param.normal_(0.0, 0.02)


def build_tiny_model(layout: str = "sd15", *, seed: int = 0, sample_size: int = 16,
                     prediction_type: str = "epsilon", unet: dict[str, Any] | None = None,
                     vae: dict[str, Any] | None = None, text_encoder: dict[str, Any] | None = None,
                     scheduler: dict[str, Any] | None = None) -> dict[str, Any]:
    """Randomly initialised SD-shaped components (stock classes): ``unet``, ``vae``, ``text_encoder``,
    ``tokenizer``, ``scheduler``.

    Both layouts keep SD's block layout (3 cross-attention down/up blocks, ``layers_per_block=2``, channels
    (32, 64, 64, 64)); ``"sd15"`` has conv ``proj_in`` and 8 heads, ``"sd21"`` SD 2.x's linear ``proj_in`` and
    per-block head counts (16-channel heads). The VAE downsamples 8x: ``sample_size`` 16 means 128 px images.
    Weights come from ``torch.manual_seed(seed)`` inside ``torch.random.fork_rng`` (global RNG untouched). Any
    all-zero weight tensor (some diffusers versions zero-init ``conv_out``/``proj_out``, silencing outputs) gets
    small seeded noise instead; a no-op on diffusers 0.42, where only norm biases start at zero.
    ``unet``, ``vae``, ``text_encoder`` (a ``CLIPTextConfig``) and ``scheduler`` (a DDIM config)
    override entries of those configs (e.g. ``block_out_channels``), for benchmarks that need a
    larger model of the same shape, up to full size (``benchmarks/fullsize.py``).
    """
    unet_overrides, vae_overrides = dict(unet or {}), dict(vae or {})
    text_overrides, scheduler_overrides = dict(text_encoder or {}), dict(scheduler or {})
    if layout not in ("sd15", "sd21"):
        raise ModelError(f"unknown tiny layout {layout!r}: use 'sd15' or 'sd21'")
    if prediction_type not in PREDICTION_TYPES:
        raise ModelError(f"unsupported prediction_type {prediction_type!r}: use one of {PREDICTION_TYPES}")
    with tempfile.TemporaryDirectory(prefix="tokenflow-tok-") as tmp:
        tokenizer = tiny_tokenizer(tmp)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet_config = dict(
            sample_size=sample_size, in_channels=4, out_channels=4,
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
            block_out_channels=(32, 64, 64, 64), layers_per_block=2, norm_num_groups=8, cross_attention_dim=64,
            # diffusers' SD naming quirk: ``attention_head_dim`` is really the number of heads.
            attention_head_dim=8 if layout == "sd15" else (2, 4, 4, 4),
            use_linear_projection=layout == "sd21",
        )
        vae_config = dict(
            in_channels=3, out_channels=3, latent_channels=4, sample_size=sample_size * 8,
            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
            block_out_channels=(16, 32, 32, 32), layers_per_block=1, norm_num_groups=8, scaling_factor=0.18215,
        )
        unet = UNet2DConditionModel(**{**unet_config, **unet_overrides})
        vae = AutoencoderKL(**{**vae_config, **vae_overrides})
        text_encoder = CLIPTextModel(CLIPTextConfig(**{
            "vocab_size": len(tokenizer), "hidden_size": 64, "intermediate_size": 128,
            "num_hidden_layers": 2, "num_attention_heads": 4, "max_position_embeddings": 77,
            "projection_dim": 64, "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id,
            **text_overrides,
        }))
        for module in (unet, vae, text_encoder):
            _reinit_zero_weights(module)
    scheduler = DDIMScheduler.from_config({**SD_SCHEDULER_CONFIG, "prediction_type": prediction_type,
                                           **scheduler_overrides})
    return {"unet": unet, "vae": vae, "text_encoder": text_encoder, "tokenizer": tokenizer, "scheduler": scheduler}


def save_tiny_model(directory: str | os.PathLike, layout: str = "sd15", *, seed: int = 0, sample_size: int = 16,
                    prediction_type: str = "epsilon", unet: dict[str, Any] | None = None,
                    vae: dict[str, Any] | None = None, text_encoder: dict[str, Any] | None = None,
                    scheduler: dict[str, Any] | None = None) -> Path:
    """Save a tiny random model as a diffusers directory (safetensors) loadable by :func:`load_model` and
    ``StableDiffusionPipeline.from_pretrained(directory, local_files_only=True)``."""
    from diffusers import StableDiffusionPipeline

    parts = build_tiny_model(layout, seed=seed, sample_size=sample_size, prediction_type=prediction_type,
                             unet=unet, vae=vae, text_encoder=text_encoder, scheduler=scheduler)
    pipe = StableDiffusionPipeline(**parts, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    directory = Path(directory)
    pipe.save_pretrained(directory, safe_serialization=True)
    write_tokenizer_files(directory / "tokenizer")  # slow-tokenizer files too, for older transformers
    return directory


def save_tiny_controlnet(directory: str | os.PathLike, unet, *, seed: int = 0,
                         vae_scale_factor: int = 8, random_zero_convs: bool = True) -> Path:
    """A ControlNet built from ``unet``'s config (its encoder weights copied, as diffusers'
    ``ControlNetModel.from_unet`` does), saved as safetensors. ControlNets start with zero
    convolutions (the control image's embedding and every residual output), which would leave
    the UNet unchanged; ``random_zero_convs`` gives them torch's default seeded initialisation,
    and the image embedding a variance-preserving one, so that tests can see the control image
    act."""
    from diffusers import ControlNetModel

    downs = int(round(np.log2(vae_scale_factor)))
    channels = tuple(16 * 2 ** min(i, 1) for i in range(downs + 1))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=channels)
        if random_zero_convs:
            for module in net.modules():  # torch's default init for every all-zero convolution
                if isinstance(module, torch.nn.Conv2d) and not torch.any(module.weight):
                    module.reset_parameters()
            # and a variance-preserving init of the control image's embedding: with the default
            # one its 8 convolutions shrink the image's signal ~10^4-fold, so the control is moot
            for module in net.controlnet_cond_embedding.modules():
                if isinstance(module, torch.nn.Conv2d):
                    torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
                    torch.nn.init.zeros_(module.bias)
    directory = Path(directory)
    net.save_pretrained(directory, safe_serialization=True)
    return directory
