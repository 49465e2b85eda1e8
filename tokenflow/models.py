"""Loading Stable Diffusion (1.x / 2.x) components for TokenFlow, plus tiny random models for tests.

Only diffusers-format checkpoints with ``.safetensors`` weights are accepted: pickled ``.bin`` weights are
never loaded.  A checkpoint is either a local directory (``model_index.json`` + ``unet/``, ``vae/``,
``text_encoder/``, ``tokenizer/``, optional ``scheduler/``) or a Hugging Face Hub id, which is resolved from
the local cache first and downloaded only when missing.

Every loaded :class:`Model` carries a ``key``: a sha256 over the weight/config/tokenizer file contents and the
dtype, so stage caches can tell apart results computed with different weights.  File digests are memoised in
``~/.cache/tokenflow/filehash.json`` (directory overridable with ``TOKENFLOW_HASH_CACHE``).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from .world import WORDS

__all__ = ["Model", "ModelError", "build_tiny_model", "default_device", "default_dtype", "load_model",
           "parse_dtype", "save_tiny_model", "tiny_tokenizer"]


class ModelError(ValueError):
    """One clear line for the user: not a diffusers SD checkpoint, unsupported (e.g. SDXL), missing files, etc."""


class _MissingFiles(ModelError):
    """Files are absent (for Hub ids this can mean an incomplete cache, so a download is worth trying)."""


#: Stable Diffusion's DDIM settings; used for keys missing from a checkpoint's scheduler config.
SD_SCHEDULER_CONFIG: dict[str, Any] = {
    "num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
    "clip_sample": False, "set_alpha_to_one": False, "steps_offset": 1, "prediction_type": "epsilon",
    "timestep_spacing": "leading",
}
_PREDICTION_TYPES = ("epsilon", "v_prediction")
_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
           "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
# (subfolder, weights file stem) of the components whose weights are loaded.
_WEIGHTS = (("unet", "diffusion_pytorch_model"), ("vae", "diffusion_pytorch_model"), ("text_encoder", "model"))
_HUB_CONFIG_FILES = ["model_index.json", "scheduler/*.json", "tokenizer/*"] + [f"{s}/config.json" for s, _ in _WEIGHTS]
_HUB_WEIGHT_FILES = [p for s, stem in _WEIGHTS for p in (f"{s}/{stem}.safetensors*", f"{s}/{stem}-*.safetensors")]
_TINY_WORDS: tuple[str, ...] = tuple((
    "a an the of on in with and at is photo painting picture video style cartoon red blue green yellow white black "
    "small big ball box floor table cat dog car man woman person tree sky house water street road beach grass snow "
    "city sunset walking running"
).split())
_TINY_WORDS += tuple(w for w in WORDS if w not in _TINY_WORDS)  # the embedded model's world
#: Where the trained embedded default model ships (package data; ``python -m tokenflow.train export``).
EMBEDDED_DIR = Path(__file__).resolve().parent / "embedded"


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

    @property
    def vae_scale_factor(self) -> int:
        """Pixel size of one latent cell (8 for Stable Diffusion)."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

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


# --------------------------------------------------------------------------------------------- tiny models


def _byte_chars() -> list[str]:
    """The 256 byte-level BPE symbols (printable bytes map to themselves, the rest to code points >= 256)."""
    printable = {*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)}
    extra = iter(range(256, 512))
    return [chr(b) if b in printable else chr(next(extra)) for b in range(256)]


def _apply_merges(symbols: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """Plain BPE on one word: repeatedly merge the lowest-ranked (then leftmost) adjacent pair."""
    while True:
        candidates = [(ranks[pair], i) for i, pair in enumerate(zip(symbols, symbols[1:])) if pair in ranks]
        if not candidates:
            return symbols
        _, i = min(candidates)
        symbols = [*symbols[:i], symbols[i] + symbols[i + 1], *symbols[i + 2:]]


def _write_tokenizer_files(directory: Path) -> None:
    """Write ``vocab.json`` and ``merges.txt`` of the tiny CLIP BPE vocabulary into ``directory``."""
    chars = _byte_chars()
    vocab = chars + [c + "</w>" for c in chars]
    ranks: dict[tuple[str, str], int] = {}
    for word in _TINY_WORDS:
        # New merges go after all existing ones, so words that already merge to one token are unaffected.
        symbols = _apply_merges([*word[:-1], word[-1] + "</w>"], ranks)
        while len(symbols) > 1:
            ranks[(symbols[0], symbols[1])] = len(ranks)
            symbols = [symbols[0] + symbols[1], *symbols[2:]]
            if symbols[0] not in vocab:
                vocab.append(symbols[0])
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}, ensure_ascii=False),
                                          encoding="utf-8")
    lines = ["#version: 0.2"] + [f"{a} {b}" for a, b in sorted(ranks, key=ranks.__getitem__)]
    (directory / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")


def tiny_tokenizer(directory: str | os.PathLike) -> CLIPTokenizer:
    """Write and load a small offline CLIP tokenizer (bytes + a few dozen whole English words, 77 tokens)."""
    directory = Path(directory)
    _write_tokenizer_files(directory)
    tokenizer = CLIPTokenizer.from_pretrained(directory, model_max_length=77, local_files_only=True)
    for word in _TINY_WORDS:  # invariant: every listed word is a single token
        ids = tokenizer(word, add_special_tokens=False).input_ids
        if len(ids) != 1:
            raise RuntimeError(f"tiny tokenizer splits {word!r} into {len(ids)} tokens")
    return tokenizer


def _reinit_zero_weights(module: torch.nn.Module) -> None:
    """Give small random values to weight matrices/kernels that are exactly zero (uses the current RNG)."""
    for param in module.parameters():
        if param.ndim >= 2 and not torch.any(param):
            with torch.no_grad():
                param.normal_(0.0, 0.02)


def build_tiny_model(layout: str = "sd15", *, seed: int = 0, sample_size: int = 16,
                     prediction_type: str = "epsilon") -> dict[str, Any]:
    """Randomly initialised SD-shaped components (stock classes): ``unet``, ``vae``, ``text_encoder``,
    ``tokenizer``, ``scheduler``.

    Both layouts keep SD's block layout (3 cross-attention down/up blocks, ``layers_per_block=2``, channels
    (32, 64, 64, 64)); ``"sd15"`` has conv ``proj_in`` and 8 heads, ``"sd21"`` SD 2.x's linear ``proj_in`` and
    per-block head counts (16-channel heads). The VAE downsamples 8x: ``sample_size`` 16 means 128 px images.
    Weights come from ``torch.manual_seed(seed)`` inside ``torch.random.fork_rng`` (global RNG untouched). Any
    all-zero weight tensor (some diffusers versions zero-init ``conv_out``/``proj_out``, silencing outputs) gets
    small seeded noise instead; a no-op on diffusers 0.42, where only norm biases start at zero.
    """
    if layout not in ("sd15", "sd21"):
        raise ModelError(f"unknown tiny layout {layout!r}: use 'sd15' or 'sd21'")
    if prediction_type not in _PREDICTION_TYPES:
        raise ModelError(f"unsupported prediction_type {prediction_type!r}: use one of {_PREDICTION_TYPES}")
    with tempfile.TemporaryDirectory(prefix="tokenflow-tok-") as tmp:
        tokenizer = tiny_tokenizer(tmp)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            sample_size=sample_size, in_channels=4, out_channels=4,
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
            block_out_channels=(32, 64, 64, 64), layers_per_block=2, norm_num_groups=8, cross_attention_dim=64,
            # diffusers' SD naming quirk: ``attention_head_dim`` is really the number of heads.
            attention_head_dim=8 if layout == "sd15" else (2, 4, 4, 4),
            use_linear_projection=layout == "sd21",
        )
        vae = AutoencoderKL(
            in_channels=3, out_channels=3, latent_channels=4, sample_size=sample_size * 8,
            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
            block_out_channels=(16, 32, 32, 32), layers_per_block=1, norm_num_groups=8, scaling_factor=0.18215,
        )
        text_encoder = CLIPTextModel(CLIPTextConfig(
            vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, max_position_embeddings=77, projection_dim=64,
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        ))
        for module in (unet, vae, text_encoder):
            _reinit_zero_weights(module)
    scheduler = DDIMScheduler.from_config({**SD_SCHEDULER_CONFIG, "prediction_type": prediction_type})
    return {"unet": unet, "vae": vae, "text_encoder": text_encoder, "tokenizer": tokenizer, "scheduler": scheduler}


def save_tiny_model(directory: str | os.PathLike, layout: str = "sd15", *, seed: int = 0, sample_size: int = 16,
                    prediction_type: str = "epsilon") -> Path:
    """Save a tiny random model as a diffusers directory (safetensors) loadable by :func:`load_model` and
    ``StableDiffusionPipeline.from_pretrained(directory, local_files_only=True)``."""
    from diffusers import StableDiffusionPipeline

    parts = build_tiny_model(layout, seed=seed, sample_size=sample_size, prediction_type=prediction_type)
    pipe = StableDiffusionPipeline(**parts, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    directory = Path(directory)
    pipe.save_pretrained(directory, safe_serialization=True)
    _write_tokenizer_files(directory / "tokenizer")  # slow-tokenizer files too, for older transformers
    return directory


# --------------------------------------------------------------------------------------------- content keys


def _write_memo(path: Path, memo: dict[str, Any]) -> None:
    """Atomically replace the memo file (temp file + ``os.replace``); failures only cost a re-hash later."""
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".filehash-", suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump({p: e for p, e in memo.items() if os.path.exists(p)}, fh)  # drop vanished files
        os.replace(tmp, path)
    except OSError:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


def _file_digests(files: list[Path]) -> list[str]:
    """sha256 of each file, memoised in ``filehash.json`` by (absolute path, size, mtime_ns)."""
    memo_path = Path(os.environ.get("TOKENFLOW_HASH_CACHE") or Path.home() / ".cache" / "tokenflow") / "filehash.json"
    try:
        memo = json.loads(memo_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        memo = {}  # missing or corrupt: start afresh
    memo = memo if isinstance(memo, dict) else {}
    changed = False
    digests = []
    for file in files:
        st = file.stat()
        entry = memo.get(str(file.absolute()))
        if isinstance(entry, dict) and entry.get("size") == st.st_size and entry.get("mtime_ns") == st.st_mtime_ns:
            digests.append(str(entry.get("sha256")))
            continue
        h = hashlib.sha256()
        with open(file, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        digests.append(h.hexdigest())
        memo[str(file.absolute())] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": digests[-1]}
        changed = True
    if changed:
        _write_memo(memo_path, memo)
    return digests


def _directory_key(root: Path, dtype: torch.dtype) -> str:
    """Key of a checkpoint directory: weights, component configs, tokenizer and scheduler files, and dtype."""
    files = [f for sub, stem in _WEIGHTS for pattern in (f"{stem}.safetensors", f"{stem}-*-of-*.safetensors")
             for f in (root / sub).glob(pattern)]
    files += [root / sub / "config.json" for sub, _ in _WEIGHTS]
    files += [f for sub in ("tokenizer", "scheduler") for f in (root / sub).glob("*") if f.is_file()]
    files = sorted(files, key=lambda f: f.relative_to(root).as_posix())
    h = hashlib.sha256(b"tokenflow-model-key-v1\n")
    for file, digest in zip(files, _file_digests(files)):
        h.update(f"{file.relative_to(root).as_posix()}\0{digest}\n".encode())
    h.update(str(dtype).encode())
    return h.hexdigest()


# --------------------------------------------------------------------------------------------- validation


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise _MissingFiles(f"{path} is missing") from None
    except (OSError, ValueError) as exc:
        raise ModelError(f"{path} could not be read as JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ModelError(f"{path} is not a JSON object")
    return data


def _check_configs(root: Path, name: str) -> dict[str, Any]:
    """Validate a checkpoint directory except its weights; return the DDIM scheduler config to use."""
    if not (root / "model_index.json").is_file():
        raise _MissingFiles(f"{name} is not a diffusers Stable Diffusion checkpoint (no model_index.json)")
    index = _read_json(root / "model_index.json")
    if "text_encoder_2" in index or "XL" in str(index.get("_class_name", "")):
        raise ModelError(f"{name}: SDXL checkpoints are not supported (use a Stable Diffusion 1.x/2.x model)")
    missing = [sub for sub in ("unet", "vae", "text_encoder", "tokenizer") if not (root / sub).is_dir()]
    if missing:
        raise _MissingFiles(f"{name} is not a complete Stable Diffusion checkpoint (missing {', '.join(missing)}/)")
    for sub, cls in (("unet", "UNet2DConditionModel"), ("vae", "AutoencoderKL"), ("text_encoder", "CLIPTextModel")):
        entry = index.get(sub)
        found = entry[-1] if isinstance(entry, list) and entry else None
        if found not in (cls, None):
            raise ModelError(f"{name}: unsupported {sub} class {found} (expected {cls})")
    unet_config = _read_json(root / "unet" / "config.json")
    if unet_config.get("addition_embed_type"):
        raise ModelError(f"{name}: SDXL checkpoints are not supported "
                         f"(unet addition_embed_type={unet_config['addition_embed_type']!r})")
    _check_unet_layout(unet_config, name)
    scheduler_file = root / "scheduler" / "scheduler_config.json"
    config = {**SD_SCHEDULER_CONFIG, **(_read_json(scheduler_file) if scheduler_file.is_file() else {})}
    if config.get("prediction_type") not in _PREDICTION_TYPES:
        raise ModelError(f"{name}: unsupported prediction_type {config.get('prediction_type')!r} "
                         f"(supported: {', '.join(_PREDICTION_TYPES)})")
    return config


def _check_unet_layout(unet_config: dict[str, Any], name: str) -> None:
    """Build the UNet on the meta device (no memory, no weights) and check the blocks TokenFlow hooks into."""
    try:
        with torch.device("meta"):
            unet = UNet2DConditionModel.from_config(unet_config)
    except Exception as exc:  # noqa: BLE001 - any failure means an unusable config
        raise ModelError(f"{name}: unet/config.json is not a usable UNet2DConditionModel config ({exc})") from None
    present = {n for n, _ in unet.named_modules()}
    attentions = [f"up_blocks.{b}.attentions.{a}" for b in (1, 2, 3) for a in (0, 1, 2)]
    missing = [w for w in ["up_blocks.1.resnets.1", *attentions] if w not in present]
    missing += [f"{w}.transformer_blocks.0.attn1" for w in attentions
                if w in present and f"{w}.transformer_blocks.0.attn1" not in present]
    if missing:
        raise ModelError(f"{name}: unsupported UNet layout, missing {', '.join(missing)} (TokenFlow needs the Stable "
                         "Diffusion block layout: 3 cross-attention up blocks with layers_per_block=2)")


def _check_weights(root: Path, name: str) -> None:
    """Require safetensors weights for every component; pickles are never loaded."""
    for sub, stem in _WEIGHTS:
        folder = root / sub
        if (folder / f"{stem}.safetensors").is_file() or (folder / f"{stem}.safetensors.index.json").is_file():
            continue
        if any(f.suffix in (".bin", ".ckpt", ".pt", ".pth") for f in folder.iterdir()):
            raise ModelError(f"{name}: {sub}/ has only pickle (.bin) weights; safetensors weights are required "
                             f"({sub}/{stem}.safetensors)")
        raise _MissingFiles(f"{name}: no {sub}/{stem}.safetensors weights (only safetensors weights are loaded)")


# --------------------------------------------------------------------------------------------- loading


def _one_line(exc: BaseException) -> str:
    first = (str(exc).strip().splitlines() or [""])[0].split(". ")[0][:160]
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def _hub_snapshot(repo_id: str, revision: str | None) -> Path:
    """Snapshot directory with the needed files of a Hub repo: from the cache if complete, else downloaded."""
    from huggingface_hub import snapshot_download

    for local_only in (True, False):
        try:
            kwargs: dict[str, Any] = {"revision": revision, "local_files_only": local_only}
            root = Path(snapshot_download(repo_id, allow_patterns=_HUB_CONFIG_FILES, **kwargs))
            _check_configs(root, repo_id)  # before fetching gigabytes of weights
            root = Path(snapshot_download(repo_id, allow_patterns=_HUB_WEIGHT_FILES, **kwargs))
            _check_weights(root, repo_id)
            return root
        except _MissingFiles:
            if not local_only:
                raise
        except ModelError:
            raise
        except Exception as exc:  # noqa: BLE001 - hub/network errors come in many types
            if not local_only:
                raise ModelError(f"{repo_id}: not a local directory, and not found in the Hugging Face cache nor "
                                 f"downloadable ({_one_line(exc)})") from None
    raise AssertionError("unreachable")


def _resolve(model: str | os.PathLike, revision: str | None) -> tuple[Path, str | None]:
    """(checkpoint directory, commit hash or None) for a local directory or a Hub id."""
    from huggingface_hub.utils import validate_repo_id

    text = os.fspath(model)
    path = Path(text).expanduser()
    if path.is_file():
        raise ModelError(f"{text} is a file, not a diffusers Stable Diffusion directory (single-file "
                         ".ckpt/.safetensors checkpoints are not supported)")
    if not path.is_dir():
        try:
            validate_repo_id(text)
        except Exception:  # noqa: BLE001
            raise ModelError(f"{text} does not exist (neither a directory nor a Hugging Face model id)") from None
        path = _hub_snapshot(text, revision)
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


def load_model(model: str | os.PathLike | None, *, device: torch.device | str | None = None,
               dtype: torch.dtype | str | None = None, revision: str | None = None) -> Model:
    """Load a frozen Stable Diffusion 1.x/2.x model (eval mode, no gradients) onto ``device`` in ``dtype``.

    ``model`` is a local diffusers directory, a Hugging Face Hub id (local cache first, then a download;
    ``revision`` picks a branch/tag/commit), or ``None`` for the embedded default model (package data).
    ``device``/``dtype`` default to :func:`default_device`/:func:`default_dtype`.
    Raises :class:`ModelError` with a one-line explanation for anything unusable.
    """
    device = _check_device(device) if device is not None else default_device()
    if not isinstance(dtype, torch.dtype):
        dtype = default_dtype(device) if dtype is None else parse_dtype(dtype)
    if model is None:
        if not (EMBEDDED_DIR / "model_index.json").is_file():
            raise ModelError(f"the embedded model is missing from this installation ({EMBEDDED_DIR}); "
                             "reinstall tokenflow or pass --model")
        model_id, root, rev = "embedded", EMBEDDED_DIR, None
    else:
        model_id = os.fspath(model)
        root, rev = _resolve(model, revision)
    scheduler_config = _check_configs(root, model_id)
    _check_weights(root, model_id)
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
        raise ModelError(f"{model_id}: could not load the components ({_one_line(exc)})") from None
    parts["scheduler"] = DDIMScheduler.from_config(scheduler_config)
    key = _directory_key(root, dtype)
    family = "SD-2.x-style" if parts["unet"].config.use_linear_projection else "SD-1.x-style"
    label = (f"{model_id}{f' @ {rev[:10]}' if rev else ''} "
             f"({family}, {scheduler_config['prediction_type']} prediction)")
    extra = _read_json(root / "tokenflow.json") if (root / "tokenflow.json").is_file() else {}
    label = extra.get("label", label)
    for name in ("unet", "vae", "text_encoder"):
        module = parts[name]
        if next(module.parameters()).dtype != dtype:  # cast only if needed: diffusers warns on every dtype .to()
            module.to(dtype=dtype)
        module.to(device).eval().requires_grad_(False)
    return Model(**parts, model_id=model_id, revision=rev, key=key, device=device, dtype=dtype, label=label,
                 defaults=dict(extra.get("defaults", {})), root=root)


# --------------------------------------------------------------------------------------------- ControlNet


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
                                     f"the Hugging Face cache nor downloadable ({_one_line(exc)})") from None
    config = _read_json(path / "config.json") if (path / "config.json").is_file() else None
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
    for file, digest in zip(files, _file_digests(files)):
        h.update(f"{file.name}\0{digest}\n".encode())
    return h.hexdigest()


def load_controlnet(controlnet: str | os.PathLike, model: Model, revision: str | None = None):
    """A frozen ``ControlNetModel`` on ``model``'s device and dtype, checked to fit its UNet."""
    from diffusers import ControlNetModel

    root = _controlnet_dir(controlnet, revision, model.root)
    name = os.fspath(controlnet)
    config = _read_json(root / "config.json")
    unet = model.unet.config
    for field_name in ("block_out_channels", "cross_attention_dim", "in_channels"):
        want, got = unet.get(field_name), config.get(field_name)
        if isinstance(want, (list, tuple)):
            want, got = list(want), list(got) if isinstance(got, (list, tuple)) else got
        if got != want:
            raise ModelError(f"ControlNet {name} does not fit this UNet: {field_name} is {got}, "
                             f"the UNet's is {want}")
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
        raise ModelError(f"ControlNet {name} could not be loaded ({_one_line(exc)})") from None
    return net.to(model.device).eval().requires_grad_(False)


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
