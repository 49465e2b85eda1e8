"""ControlNets: finding a diffusers ControlNet directory (local, inside the model's directory, or
the Hub), its content key, and loading it checked against the model's UNet."""

from __future__ import annotations

import hashlib
import importlib.util
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tokenflow.models.checkpoints import ModelError, read_json
from tokenflow.models.hashing import file_digests
from tokenflow.oneline import error_line

if TYPE_CHECKING:  # pragma: no cover
    from tokenflow.models.loading import Model


def _controlnet_dir(controlnet: str | os.PathLike, revision: str | None = None,
                    base: Path | None = None) -> Path:
    """The directory of a diffusers ControlNet: a local directory, a subdirectory of the model's
    own directory ``base`` (a relative path not found in the working directory; so a checkpoint
    can ship its ControlNets), or a Hub id (from the cache, else downloaded)."""
    text = os.fspath(controlnet)
    path = Path(text).expanduser()
    if not path.exists() and not path.is_absolute() and base is not None and (base / path).is_dir():
        path = base / path
    if path.is_file():
        raise ModelError(f"ControlNet {text} is a file; give a diffusers ControlNet directory "
                         "(config.json + diffusion_pytorch_model.safetensors)")
    if not path.is_dir():
        from huggingface_hub import snapshot_download
        from huggingface_hub.utils import validate_repo_id

        try:
            validate_repo_id(text)
        except Exception:  # noqa: BLE001
            raise ModelError(f"ControlNet {text} does not exist (neither a directory nor a Hugging "
                             "Face model id)") from None
        patterns = ["config.json", "diffusion_pytorch_model.safetensors*"]
        for local_only in (True, False):
            try:
                path = Path(snapshot_download(text, revision=revision, allow_patterns=patterns,
                                              local_files_only=local_only))
                break
            except Exception as exc:  # noqa: BLE001 - hub/network errors come in many types
                if not local_only:
                    raise ModelError(f"ControlNet {text}: not a local directory, and not found in "
                                     f"the Hugging Face cache nor downloadable ({error_line(exc, 160, sentence=True)})") from None
    config = read_json(path / "config.json") if (path / "config.json").is_file() else None
    if config is None or config.get("_class_name") != "ControlNetModel":
        raise ModelError(f"{text} is not a diffusers ControlNet (config.json with _class_name "
                         "ControlNetModel)")
    if not (path / "diffusion_pytorch_model.safetensors").is_file():
        pickles = [f.name for f in path.iterdir() if f.suffix in (".bin", ".ckpt", ".pt", ".pth")]
        why = "has only pickle weights" if pickles else "has no diffusion_pytorch_model.safetensors"
        raise ModelError(f"ControlNet {text} {why}; safetensors weights are required")
    return path


def controlnet_key(controlnet: str | os.PathLike, revision: str | None = None,
                   base: Path | None = None) -> str:
    """Content key of a ControlNet: sha256 over its config and weights."""
    root = _controlnet_dir(controlnet, revision, base)
    files = [root / "config.json", root / "diffusion_pytorch_model.safetensors"]
    h = hashlib.sha256(b"tokenflow-controlnet-key-v1\n")
    for file, digest in zip(files, file_digests(files)):
        h.update(f"{file.name}\0{digest}\n".encode())
    return h.hexdigest()


def controlnet_misfit(config: dict, unet_config) -> str | None:
    """Why a ControlNet of this ``config.json`` cannot feed residuals to a UNet of
    ``unet_config`` (``None`` when it can): the residuals' channels, count and inputs differ."""
    for field_name in ("block_out_channels", "layers_per_block", "cross_attention_dim",
                       "in_channels"):
        want, got = unet_config.get(field_name), config.get(field_name)
        if isinstance(want, (list, tuple)):
            want, got = list(want), list(got) if isinstance(got, (list, tuple)) else got
        if got != want:
            return f"{field_name} is {got}, the UNet's is {want}"
    return None


def load_controlnet(controlnet: str | os.PathLike, model: Model, revision: str | None = None):
    """A frozen ``ControlNetModel`` on ``model``'s device and dtype, checked to fit its UNet."""
    from diffusers import ControlNetModel

    root = _controlnet_dir(controlnet, revision, model.root)
    name = os.fspath(controlnet)
    config = read_json(root / "config.json")
    misfit = controlnet_misfit(config, model.unet.config)
    if misfit:
        raise ModelError(f"ControlNet {name} does not fit this UNet: {misfit}")
    downs = len(config.get("conditioning_embedding_out_channels") or (16, 32, 96, 256)) - 1
    if 2 ** downs != model.vae_scale_factor:
        raise ModelError(f"ControlNet {name} downsamples control images {2 ** downs}x, the VAE "
                         f"{model.vae_scale_factor}x")
    kwargs: dict[str, Any] = {"use_safetensors": True, "torch_dtype": model.dtype,
                              "local_files_only": True}
    if importlib.util.find_spec("accelerate") is None:
        kwargs["low_cpu_mem_usage"] = False
    try:
        net = ControlNetModel.from_pretrained(root, **kwargs)
    except Exception as exc:  # noqa: BLE001 - surface library errors as one line
        raise ModelError(f"ControlNet {name} could not be loaded ({error_line(exc, 160, sentence=True)})") from None
    return net.to(model.device).eval().requires_grad_(False)
