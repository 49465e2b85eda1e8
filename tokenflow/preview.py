"""The previews of a run's result, written beside ``edited.mp4``:

* ``preview.png``: a contact sheet of :data:`COLUMNS` evenly spaced frames, the source's row
  above the edit's, each row labelled ("source", "edit: <prompt>"), each column numbered, the
  frames enlarged (nearest neighbour) until the sheet is at least :data:`MIN_WIDTH` pixels
  wide, or shrunk first if they are taller than :data:`MAX_HEIGHT`;
* ``preview.gif``: source | edit side by side, labelled, looping at the video's frame rate.
  To keep it small, frames taller than :data:`GIF_MAX_HEIGHT` are shrunk, and a video of more
  than :data:`GIF_MAX_FRAMES` frames keeps every k-th frame (k = ceil(frames /
  GIF_MAX_FRAMES)), each shown k times as long, so the GIF lasts as long as the video.

The drawing is :mod:`tokenflow.frame_figures`' (``tf compare``'s sheets are the same).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from tokenflow.frame_figures import contact_sheet, labelled_side_by_side
from tokenflow.video import evenly_spaced, resize_frames, write_png

COLUMNS = 4
MIN_WIDTH = 512
MAX_HEIGHT = 256
GIF_MAX_FRAMES = 60
GIF_MAX_HEIGHT = 160


def edit_label(editor: Any) -> str:
    """"edit: <prompt>", or "edit: <editor name>" for an editor without a prompt."""
    prompt = getattr(getattr(editor, "params", None), "prompt", None)
    return f"edit: {prompt}" if prompt else f"edit: {editor.name}"


def _take(frames: Any, index: np.ndarray, crop: Callable | None = None) -> np.ndarray:
    """``frames[index]`` of a numpy array or a zarr array (orthogonal selection), through
    ``crop`` if given (the edit's frames are on the UNet's canvas: ``Source.crop``)."""
    picked = frames.oindex[index] if hasattr(frames, "oindex") else frames[index]
    if crop is not None:
        picked = crop(np.asarray(picked))
    return np.ascontiguousarray(picked, dtype=np.uint8)


def _at_most(frames: np.ndarray, max_height: int, like: np.ndarray | None = None) -> np.ndarray:
    """``frames`` shrunk (aspect kept) to at most ``max_height`` rows, or resized to ``like``'s
    frame size when given."""
    h, w = (like.shape[1:3] if like is not None else frames.shape[1:3])
    if like is None and h > max_height:
        h, w = max_height, max(1, round(w * max_height / h))
    return resize_frames(frames, h, w)


def preview_sheet(source: Any, edited: Any, label: str, crop: Callable | None = None) -> np.ndarray:
    """The ``preview.png`` image of two videos of equal length (numpy or zarr arrays; the
    edit's frames through ``crop``)."""
    index = evenly_spaced(len(source), COLUMNS)
    src = _at_most(_take(source, index), MAX_HEIGHT)
    edit = _at_most(_take(edited, index, crop), MAX_HEIGHT, like=src)
    return contact_sheet([("source", src), (label, edit)], COLUMNS, min_width=MIN_WIDTH,
                         numbers=index)


def gif_frames(n: int) -> tuple[np.ndarray, int]:
    """The frames the GIF of an ``n``-frame video shows, and how many video frames each lasts."""
    step = max(1, math.ceil(n / GIF_MAX_FRAMES))
    return np.arange(0, n, step), step


def preview_gif(source: Any, edited: Any, label: str,
                crop: Callable | None = None) -> tuple[np.ndarray, int]:
    """The ``preview.gif`` frames (source | edit, labelled) and the video frames each lasts."""
    index, step = gif_frames(len(source))
    src = _at_most(_take(source, index), GIF_MAX_HEIGHT)
    edit = _at_most(_take(edited, index, crop), GIF_MAX_HEIGHT, like=src)
    return labelled_side_by_side([("source", src), (label, edit)]), step


def write_gif(path: str | os.PathLike, frames: np.ndarray, seconds_per_frame: float) -> Path:
    """A looping GIF, written aside and renamed into place. One palette of 256 colours serves
    every frame and nothing is dithered: the file is about half as large as with a dithered
    palette per frame (dither noise defeats the GIF's compression)."""
    from PIL import Image

    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp.gif")
    palette = Image.fromarray(np.concatenate(list(frames), axis=0)).quantize(
        256, dither=Image.Dither.NONE)
    images = [Image.fromarray(frame).quantize(palette=palette, dither=Image.Dither.NONE)
              for frame in frames]
    try:
        images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:], loop=0,
                       duration=round(1000 * seconds_per_frame))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_previews(directory: str | os.PathLike, source: Any, edited: Any, *, fps: float,
                   label: str, crop: Callable | None = None) -> None:
    """Write ``preview.png`` and ``preview.gif`` of ``source`` and ``edited`` (equal-length
    ``(N, H, W, 3)`` uint8 videos, numpy or zarr arrays; only the frames shown are read; the
    edit's through ``crop``, e.g. from the UNet's padded canvas to the working size) into
    ``directory``."""
    directory = Path(directory)
    write_png(directory / "preview.png", preview_sheet(source, edited, label, crop))
    frames, step = preview_gif(source, edited, label, crop)
    write_gif(directory / "preview.gif", frames, step / fps)
