"""Loading Stable Diffusion (1.x / 2.x) checkpoints for TokenFlow: devices, dtypes, the
:class:`Model` (frozen components plus identity and pixel/latent helpers) and :func:`load_model`.

Only diffusers-format checkpoints with ``.safetensors`` weights are accepted: pickled ``.bin``
weights are never loaded (:mod:`tokenflow.models.checkpoints` validates a directory first). A
checkpoint is either a local directory (``model_index.json`` + ``unet/``, ``vae/``,
``text_encoder/``, ``tokenizer/``, optional ``scheduler/``) or a Hugging Face Hub id, which is
resolved from the local cache first and downloaded only when missing.

Every loaded :class:`Model` carries a ``key``: a sha256 over the weight/config/tokenizer file
contents and the dtype (:mod:`tokenflow.models.hashing`), so stage caches can tell apart results
computed with different weights.
"""

from __future__ import annotations

import importlib.util
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTokenizer

from tokenflow.models.checkpoints import (
    EMBEDDED_DIR,
    Checkpoint,
    HUB_CONFIG_FILES,
    HUB_WEIGHT_FILES,
    MissingFiles,
    ModelError,
    check_configs,
    check_weights,
    checkpoint_extras,
    locate_checkpoint,
)
from tokenflow.models.hashing import directory_key
from tokenflow.models.vocabulary import Vocabulary
from tokenflow.oneline import error_line

_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
           "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
__all__ = ["EMBEDDED_DIR", "Model", "default_device", "default_dtype", "describe_model", "load_model",
           "parse_dtype"]


# --------------------------------------------------------------------------------------------- devices


def default_device() -> torch.device:
    """CUDA if available, else Apple MPS if available, else CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def default_dtype(device: torch.device | str) -> torch.dtype:
    """float16 on CUDA, float32 everywhere else."""
    return torch.float16 if torch.device(device).type == "cuda" else torch.float32


def parse_dtype(text: str) -> torch.dtype:
    """Parse ``float32``/``fp32``/``float16``/``fp16``/``bfloat16``/``bf16`` (case-insensitive)."""
    name = str(text).strip().lower().removeprefix("torch.")
    if name not in _DTYPES:
        raise ModelError(f"unknown dtype {text!r}: use one of float32, fp32, float16, fp16, bfloat16")
    return _DTYPES[name]


# --------------------------------------------------------------------------------------------- the model


@dataclass(eq=False)
class Model:
    """A frozen Stable Diffusion model ready for TokenFlow: components, identity and pixel/latent helpers."""

    unet: UNet2DConditionModel = field(repr=False)
    vae: AutoencoderKL = field(repr=False)
    text_encoder: CLIPTextModel = field(repr=False)
    tokenizer: CLIPTokenizer = field(repr=False)
    scheduler: DDIMScheduler = field(repr=False)
    model_id: str
    revision: str | None
    key: str
    device: torch.device
    dtype: torch.dtype
    label: str
    #: Stage parameters the checkpoint suggests (``tokenflow.json`` beside ``model_index.json``),
    #: as ``{"kind.param": value}``, e.g. ``{"inversion.inversion_steps": 50}``; a run uses them
    #: where the user gave no value.
    defaults: dict[str, Any] = field(default_factory=dict)
    #: The checkpoint's directory (a Hub snapshot for Hub ids; None for models built in memory).
    root: Path | None = None
    #: The words the model knows, if its ``tokenflow.json`` declares them
    #: (:class:`tokenflow.models.vocabulary.Vocabulary`); None: no notes about prompt words.
    vocabulary: Vocabulary | None = None
    #: False for a model described without its weights (:func:`describe_model`: the modules are
    #: on the meta device; configs, tokenizer, scheduler, key and defaults are real).
    weights: bool = True

    @property
    def checkpoint(self) -> Checkpoint:
        """What stage checks that run before a model loads see of it (:class:`Checkpoint`)."""
        return Checkpoint(model_id=self.model_id, root=self.root, defaults=dict(self.defaults),
                          scheduler_config=dict(self.scheduler.config))

    @property
    def vae_scale_factor(self) -> int:
        """Pixel size of one latent cell (8 for Stable Diffusion)."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def size_multiple(self) -> int:
        """What frame sides must be multiples of (pixels): one latent cell times the UNet's
        downsampling, ``vae_scale_factor * 2 ** (down blocks - 1)`` (every down block but the
        last halves the latents): 64 for Stable Diffusion, 32 for the embedded model (three levels)."""
        return self.vae_scale_factor * 2 ** (len(self.unet.config.down_block_types) - 1)

    @property
    def native_size(self) -> int:
        """Image side length (pixels) the UNet was configured for (512 for SD 1.5)."""
        size = self.unet.config.sample_size
        return int(size if isinstance(size, int) else size[0]) * self.vae_scale_factor

    @property
    def scaling_factor(self) -> float:
        """Latent scaling factor of the VAE (0.18215 for SD 1.x / 2.x)."""
        return float(self.vae.config.scaling_factor)

    @property
    def prediction_type(self) -> str:
        """``"epsilon"`` or ``"v_prediction"``."""
        return str(self.scheduler.config.prediction_type)

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        """Text embeddings ``(len(prompts), model_max_length, hidden)`` on the model's device and dtype."""
        ids = self.tokenizer(list(prompts), padding="max_length", max_length=self.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids.to(self.device)
        return self.text_encoder(ids)[0].to(device=self.device, dtype=self.dtype)

    def prompt_truncated(self, prompt: str) -> bool:
        """True if ``prompt`` (with its start/end tokens) is longer than the text encoder's context."""
        limit = self.tokenizer.model_max_length
        return len(self.tokenizer(prompt, truncation=True, max_length=limit + 1).input_ids) > limit

    @torch.no_grad()
    def encode_frames(self, frames_uint8: np.ndarray, batch_size: int = 8) -> torch.Tensor:
        """``(N, H, W, 3)`` uint8 frames -> float32 latents ``(N, 4, H/8, W/8)`` (mean of the posterior, scaled)."""
        frames = np.asarray(frames_uint8)
        f = self.vae_scale_factor
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise ValueError(f"expected (N, H, W, 3) uint8 frames, got {frames.shape} {frames.dtype}")
        if frames.shape[1] % f or frames.shape[2] % f:
            raise ValueError(f"frame size {frames.shape[2]}x{frames.shape[1]} is not a multiple of {f}")
        out = []
        for start in range(0, len(frames), batch_size):
            x = torch.from_numpy(np.ascontiguousarray(frames[start:start + batch_size])).to(self.device)
            x = x.permute(0, 3, 1, 2).to(self.dtype) / 127.5 - 1.0
            out.append(self.vae.encode(x).latent_dist.mean.float() * self.scaling_factor)
        return torch.cat(out)

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor, batch_size: int = 8) -> np.ndarray:
        """Latents ``(N, 4, h, w)`` -> uint8 frames ``(N, 8h, 8w, 3)``."""
        out = []
        for start in range(0, latents.shape[0], batch_size):
            z = latents[start:start + batch_size].to(self.device, self.dtype) / self.scaling_factor
            x = (self.vae.decode(z).sample.float() / 2 + 0.5).clamp(0, 1)
            out.append((x * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy())
        return np.concatenate(out)


# --------------------------------------------------------------------------------------------- loading


def _hub_snapshot(repo_id: str, revision: str | None, download: bool = True) -> Path:
    """Snapshot directory with the needed files of a Hub repo: from the cache if complete, else
    downloaded (unless ``download`` is False)."""
    from huggingface_hub import snapshot_download

    for local_only in (True, False) if download else (True,):
        try:
            kwargs: dict[str, Any] = {"revision": revision, "local_files_only": local_only}
            root = Path(snapshot_download(repo_id, allow_patterns=HUB_CONFIG_FILES, **kwargs))
            check_configs(root, repo_id)  # before fetching gigabytes of weights
            root = Path(snapshot_download(repo_id, allow_patterns=HUB_WEIGHT_FILES, **kwargs))
            check_weights(root, repo_id)
            return root
        except MissingFiles:
            if not local_only:
                raise
        except ModelError:
            raise
        except Exception as exc:  # noqa: BLE001 - hub/network errors come in many types
            if not local_only:
                raise ModelError(f"{repo_id}: not a local directory, and not found in the Hugging Face cache nor "
                                 f"downloadable ({error_line(exc, 160, sentence=True)})") from None
    raise ModelError(f"{repo_id} is not complete in the local Hugging Face cache and is not downloaded "
                     "here (cache keys hash the weights: a run without --dry-run downloads them)")


def _resolve(model: str | os.PathLike, revision: str | None,
             download: bool = True) -> tuple[Path, str | None]:
    """(checkpoint directory, commit hash or None) for a local directory or a Hub id."""
    path = locate_checkpoint(model)
    if path is None:
        path = _hub_snapshot(os.fspath(model), revision, download)
    name = path.resolve().name
    in_cache = path.resolve().parent.name == "snapshots" and bool(re.fullmatch(r"[0-9a-f]{40}", name))
    return path, name if in_cache else None


def _check_device(device: torch.device | str) -> torch.device:
    """``device`` as a torch.device that exists here, or :class:`ModelError`."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ModelError(f"unknown device {device!r}; use cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ModelError(f"device {device!r}: CUDA is not available on this machine")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ModelError(f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise ModelError(f"device {device!r}: MPS is not available on this machine")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise ModelError(f"device {device!r} is not supported; use cpu, cuda, cuda:N or mps")
    return dev


def _checkpoint(model: str | os.PathLike | None, revision: str | None,
                download: bool = True) -> tuple[str, Path, str | None, dict[str, Any]]:
    """(model id, directory, Hub commit or None, DDIM scheduler config) of a validated checkpoint."""
    if model is None:
        if not (EMBEDDED_DIR / "model_index.json").is_file():
            raise ModelError(f"the embedded model is missing from this installation ({EMBEDDED_DIR}); "
                             "reinstall tokenflow or pass --model")
        model_id, root, rev = "embedded", EMBEDDED_DIR, None
    else:
        model_id = os.fspath(model)
        root, rev = _resolve(model, revision, download)
    scheduler_config = check_configs(root, model_id)
    check_weights(root, model_id)
    return model_id, root, rev, scheduler_config


def _device_dtype(device, dtype) -> tuple[torch.device, torch.dtype]:
    device = _check_device(device) if device is not None else default_device()
    if not isinstance(dtype, torch.dtype):
        dtype = default_dtype(device) if dtype is None else parse_dtype(dtype)
    return device, dtype


def _model(parts: dict[str, Any], model_id: str, root: Path, rev: str | None,
           scheduler_config: dict[str, Any], device: torch.device, dtype: torch.dtype,
           weights: bool) -> Model:
    """The :class:`Model` of loaded (or meta-device) components: its key, label and defaults."""
    family = "SD-2.x-style" if parts["unet"].config.use_linear_projection else "SD-1.x-style"
    label = (f"{model_id}{f' @ {rev[:10]}' if rev else ''} "
             f"({family}, {scheduler_config['prediction_type']} prediction)")
    extras = checkpoint_extras(root)
    return Model(**parts, scheduler=DDIMScheduler.from_config(scheduler_config), model_id=model_id,
                 revision=rev, key=directory_key(root, dtype), device=device, dtype=dtype,
                 label=extras.get("label", label), defaults=extras["defaults"], root=root,
                 vocabulary=extras["vocabulary"], weights=weights)


def load_model(model: str | os.PathLike | None, *, device: torch.device | str | None = None,
               dtype: torch.dtype | str | None = None, revision: str | None = None) -> Model:
    """Load a frozen Stable Diffusion 1.x/2.x model (eval mode, no gradients) onto ``device`` in ``dtype``.

    ``model`` is a local diffusers directory, a Hugging Face Hub id (local cache first, then a download;
    ``revision`` picks a branch/tag/commit), or ``None`` for the embedded default model (package data).
    ``device``/``dtype`` default to :func:`default_device`/:func:`default_dtype`.
    Raises :class:`ModelError` with a one-line explanation for anything unusable.
    """
    device, dtype = _device_dtype(device, dtype)
    model_id, root, rev, scheduler_config = _checkpoint(model, revision)
    common: dict[str, Any] = {"use_safetensors": True, "torch_dtype": dtype, "local_files_only": True}
    if importlib.util.find_spec("accelerate") is None:
        common["low_cpu_mem_usage"] = False  # what diffusers falls back to anyway, minus its warning
    try:
        parts = {
            "unet": UNet2DConditionModel.from_pretrained(root, subfolder="unet", **common),
            "vae": AutoencoderKL.from_pretrained(root, subfolder="vae", **common),
            "text_encoder": CLIPTextModel.from_pretrained(root, subfolder="text_encoder", **common),
            "tokenizer": CLIPTokenizer.from_pretrained(root, subfolder="tokenizer", local_files_only=True),
        }
    except Exception as exc:  # noqa: BLE001 - surface library errors as one line
        raise ModelError(f"{model_id}: could not load the components ({error_line(exc, 160, sentence=True)})") from None
    for name in ("unet", "vae", "text_encoder"):
        module = parts[name]
        if next(module.parameters()).dtype != dtype:  # cast only if needed: diffusers warns on every dtype .to()
            module.to(dtype=dtype)
        module.to(device).eval().requires_grad_(False)
    return _model(parts, model_id, root, rev, scheduler_config, device, dtype, weights=True)


def describe_model(model: str | os.PathLike | None, *, device: torch.device | str | None = None,
                   dtype: torch.dtype | str | None = None, revision: str | None = None) -> Model:
    """The :class:`Model` that :func:`load_model` would return, without its weights: the same
    checks, key (the weight files are hashed, not loaded), label, defaults, tokenizer and
    scheduler, with the UNet, VAE and text encoder built from their configs on the meta device
    (no memory; they cannot run). What planning a run needs: ``tf run --dry-run``. A Hub model
    must be in the local Hugging Face cache (nothing is downloaded)."""
    from transformers import CLIPTextConfig

    device, dtype = _device_dtype(device, dtype)
    model_id, root, rev, scheduler_config = _checkpoint(model, revision, download=False)
    try:
        with torch.device("meta"):
            parts = {
                "unet": UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(root / "unet")),
                "vae": AutoencoderKL.from_config(AutoencoderKL.load_config(root / "vae")),
                "text_encoder": CLIPTextModel(CLIPTextConfig.from_pretrained(root / "text_encoder")),
            }
        parts["tokenizer"] = CLIPTokenizer.from_pretrained(root, subfolder="tokenizer", local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - surface library errors as one line
        raise ModelError(f"{model_id}: could not read the components' configs "
                         f"({error_line(exc, 160, sentence=True)})") from None
    for name in ("unet", "vae", "text_encoder"):  # torch's own cast: diffusers' warns needlessly
        torch.nn.Module.to(parts[name], dtype=dtype).eval().requires_grad_(False)
    return _model(parts, model_id, root, rev, scheduler_config, device, dtype, weights=False)
