"""Reading, writing and resizing video frames.

Everything goes through :mod:`imageio.v3`: video containers are decoded by the
ffmpeg binary shipped with ``imageio-ffmpeg`` (plugin ``"FFMPEG"``), GIFs by the
Pillow plugin. Folders of still frames are decoded with Pillow directly, because
Pillow's image *mode* is needed to convert 16-bit, grayscale, palette, CMYK and
alpha images correctly.

All frame arrays are ``(N, H, W, 3)`` ``uint8`` RGB and C-contiguous.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import re
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import imageio.v3 as iio
import numpy as np
from PIL import Image

__all__ = [
    "VideoError",
    "Video",
    "read_video",
    "resize_frames",
    "write_video",
    "VideoWriter",
    "write_frames",
    "side_by_side",
    "frames_hash",
]

VIDEO_SUFFIXES = frozenset({".mp4", ".m4v", ".mov", ".webm", ".mkv", ".avi"})
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg"})
FOLDER_FPS = 24.0
GIF_FPS = 10.0


class VideoError(ValueError):
    """Bad video input; message is one clear line for the user."""


@dataclass(frozen=True)
class Video:
    """Decoded frames plus the frame rate they should be played at."""

    frames: np.ndarray  # (N, H, W, 3) uint8 RGB, C-contiguous
    fps: float
    source: str  # path as given
    stride: int = 1  # every stride-th frame of the source was kept, from frame 0
    #: What was changed to make the frames 8-bit RGB (e.g. 16-bit grayscale PNGs), one line each.
    notes: tuple[str, ...] = ()

    def __len__(self) -> int:
        return int(self.frames.shape[0])


# --------------------------------------------------------------------------- reading


def check_source(path: str | os.PathLike[str]) -> Path:
    """The path of a video file or frame folder that exists, can be read and has a supported
    type, checked without decoding anything; :class:`VideoError` otherwise."""
    source = os.fspath(path)
    p = Path(source)
    if not p.exists():
        raise VideoError(f"no such file or directory: {source}")
    if not os.access(p, os.R_OK | (os.X_OK if p.is_dir() else 0)):
        raise VideoError(f"cannot read {source}: permission denied")
    suffix = p.suffix.lower()
    if not p.is_dir() and suffix not in VIDEO_SUFFIXES | {".gif"}:
        known = ", ".join(sorted(s[1:] for s in VIDEO_SUFFIXES | {".gif"}))
        raise VideoError(f"unsupported file type {suffix or '(none)'!r}: {source} (expected {known}, or a folder of frames)")
    return p


def read_video(path: str | os.PathLike[str], *, frames: int | None = None, stride: int = 1) -> Video:
    """Decode a video file (mp4/mov/webm/mkv/avi/gif) or a folder of PNG/JPG frames.

    ``stride`` K keeps every K-th frame starting at frame 0, then ``frames`` N keeps
    the first N of those (fewer are returned if the source is shorter; that is not an
    error). Decoding stops as soon as the N-th kept frame is read. The returned fps
    is the source fps divided by ``stride``. Folders play at 24 fps; GIFs use the
    first frame's duration (10 fps if absent or browser-clamped, i.e. <= 10 ms).
    """
    source = os.fspath(path)
    if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1:
        raise VideoError(f"stride must be a positive integer, got {stride!r}")
    if frames is not None and (isinstance(frames, bool) or not isinstance(frames, int) or frames < 1):
        raise VideoError(f"frames must be a positive integer, got {frames!r}")

    p = check_source(source)
    notes: tuple[str, ...] = ()
    if p.is_dir():
        data, fps, notes = _read_folder(p, frames, stride)
    elif p.suffix.lower() == ".gif":
        data, fps = _read_with_imageio(p, "pillow", frames, stride)
    else:
        data, fps = _read_with_imageio(p, "FFMPEG", frames, stride)
    if data.shape[0] == 0:
        raise VideoError(f"no frames: {source}")
    return Video(frames=data, fps=fps / stride, source=source, stride=stride, notes=notes)


def _select(items: Iterable[np.ndarray], frames: int | None, stride: int) -> Iterator[np.ndarray]:
    """Yield items 0, K, 2K, ... and stop (without pulling more) after ``frames`` of them."""
    kept = 0
    for index, item in enumerate(items):
        if index % stride:
            continue
        yield item
        kept += 1
        if frames is not None and kept >= frames:
            return


def _one_line(exc: BaseException) -> str:
    """Reduce an imageio/ffmpeg exception (often with pages of stderr) to one line."""
    # Drop ffmpeg's "[in#0 @ 0x55d0...]" context prefixes.
    lines = [re.sub(r"^(\[[^\]]*\]\s*)+", "", line).strip() for line in str(exc).splitlines()]
    # Not diagnoses: ffmpeg's banner and its description of the input (which names the file,
    # whose path may contain any word).
    lines = [line for line in lines if line and not _FFMPEG_CHATTER.match(line)]
    # ffmpeg's own diagnosis is more useful than imageio's generic first line.
    for line in lines:
        if re.search(r"does not contain any stream", line, re.IGNORECASE):
            return "no video stream found (a damaged file, or not a video)"
        if re.search(r"moov atom not found", line, re.IGNORECASE):
            return f"{line} (a truncated or damaged file, or not a video)"
        if re.search(r"invalid data|end of file|corrupt|truncat", line, re.IGNORECASE):
            return line
    return lines[0] if lines else type(exc).__name__


_FFMPEG_CHATTER = re.compile(r"(ffmpeg version|built with|configuration:|lib\w+\s+\d|Input #|"
                             r"Output #|Stream #|Metadata:|Duration:|=== stderr ===)")


def _read_with_imageio(path: Path, plugin: str, frames: int | None, stride: int) -> tuple[np.ndarray, float]:
    """Read a GIF (``plugin="pillow"``) or a video container (``plugin="FFMPEG"``)."""
    try:
        if plugin == "pillow":
            with Image.open(path) as im:
                duration = float(im.info.get("duration") or 0)
            fps = 1000.0 / duration if duration > 10 else GIF_FPS
        else:
            meta = iio.immeta(path, plugin=plugin)
            fps = float(meta.get("fps") or 0)
            if not math.isfinite(fps) or fps <= 0:
                fps = FOLDER_FPS
        kept: list[np.ndarray] = []
        with contextlib.closing(iio.imiter(path, plugin=plugin)) as stream:
            for frame in _select(stream, frames, stride):
                kept.append(_to_rgb8(np.asarray(frame), path.name))
    except VideoError:
        raise
    except Exception as exc:  # imageio/ffmpeg/Pillow raise many unrelated types
        raise VideoError(f"cannot read video {path}: {_one_line(exc)}") from exc
    if not kept:
        return np.zeros((0, 0, 0, 3), np.uint8), fps
    try:
        return np.stack(kept), fps
    except ValueError as exc:
        raise VideoError(f"cannot read video {path}: frames differ in size") from exc


def _natural_key(name: str) -> tuple[tuple[str | int, ...], str]:
    """Sort key that orders ``2.png`` before ``10.png``."""
    parts = re.split(r"(\d+)", name.lower())
    return tuple(int(part) if i % 2 else part for i, part in enumerate(parts)), name


#: Pillow modes that are not plain 8-bit RGB, as the user would name them.
_MODE_NAMES = {"1": "1-bit black and white", "L": "grayscale", "LA": "grayscale with alpha",
               "I": "16/32-bit grayscale", "I;16": "16-bit grayscale", "I;16B": "16-bit grayscale",
               "I;16L": "16-bit grayscale", "F": "32-bit float grayscale", "P": "palette",
               "PA": "palette with alpha", "RGBA": "RGB with alpha", "CMYK": "CMYK",
               "YCbCr": "YCbCr", "LAB": "Lab", "HSV": "HSV"}


def _conversion_note(modes: dict[str, str]) -> tuple[str, ...]:
    """One note for frames that were not 8-bit RGB: ``{mode: first file with it}``."""
    odd = {m: name for m, name in modes.items() if m != "RGB"}
    if not odd:
        return ()
    kinds = ", ".join(f"{_MODE_NAMES.get(m, m)} (mode {m}, e.g. {name})" for m, name in odd.items())
    alpha = any(m in ("LA", "PA", "RGBA") or m.endswith("A") for m in odd)
    return (f"frames are {kinds}; converted to 8-bit RGB"
            + ("; alpha composited over black" if alpha else ""),)


def _read_folder(folder: Path, frames: int | None, stride: int) -> tuple[np.ndarray, float, tuple[str, ...]]:
    """Read the selected PNG/JPG frames of a folder; only the selected files are opened.
    Also returns a note if some were not 8-bit RGB (see :func:`_pil_to_rgb8`)."""
    names = sorted(
        (e.name for e in folder.iterdir() if e.suffix.lower() in IMAGE_SUFFIXES and not e.name.startswith(".") and e.is_file()),
        key=_natural_key,
    )
    if not names:
        raise VideoError(f"no PNG/JPG frames in folder: {folder}")
    chosen = names[::stride][:frames]
    out: np.ndarray | None = None
    modes: dict[str, str] = {}
    for i, name in enumerate(chosen):
        try:
            with Image.open(folder / name) as im:
                modes.setdefault(im.mode, name)
                image = _pil_to_rgb8(im, name)
        except VideoError:
            raise
        except Exception as exc:
            raise VideoError(f"cannot read frame {folder / name}: {_one_line(exc)}") from exc
        if out is None:
            out = np.empty((len(chosen), *image.shape), np.uint8)
        elif image.shape != out.shape[1:]:
            h0, w0 = out.shape[1:3]
            h, w = image.shape[:2]
            raise VideoError(f"frames differ in size: {chosen[0]} is {w0}x{h0}, {name} is {w}x{h}")
        out[i] = image
    assert out is not None
    return out, FOLDER_FPS, _conversion_note(modes)


def _pil_to_rgb8(im: Image.Image, name: str) -> np.ndarray:
    """Convert any Pillow image to (H, W, 3) uint8 RGB; see :func:`_to_rgb8`."""
    im.load()  # surfaces truncated/corrupt files here
    if im.mode.startswith("I") or im.mode in ("F", "1", "L", "LA", "RGB", "RGBA"):
        return _to_rgb8(np.asarray(im), name)
    if im.mode in ("P", "PA") and ("transparency" in im.info or im.mode == "PA"):
        return _to_rgb8(np.asarray(im.convert("RGBA")), name)
    return _to_rgb8(np.asarray(im.convert("RGB")), name)  # P, CMYK, YCbCr, LAB, ...


def _to_rgb8(array: np.ndarray, name: str) -> np.ndarray:
    """Convert an (H, W), (H, W, 1|2|3|4) image of any integer/float depth to uint8 RGB.

    16-bit values are scaled by 255/65535 with rounding (not clipped); Pillow's
    32-bit ``I`` mode is treated as 16-bit (that is how it decodes 16-bit PNGs);
    floats are taken as 0..255. Alpha is composited over black.
    """
    a = array[..., None] if array.ndim == 2 else array
    if a.ndim != 3 or a.shape[2] not in (1, 2, 3, 4):
        raise VideoError(f"unsupported image layout {array.shape} in {name}")
    if a.dtype == np.uint8:
        pass
    elif a.dtype == np.bool_:
        a = a.astype(np.uint8) * 255
    elif a.dtype.kind in "iu":
        wide = np.clip(a.astype(np.int64), 0, 65535)
        a = ((wide * 255 + 32767) // 65535).astype(np.uint8)
    elif a.dtype.kind == "f":
        a = np.clip(np.rint(a), 0, 255).astype(np.uint8)
    else:
        raise VideoError(f"unsupported pixel type {a.dtype} in {name}")
    channels = a.shape[2]
    if channels in (2, 4):
        alpha = a[..., -1:].astype(np.uint16)
        a = ((a[..., :-1].astype(np.uint16) * alpha + 127) // 255).astype(np.uint8)
    if a.shape[2] == 1:
        a = np.repeat(a, 3, axis=2)
    return np.ascontiguousarray(a)


# --------------------------------------------------------------------------- resizing


def _check_frames(frames: np.ndarray, what: str = "frames") -> None:
    if not isinstance(frames, np.ndarray) or frames.ndim != 4 or frames.shape[3] != 3 or frames.dtype != np.uint8:
        shape = getattr(frames, "shape", None)
        dtype = getattr(frames, "dtype", type(frames).__name__)
        raise VideoError(f"{what} must be an (N, H, W, 3) uint8 array, got shape {shape} dtype {dtype}")


def resize_frames(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize ``(N, H, W, 3)`` uint8 frames to ``(N, height, width, 3)`` with Pillow.

    LANCZOS when either side shrinks; BICUBIC when neither does (less ringing when
    upsampling). No cropping: the aspect ratio may change slightly. Frames that are
    already the right size are returned unchanged (same object).
    """
    _check_frames(frames)
    if height < 1 or width < 1:
        raise VideoError(f"invalid target size {width}x{height}")
    n, h, w = frames.shape[:3]
    if (h, w) == (height, width):
        return frames
    method = Image.Resampling.BICUBIC if height >= h and width >= w else Image.Resampling.LANCZOS
    out = np.empty((n, height, width, 3), np.uint8)
    for i in range(n):
        out[i] = np.asarray(Image.fromarray(frames[i]).resize((width, height), method))
    return out


# --------------------------------------------------------------------------- writing


class VideoWriter:
    """Writes an H.264 (libx264, yuv420p, CRF 18) mp4 chunk by chunk, atomically: a video of
    any length without holding its frames (``with VideoWriter(path, fps) as w: w.write(chunk)``).

    The file is written to a hidden temporary sibling ending in ``.mp4`` and moved into place
    with :func:`os.replace` when the block ends without error; it is removed otherwise. Sizes are
    kept exactly (``macro_block_size=1``); since yuv420p needs even sides, an odd height/width is
    padded by repeating the last row/column (output is 1 px larger). The container is mp4
    whatever the suffix of ``path``. Every chunk must have the first chunk's size.
    """

    def __init__(self, path: str | os.PathLike[str], fps: float) -> None:
        if not (isinstance(fps, (int, float)) and math.isfinite(fps) and fps > 0):
            raise VideoError(f"fps must be positive, got {fps!r}")
        self.target = Path(path)
        self.fps = float(fps)
        self.tmp = self.target.with_name(f".{self.target.name}.{uuid.uuid4().hex[:8]}.tmp.mp4")
        self.count = 0
        self._writer = None
        self._shape: tuple[int, ...] | None = None

    def __enter__(self) -> VideoWriter:
        return self

    def write(self, frames: np.ndarray) -> None:
        """Append ``(n, H, W, 3)`` uint8 frames."""
        import imageio.v2 as iio2

        _check_frames(frames)
        if self._shape is None:
            self._shape = frames.shape[1:]
            self.target.parent.mkdir(parents=True, exist_ok=True)
            self._writer = iio2.get_writer(
                self.tmp, format="FFMPEG", mode="I", fps=self.fps, codec="libx264",
                pixelformat="yuv420p", macro_block_size=1, quality=None,
                output_params=["-crf", "18"], ffmpeg_log_level="error")
        elif frames.shape[1:] != self._shape:
            raise VideoError(f"frames of {frames.shape[2]}x{frames.shape[1]} in a video of "
                             f"{self._shape[1]}x{self._shape[0]}")
        h, w = frames.shape[1:3]
        if h % 2 or w % 2:
            frames = np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
        for frame in frames:
            self._writer.append_data(np.ascontiguousarray(frame))
        self.count += len(frames)

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if self._writer is not None:
                self._writer.close()
            if exc_type is None:
                if self.count == 0:
                    raise VideoError("no frames to write")
                os.replace(self.tmp, self.target)
        finally:
            self.tmp.unlink(missing_ok=True)


def write_video(path: str | os.PathLike[str], frames: np.ndarray, fps: float) -> None:
    """Write frames as an H.264 mp4, atomically (see :class:`VideoWriter`)."""
    _check_frames(frames)
    if frames.shape[0] == 0:
        raise VideoError("no frames to write")
    with VideoWriter(path, fps) as writer:
        writer.write(frames)


def write_frames(directory: str | os.PathLike[str], frames: np.ndarray,
                 start: int = 0) -> list[Path]:
    """Write ``00000.png``, ``00001.png``, ... into ``directory`` (created), each atomically;
    ``start``: the number of the first frame (to write a long video chunk by chunk).

    Existing files with other names (e.g. frames beyond ``len(frames)`` from an
    earlier, longer run) are left alone.
    """
    _check_frames(frames)
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    for i, frame in enumerate(frames, start):
        final = folder / f"{i:05d}.png"
        tmp = folder / f".{final.name}.{uuid.uuid4().hex[:8]}.tmp"
        try:
            Image.fromarray(frame).save(tmp, format="PNG")
            os.replace(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)
        paths.append(final)
    return paths


# --------------------------------------------------------------------------- misc


def evenly_spaced(n: int, count: int) -> np.ndarray:
    """Indices of ``count`` frames spread evenly over ``n`` (first and last included; at most
    ``n``), for contact sheets and previews."""
    return np.linspace(0, n - 1, min(count, n)).round().astype(int)


def write_png(path: str | os.PathLike[str], image: np.ndarray) -> Path:
    """Write an RGB image as PNG atomically (write aside, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    Image.fromarray(np.ascontiguousarray(image)).save(tmp, optimize=True)
    os.replace(tmp, path)
    return path


def side_by_side(*videos: np.ndarray) -> np.ndarray:
    """Concatenate equal-length videos left to right.

    Videos whose height differs from the first one are resized to that height,
    keeping their aspect ratio (width rounded to the nearest pixel).
    """
    if not videos:
        raise VideoError("side_by_side needs at least one video")
    for i, v in enumerate(videos):
        _check_frames(v, f"video {i}")
    lengths = [v.shape[0] for v in videos]
    if len(set(lengths)) > 1:
        raise VideoError(f"videos differ in length: {', '.join(map(str, lengths))} frames")
    height = videos[0].shape[1]
    parts = [
        v if v.shape[1] == height else resize_frames(v, height, max(1, round(v.shape[2] * height / v.shape[1])))
        for v in videos
    ]
    return np.ascontiguousarray(np.concatenate(parts, axis=2))


def frames_hash(frames: np.ndarray) -> str:
    """sha256 hex digest of the array's shape, dtype and raw bytes (a cache key input)."""
    digest = hashlib.sha256()
    digest.update(f"{tuple(frames.shape)}|{frames.dtype.str}|".encode())
    digest.update(np.ascontiguousarray(frames).data)
    return digest.hexdigest()
