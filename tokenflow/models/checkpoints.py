"""Validating a diffusers Stable Diffusion checkpoint before loading it: configs, the UNet block
layout TokenFlow hooks into, and safetensors weights (pickles are never loaded); what a local
checkpoint says without loading anything (its scheduler config, the stage parameters its
``tokenflow.json`` suggests). Only :func:`check_unet_layout` imports torch and diffusers."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tokenflow.models.vocabulary import Vocabulary


class ModelError(ValueError):
    """One clear line for the user: not a diffusers SD checkpoint, unsupported (e.g. SDXL), missing files, etc."""


class MissingFiles(ModelError):
    """Files are absent (for Hub ids this can mean an incomplete cache, so a download is worth trying)."""


#: Stable Diffusion's DDIM settings; used for keys missing from a checkpoint's scheduler config.
SD_SCHEDULER_CONFIG: dict[str, Any] = {
    "num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
    "clip_sample": False, "set_alpha_to_one": False, "steps_offset": 1, "prediction_type": "epsilon",
    "timestep_spacing": "leading",
}
PREDICTION_TYPES = ("epsilon", "v_prediction")
# (subfolder, weights file stem) of the components whose weights are loaded.
WEIGHTS = (("unet", "diffusion_pytorch_model"), ("vae", "diffusion_pytorch_model"), ("text_encoder", "model"))
#: A checkpoint's own settings for tokenflow, beside ``model_index.json``: ``label`` and
#: ``defaults`` (suggested stage parameters, ``{"kind.param": value}``).
EXTRAS_FILE = "tokenflow.json"
#: What a Hub download fetches first (the configs, checked before any weights) and then.
HUB_CONFIG_FILES = (["model_index.json", EXTRAS_FILE, "scheduler/*.json", "tokenizer/*"]
                    + [f"{s}/config.json" for s, _ in WEIGHTS])
HUB_WEIGHT_FILES = [p for s, stem in WEIGHTS for p in (f"{s}/{stem}.safetensors*", f"{s}/{stem}-*.safetensors")]
#: Where the trained embedded default model ships (package data; ``python -m tokenflow.embedded.train export``).
EMBEDDED_DIR = Path(__file__).resolve().parents[1] / "embedded"


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MissingFiles(f"{path} is missing") from None
    except (OSError, ValueError) as exc:
        raise ModelError(f"{path} could not be read as JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ModelError(f"{path} is not a JSON object")
    return data


def _require_index(root: Path, name: str) -> None:
    if not (root / "model_index.json").is_file():
        raise MissingFiles(f"{name} is not a diffusers Stable Diffusion checkpoint (no model_index.json)")


def check_configs(root: Path, name: str) -> dict[str, Any]:
    """Validate a checkpoint directory except its weights; return the DDIM scheduler config to use."""
    _require_index(root, name)
    index = read_json(root / "model_index.json")
    if "text_encoder_2" in index or "XL" in str(index.get("_class_name", "")):
        raise ModelError(f"{name}: SDXL checkpoints are not supported (use a Stable Diffusion 1.x/2.x model)")
    missing = [sub for sub in ("unet", "vae", "text_encoder", "tokenizer") if not (root / sub).is_dir()]
    if missing:
        raise MissingFiles(f"{name} is not a complete Stable Diffusion checkpoint (missing {', '.join(missing)}/)")
    for sub, cls in (("unet", "UNet2DConditionModel"), ("vae", "AutoencoderKL"), ("text_encoder", "CLIPTextModel")):
        entry = index.get(sub)
        found = entry[-1] if isinstance(entry, list) and entry else None
        if found not in (cls, None):
            raise ModelError(f"{name}: unsupported {sub} class {found} (expected {cls})")
    unet_config = read_json(root / "unet" / "config.json")
    if unet_config.get("addition_embed_type"):
        raise ModelError(f"{name}: SDXL checkpoints are not supported "
                         f"(unet addition_embed_type={unet_config['addition_embed_type']!r})")
    check_unet_layout(unet_config, name)
    return scheduler_config(root, name)


def scheduler_config(root: Path, name: str) -> dict[str, Any]:
    """The DDIM scheduler config of a checkpoint directory: its ``scheduler/scheduler_config.json``
    over :data:`SD_SCHEDULER_CONFIG`; :class:`ModelError` for an unsupported prediction type."""
    scheduler_file = root / "scheduler" / "scheduler_config.json"
    config = {**SD_SCHEDULER_CONFIG, **(read_json(scheduler_file) if scheduler_file.is_file() else {})}
    if config.get("prediction_type") not in PREDICTION_TYPES:
        raise ModelError(f"{name}: unsupported prediction_type {config.get('prediction_type')!r} "
                         f"(supported: {', '.join(PREDICTION_TYPES)})")
    return config


def locate_checkpoint(model: str | os.PathLike | None) -> Path | None:
    """The directory of ``model`` on this machine without asking the Hub: the embedded model's
    for None, the directory itself for a directory; None for a Hub id. :class:`ModelError` for a
    file, a directory that is not a diffusers checkpoint, or a name that is neither a directory
    nor a valid Hub id."""
    if model is None:
        return EMBEDDED_DIR
    text = os.fspath(model)
    path = Path(text).expanduser()
    if path.is_file():
        raise ModelError(f"{text} is a file, not a diffusers Stable Diffusion directory (single-file "
                         ".ckpt/.safetensors checkpoints are not supported)")
    if path.is_dir():
        _require_index(path, text)
        return path
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(text)
    except Exception:  # noqa: BLE001
        raise ModelError(f"{text} does not exist (neither a directory nor a Hugging Face model id)") from None
    return None


def checkpoint_extras(root: Path | None) -> dict[str, Any]:
    """The checkpoint's :data:`EXTRAS_FILE` (``{}`` without one); ``defaults`` is always a dict,
    ``vocabulary`` a :class:`tokenflow.models.vocabulary.Vocabulary` or None."""
    if root is None or not (root / EXTRAS_FILE).is_file():
        return {"defaults": {}, "vocabulary": None}
    extras = read_json(root / EXTRAS_FILE)
    defaults = extras.get("defaults", {})
    if not isinstance(defaults, dict):
        raise ModelError(f"{root / EXTRAS_FILE}: 'defaults' is not an object of "
                         '"kind.param": value pairs')
    try:
        vocabulary = Vocabulary.from_json(extras.get("vocabulary"))
    except ValueError as exc:
        raise ModelError(f"{root / EXTRAS_FILE}: {exc}") from None
    return {**extras, "defaults": dict(defaults), "vocabulary": vocabulary}


@dataclass(frozen=True)
class Checkpoint:
    """What a run knows of its model before loading it, read from the checkpoint's files without
    torch: its id, directory, suggested stage parameters (``tokenflow.json``'s ``defaults``) and
    DDIM scheduler config. A stage ``check`` that declares a ``checkpoint`` argument and no
    ``model`` runs before the model loads (``Model.checkpoint`` gives the same for a loaded
    model)."""

    model_id: str
    root: Path | None
    defaults: dict[str, Any] = field(default_factory=dict)
    scheduler_config: dict[str, Any] = field(default_factory=dict)


def _hub_cached_root(repo_id: str, revision: str | None) -> Path | None:
    """The local snapshot of a Hub model holding its configs, if the Hugging Face cache has one
    (no network)."""
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(repo_id, "model_index.json", revision=revision)
    except Exception:  # noqa: BLE001 - an invalid id, or no cache: nothing local
        return None
    return Path(found).parent if isinstance(found, str) else None


def read_checkpoint(model: str | os.PathLike | None, revision: str | None = None) -> Checkpoint | None:
    """The :class:`Checkpoint` of ``model`` (None: the embedded model; a directory; a Hub id, from
    the local Hugging Face cache) without loading it, or None for a Hub model whose files are not
    on this machine. :class:`ModelError` for a path that is not a checkpoint
    (:func:`locate_checkpoint`) or configs that cannot be read."""
    root = locate_checkpoint(model)
    if root is None:
        root = _hub_cached_root(os.fspath(model), revision)
    if root is None or not (root / "model_index.json").is_file():
        return None
    model_id = "embedded" if model is None else os.fspath(model)
    return Checkpoint(model_id=model_id, root=root, defaults=checkpoint_extras(root)["defaults"],
                      scheduler_config=scheduler_config(root, model_id))


def check_unet_layout(unet_config: dict[str, Any], name: str) -> None:
    """Build the UNet on the meta device (no memory, no weights) and check the blocks TokenFlow hooks into."""
    import torch
    from diffusers import UNet2DConditionModel

    try:
        with torch.device("meta"):
            unet = UNet2DConditionModel.from_config(unet_config)
    except Exception as exc:  # noqa: BLE001 - any failure means an unusable config
        raise ModelError(f"{name}: unet/config.json is not a usable UNet2DConditionModel config ({exc})") from None
    from tokenflow.editing.attention import self_attention_layers
    from tokenflow.editing.editors import pnp_qk_layers

    if not pnp_qk_layers(self_attention_layers(unet)):
        raise ModelError(f"{name}: unsupported UNet layout: TokenFlow injects the self-attention "
                         "of the decoder's attention blocks after the first, and this UNet has none "
                         "(Stable Diffusion's layout has 3 cross-attention up blocks)")


def check_weights(root: Path, name: str) -> None:
    """Require safetensors weights for every component; pickles are never loaded."""
    for sub, stem in WEIGHTS:
        folder = root / sub
        if (folder / f"{stem}.safetensors").is_file() or (folder / f"{stem}.safetensors.index.json").is_file():
            continue
        if any(f.suffix in (".bin", ".ckpt", ".pt", ".pth") for f in folder.iterdir()):
            raise ModelError(f"{name}: {sub}/ has only pickle (.bin) weights; safetensors weights are required "
                             f"({sub}/{stem}.safetensors)")
        raise MissingFiles(f"{name}: no {sub}/{stem}.safetensors weights (only safetensors weights are loaded)")
