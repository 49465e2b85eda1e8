"""Sizes: the working size (the frames to edit, the source's aspect kept), the canvas the UNet
sees (:class:`Framing`: padded to the multiples it needs, cropped back after decoding), the
outputs' size, and parsing ``--size`` / ``--output-size``.

Why padding rather than rounding each side to the UNet's multiple (``Model.size_multiple``, 64
for Stable Diffusion, 32 for the embedded model): rounding stretches every frame whose aspect is
not a ratio of multiples (16:9 at the first embedded model's short side 64 became 128x64, 2:1, a
12 % stretch), and resizing the result back does not undo it, since the model redraws what it
knows in its own proportions (docs/benchmarks.md, "Aspect ratio"); padding keeps the aspect to
the pixel. It costs the padded pixels, less than one multiple per side: SD at 512 pads 16:9
910x512 to 960x512 (+5 % pixels), 4:3 683x512 to 704x512 (+3 %); the embedded model pads 171x96
to 192x96 (+12 %)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

from tokenflow.video import VideoError

__all__ = ["working_size", "Framing", "aspect_note", "parse_size", "parse_output_size",
           "output_size", "OUTPUT_SIZES"]


def working_size(height: int, width: int, size: int | tuple[int, int] | None, *,
                 native: int) -> tuple[int, int]:
    """Return ``(H, W)`` of the frames to edit for a ``height`` x ``width`` video.

    ``size=None`` puts the short side at ``native``; an int puts the short side at ``size``;
    the long side keeps the source's aspect ratio (``long * short_target / short``, rounded
    to the nearest pixel, halves up). A ``(W, H)`` tuple asks for exactly that (the aspect
    changes if it differs from the source's: see :func:`aspect_note`). Nothing is rounded to
    what the UNet needs: :class:`Framing` pads the frames to that.
    """
    if height < 1 or width < 1:
        raise VideoError(f"invalid video size {width}x{height}")
    if isinstance(size, tuple):
        target_w, target_h = size
        if target_w < 1 or target_h < 1:
            raise VideoError(f"size must be positive, got {target_w}x{target_h}")
        return int(target_h), int(target_w)
    short_target = native if size is None else size
    if short_target < 1:
        raise VideoError(f"size must be positive, got {short_target}")
    short, long = min(height, width), max(height, width)
    scaled_long = max(1, int(math.floor(long * short_target / short + 0.5)))
    return (short_target, scaled_long) if height <= width else (scaled_long, short_target)


@dataclass(frozen=True)
class Framing:
    """What the UNet sees of the working frames (``height`` x ``width``): a canvas of
    ``canvas_height`` x ``canvas_width``, each side the next multiple of what the UNet needs,
    the frames at its top left and the margin right and below filled by mirroring them (numpy's
    ``reflect``). The edit is made on the canvas; :meth:`crop` cuts the decoded frames back.

    One-sided, because the seam between a frame and its mirror image is where a model draws
    what is not there: centred, there are two seams and the frame's own borders are gone (on
    the embedded model, a 16:9 ball clip got stray object pixels in 7.3 % of its outer 16 px
    columns centred, 1.0 % one-sided: docs/benchmarks.md, "Aspect ratio")."""

    height: int
    width: int
    canvas_height: int
    canvas_width: int

    @classmethod
    def around(cls, height: int, width: int, multiple: int) -> Framing:
        """The smallest canvas whose sides are multiples of ``multiple`` around a ``height`` x
        ``width`` frame."""
        if multiple < 1:
            raise VideoError(f"multiple must be positive, got {multiple}")
        if height < 1 or width < 1:
            raise VideoError(f"invalid working size {width}x{height}")
        return cls(height, width, -(-height // multiple) * multiple,
                   -(-width // multiple) * multiple)

    @property
    def padded(self) -> bool:
        return (self.height, self.width) != (self.canvas_height, self.canvas_width)

    def pad(self, frames: np.ndarray) -> np.ndarray:
        """``(N, height, width, 3)`` frames on the canvas (the same object if nothing is padded)."""
        if frames.ndim != 4 or frames.shape[1:3] != (self.height, self.width):
            raise VideoError(f"frames of {frames.shape[2]}x{frames.shape[1]} do not fit a framing "
                             f"of {self.width}x{self.height}")
        if not self.padded:
            return frames
        below, right = self.canvas_height - self.height, self.canvas_width - self.width
        return np.pad(frames, ((0, 0), (0, below), (0, right), (0, 0)), mode="reflect")

    def crop(self, frames: np.ndarray) -> np.ndarray:
        """The working frames of ``(N, canvas_height, canvas_width, 3)`` frames (a view)."""
        if tuple(frames.shape[1:3]) != (self.canvas_height, self.canvas_width):
            raise VideoError(f"frames of {frames.shape[2]}x{frames.shape[1]} are not on a canvas "
                             f"of {self.canvas_width}x{self.canvas_height}")
        return frames[:, :self.height, :self.width]

    def note(self, multiple: int) -> str | None:
        """One line on the padding (None without any)."""
        if not self.padded:
            return None
        extra = self.canvas_height * self.canvas_width / (self.height * self.width) - 1
        return (f"the UNet needs sides in multiples of {multiple}, so each {self.width}x"
                f"{self.height} frame is padded to {self.canvas_width}x{self.canvas_height} by "
                f"mirroring its right and bottom edges (+{extra * 100:.0f} % pixels), cropped "
                "after decoding")


def aspect_note(source: tuple[int, int], size: tuple[int, int]) -> str | None:
    """``"aspect 1.78 -> 2.00 (+12 %)"`` when frames of ``size`` ``(H, W)`` do not keep the
    aspect ratio of ``source`` ``(H, W)``; None when they keep it to the pixel (one side is the
    other times the source's aspect, rounded)."""
    (sh, sw), (h, w) = source, size
    if abs(w * sh - h * sw) <= 0.5 * max(sh, sw):
        return None
    before, after = sw / sh, w / h
    change = (after / before - 1) * 100
    return f"aspect {before:.2f} -> {after:.2f} ({change:+.0f} %)"


OUTPUT_SIZES = ("source", "working")


def parse_output_size(text: str) -> str | int | tuple[int, int]:
    """Parse an output size: ``"source"``, ``"working"``, ``"S"`` (short side S, the source's
    aspect) or ``"WxH"``."""
    word = str(text).strip().lower()
    if word in OUTPUT_SIZES:
        return word
    try:
        return parse_size(str(text))
    except VideoError:
        raise VideoError(f"invalid output size {text!r}: expected source, working, S or WxH, "
                         "e.g. 1280x720") from None


def output_size(spec: str | int | tuple[int, int], source: tuple[int, int],
                working: tuple[int, int]) -> tuple[int, int]:
    """``(H, W)`` of the outputs for a parsed output size (see :func:`parse_output_size`),
    the source's ``(H, W)`` and the working ``(H, W)``."""
    if isinstance(spec, str) and spec not in OUTPUT_SIZES:
        spec = parse_output_size(spec)
    if spec == "source":
        return source
    if spec == "working":
        return working
    return working_size(*source, spec, native=min(source))


def parse_size(text: str) -> int | tuple[int, int]:
    """Parse ``"512"`` (short side) or ``"768x512"`` (width x height)."""
    match = re.fullmatch(r"\s*(\d+)\s*(?:[xX×]\s*(\d+)\s*)?", text)
    if match is None:
        raise VideoError(f"invalid size {text!r}: expected N or WxH, e.g. 512 or 768x512")
    numbers = [int(g) for g in match.groups() if g is not None]
    if any(n < 1 for n in numbers):
        raise VideoError(f"invalid size {text!r}: sides must be positive")
    return numbers[0] if len(numbers) == 1 else (numbers[0], numbers[1])
