"""Scorers ``attribute``, ``attribute-background`` and ``clip``: how well edited frames match the
prompt (``tf eval``).

* ``attribute`` and ``attribute-background`` read the embedded model's world (``tokenflow.world``,
  world v2) by its rules, without any learned model. The prompt is read as the world writes its
  captions, ``a red checkered ball and a blue box on wood``: the objects before ``on``, joined by
  ``and``, each with at most one colour and one texture (``striped``, ``dotted``, ``checkered``,
  ``ringed``). ``attribute`` scores a frame 1.0 if every object the prompt names is there: each
  named object matched to a different object of the frame (``object_masks``) with its colour
  (``object_colour``) and, when the prompt names one, its texture (``texture_kind``); an object
  named without a texture word may have any texture, and objects the prompt does not name are
  ignored. ``attribute-background`` scores 1.0 if the background away from the objects
  (``background_kind``) is the one the prompt names. Else 0.0.
* ``clip`` is the usual CLIP score: ``100 * cos(image embedding, text embedding)``, clipped at 0,
  per frame, with a CLIP model loaded from a local directory (``--clip PATH``: a
  ``transformers`` CLIP checkpoint with ``model.safetensors``; pickled weights are never loaded).
"""

from __future__ import annotations

import itertools
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tokenflow import StageError, hookimpl, world

_WORDS = re.compile(r"[a-z]+")


# --------------------------------------------------------------------------------------------- world


@dataclass(frozen=True)
class NamedThing:
    """An object a prompt names: its colour and texture word, ``None`` where it names none."""

    colour: str | None
    texture: str | None


def prompt_things(prompt: str) -> list[NamedThing]:
    """The objects the prompt names, in order: its words before the last ``on`` (all of them if
    there is none), split at ``and``; a part naming no colour and no texture is no object.
    :class:`StageError` if a part names several colours or several textures."""
    words = _WORDS.findall(prompt.lower())
    if "on" in words:
        words = words[:len(words) - 1 - words[::-1].index("on")]
    things = []
    for is_and, group in itertools.groupby(words, key=lambda w: w == "and"):
        part = list(group)
        if is_and:
            continue
        colours = list(dict.fromkeys(w for w in part if w in world.COLOURS))
        textures = list(dict.fromkeys(w for w in part if w in world.TEXTURES and w != "plain"))
        for kind, found in (("colours", colours), ("textures", textures)):
            if len(found) > 1:
                raise StageError(f"the prompt names several {kind} for one object "
                                 f"({', '.join(found)}): {' '.join(part)!r}")
        if colours or textures:
            things.append(NamedThing(colours[0] if colours else None,
                                     textures[0] if textures else None))
    return things


def prompt_backgrounds(prompt: str) -> list[str]:
    """The world backgrounds the prompt names (whole words: ``wood``, ``tiles``)."""
    words = set(_WORDS.findall(prompt.lower()))
    return [bg for bg in world.BACKGROUNDS if bg in words]


def frame_has(frame: np.ndarray, things: list[NamedThing]) -> bool:
    """Whether every one of ``things`` is a different object of ``frame`` with its colour and
    (when named) texture."""
    masks = world.object_masks(frame)
    if len(masks) < len(things):
        return False
    colours = [world.object_colour(frame, m) for m in masks]
    textures: dict[int, str] = {}  # read only for objects whose texture is asked about

    def fits(thing: NamedThing, k: int) -> bool:
        if thing.colour is not None and colours[k] != thing.colour:
            return False
        if thing.texture is not None and k not in textures:
            textures[k] = world.texture_kind(frame, masks[k])
        return thing.texture is None or textures[k] == thing.texture

    return any(all(fits(t, k) for t, k in zip(things, order))
               for order in itertools.permutations(range(len(masks)), len(things)))


class AttributeScorer:
    """1.0 for a frame in which every object the prompt names is there, with the colour and
    (when the prompt names one) the texture it names, else 0.0 (see the module's docstring)."""

    name = "attribute"
    version = 2
    summary = ("1 if every object the prompt names is there with its colour and texture, else 0 "
               "(the embedded model's world)")

    def available(self, prompt: str | None = None) -> str | None:
        """``None`` if ``prompt`` names at least one world object by colour or texture, and no
        object with two colours or two textures (or no prompt is given)."""
        if prompt is None:
            return None
        try:
            things = prompt_things(prompt)
        except StageError as exc:
            return str(exc)
        if not things:
            return ("the prompt names no object colour or texture of the world "
                    f"({', '.join(world.COLOURS)}; {', '.join(world.TEXTURES[1:])})")
        return None

    def describe(self) -> str:
        return "attribute (object colour and texture, 0/1)"

    def score(self, frames: np.ndarray, prompt: str, *, source: np.ndarray | None = None
              ) -> np.ndarray:
        reason = self.available(prompt)
        if reason is not None:
            raise StageError(reason)
        things = prompt_things(prompt)
        return np.array([float(frame_has(f, things)) for f in frames])


class BackgroundScorer:
    """1.0 for a frame whose background (``tokenflow.world.background_kind`` of the pixels away
    from the objects) is the one the prompt names, else 0.0."""

    name = "attribute-background"
    version = 2
    summary = "1 if the background is the one the prompt names, else 0 (the embedded model's world)"

    def available(self, prompt: str | None = None) -> str | None:
        """``None`` if ``prompt`` names exactly one world background (or no prompt is given)."""
        if prompt is None:
            return None
        backgrounds = prompt_backgrounds(prompt)
        if not backgrounds:
            return f"the prompt names no background of the world ({', '.join(world.BACKGROUNDS)})"
        if len(backgrounds) > 1:
            return f"the prompt names several backgrounds ({', '.join(backgrounds)})"
        return None

    def describe(self) -> str:
        return "attribute-background (background, 0/1)"

    def score(self, frames: np.ndarray, prompt: str, *, source: np.ndarray | None = None
              ) -> np.ndarray:
        reason = self.available(prompt)
        if reason is not None:
            raise StageError(reason)
        (target,) = prompt_backgrounds(prompt)
        return np.array([float(world.read_frame(f)["background"] == target) for f in frames])


# --------------------------------------------------------------------------------------------- clip


def _image_processor_class():
    """transformers' PIL-backed CLIP image processor: ``CLIPImageProcessorPil`` (5.x; the
    default ``CLIPImageProcessor`` there needs torchvision), ``CLIPImageProcessor`` before."""
    import transformers

    try:
        return transformers.CLIPImageProcessorPil
    except AttributeError:
        return transformers.CLIPImageProcessor


def _one_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


class ClipScorer:
    """CLIP score per frame: ``100 * max(0, cos(image embedding, prompt embedding))``; about
    20 to 35 for a matching caption with OpenAI's ViT-B/32 and ViT-L/14.

    Options: ``clip`` (a local directory with a transformers CLIP checkpoint: ``config.json``
    of ``model_type`` ``clip``, ``model.safetensors``, the tokenizer files and
    ``preprocessor_config.json``) and ``device`` (default: CUDA if available, else CPU). Frames
    are preprocessed by transformers' PIL image processor with the directory's settings
    (shortest side resized bicubic, centre crop, the config's mean and std); the prompt is
    truncated to the text model's length.
    """

    name = "clip"
    version = 1
    summary = "CLIP score: 100 x cosine of frame and prompt embeddings, clipped at 0 (--clip PATH)"
    batch_size = 16

    def __init__(self, clip: str | os.PathLike | None = None, device: str | None = None) -> None:
        self.clip = clip
        self.device = device
        self._parts: tuple | None = None  # (model, tokenizer, processor, device) once loaded
        self._reason: str | None = None

    def describe(self) -> str:
        return "clip (CLIP score, 0-100)"

    def _check_directory(self) -> str | None:
        if self.clip is None or str(self.clip) == "":
            return "no CLIP weights: pass --clip PATH (a local transformers CLIP directory)"
        root = Path(self.clip).expanduser()
        if not root.is_dir():
            return f"--clip {self.clip}: no such directory"
        try:
            config = json.loads((root / "config.json").read_text())
        except FileNotFoundError:
            return f"--clip {self.clip} is not a CLIP directory: it has no config.json"
        except (OSError, ValueError) as exc:
            return f"--clip {self.clip}: cannot read config.json: {_one_line(exc)}"
        if not isinstance(config, dict) or config.get("model_type") != "clip":
            kind = config.get("model_type") if isinstance(config, dict) else None
            return (f"--clip {self.clip} is not a CLIP directory: config.json has model_type "
                    f"{kind!r}, expected 'clip'")
        if not any((root / f).is_file() for f in ("model.safetensors",
                                                    "model.safetensors.index.json")):
            return (f"--clip {self.clip} has no model.safetensors "
                    "(tokenflow never loads pickled weights)")
        if not (root / "tokenizer.json").is_file() and not (
                (root / "vocab.json").is_file() and (root / "merges.txt").is_file()):
            return f"--clip {self.clip} has no tokenizer (vocab.json and merges.txt)"
        if not (root / "preprocessor_config.json").is_file():
            return f"--clip {self.clip} has no preprocessor_config.json"
        return None

    def _load(self) -> str | None:
        reason = self._check_directory()
        if reason is not None:
            return reason
        try:
            import torch
            from transformers import CLIPModel, CLIPTokenizer

            root = Path(self.clip).expanduser()
            device = torch.device(self.device or ("cuda" if torch.cuda.is_available() else "cpu"))
            model = CLIPModel.from_pretrained(root, local_files_only=True, use_safetensors=True)
            model = model.to(device=device, dtype=torch.float32).eval()
            tokenizer = CLIPTokenizer.from_pretrained(root, local_files_only=True)
            processor = _image_processor_class().from_pretrained(root, local_files_only=True)
        except Exception as exc:  # noqa: BLE001 - library errors as the one-line reason
            return f"could not load CLIP from --clip {self.clip}: {_one_line(exc)}"
        self._parts = (model, tokenizer, processor, device)
        return None

    def available(self) -> str | None:
        """``None`` once the model, tokenizer and image processor are loaded (the first call
        loads them), else the one-line reason they cannot be."""
        if self._parts is None and self._reason is None:
            self._reason = self._load()
        return self._reason

    def score(self, frames: np.ndarray, prompt: str, *, source: np.ndarray | None = None
              ) -> np.ndarray:
        import torch
        from PIL import Image

        reason = self.available()
        if reason is not None:
            raise StageError(reason)
        model, tokenizer, processor, device = self._parts
        length = min(int(tokenizer.model_max_length),
                     int(model.config.text_config.max_position_embeddings))
        text = tokenizer([prompt], padding=True, truncation=True, max_length=length,
                         return_tensors="pt")
        out = []
        with torch.inference_mode():
            ids, mask = text["input_ids"].to(device), text["attention_mask"].to(device)
            pooled = model.text_model(input_ids=ids, attention_mask=mask).pooler_output
            text_embed = torch.nn.functional.normalize(model.text_projection(pooled), dim=-1)
            for start in range(0, len(frames), self.batch_size):
                batch = frames[start:start + self.batch_size]
                images = [Image.fromarray(np.asarray(f)) for f in batch]
                pixels = processor(images=images, return_tensors="pt")["pixel_values"]
                pixels = pixels.to(device, torch.float32)
                pooled = model.vision_model(pixel_values=pixels).pooler_output
                image_embed = torch.nn.functional.normalize(model.visual_projection(pooled), dim=-1)
                out.append((100.0 * image_embed @ text_embed[0]).clamp(min=0.0).cpu().double())
        return torch.cat(out).numpy()


@hookimpl
def register_scorers(register):
    register(AttributeScorer)
    register(BackgroundScorer)
    register(ClipScorer)
