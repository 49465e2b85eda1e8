"""Labelled figures of video frames: contact sheets (a row per video, frame numbers under the
columns) and side-by-side videos, for a run's previews (:mod:`tokenflow.preview`) and ``tf
compare`` (:mod:`tokenflow.eval.compare`).

Frames are ``uint8 (N, H, W, 3)``. Small frames (the embedded model's 64x64) are enlarged by an
integer factor with nearest-neighbour sampling so that labels stay readable and pixels honest.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from tokenflow.video import evenly_spaced

#: Frames are enlarged until they are at least this tall (integer factors only).
MIN_HEIGHT = 128
LABEL_WIDTH = 160
#: The strip above a side-by-side video that labels its videos (even, for H.264).
HEADER = 16
#: The strip under a contact sheet that numbers its columns' frames.
FOOTER = 18
#: Pillow's default font at this size (at 10 px a colon vanishes), and pixels per line.
FONT_SIZE = 12
LINE = 15


def scale_for(height: int, min_height: int = MIN_HEIGHT) -> int:
    """The integer enlargement that makes ``height`` at least ``min_height``."""
    return max(1, -(-min_height // max(1, height)))


def _enlarge(frame: np.ndarray, scale: int) -> np.ndarray:
    return frame if scale == 1 else np.repeat(np.repeat(frame, scale, axis=0), scale, axis=1)


class _Pen:
    """Writes, measures and wraps text in Pillow's default font (one per figure)."""

    def __init__(self) -> None:
        from PIL import ImageFont

        self.font = ImageFont.load_default(size=FONT_SIZE)

    def width(self, text: str) -> float:
        return self.font.getlength(text)

    def write(self, image, xy: tuple[int, int], text: str, fill="black") -> None:
        from PIL import ImageDraw

        ImageDraw.Draw(image).text(xy, text, fill=fill, font=self.font)

    def wrap(self, text: str, width: int, lines: int = 1) -> list[str]:
        """``text`` in at most ``lines`` lines of at most ``width`` pixels (words kept whole
        where they fit; the last line ends in "..." if the text does not fit)."""
        out: list[str] = []
        for word in text.split():
            if out and self.width(f"{out[-1]} {word}") <= width:
                out[-1] = f"{out[-1]} {word}"
                continue
            while self.width(word) > width and len(word) > 1:  # a word wider than a line
                cut = max(1, int(len(word) * width / self.width(word)))
                out.append(word[:cut])
                word = word[cut:]
            out.append(word)
        if len(out) > lines:
            out = out[:lines]
            while out[-1] and self.width(out[-1] + "...") > width:
                out[-1] = out[-1][:-1]
            out[-1] += "..."
        return out

    def label(self, image, x: int, top: int, height: int, text: str) -> None:
        """``text`` wrapped into the label column, centred vertically in ``height`` rows."""
        lines = self.wrap(text, LABEL_WIDTH - 2 * x, max(1, height // LINE))
        y = top + (height - LINE * len(lines)) // 2
        for k, line in enumerate(lines):
            self.write(image, (x, y + k * LINE), line)


def _layout(videos: Sequence[tuple[str, np.ndarray]], what: str,
            min_height: int) -> tuple[int, int, int, int]:
    """``(frames, height, width, scale)`` of labelled videos that must share a frame size."""
    if not videos:
        raise ValueError(f"{what} needs at least one video")
    n = min(len(frames) for _, frames in videos)
    h, w = videos[0][1].shape[1:3]
    if any(frames.shape[1:3] != (h, w) for _, frames in videos):
        raise ValueError(f"{what}: videos differ in frame size")
    return n, h, w, scale_for(h, min_height)


def contact_sheet(rows: Sequence[tuple[str, np.ndarray]], columns: int = 6, *,
                  min_height: int = MIN_HEIGHT, min_width: int = 0,
                  numbers: Sequence[int] | None = None) -> np.ndarray:
    """One row per labelled video (label on the left, wrapped to the label column),
    ``columns`` evenly spaced frames each, and under each column its frame number (0-based, as
    ``frames/00000.png`` counts).

    Frames are enlarged by an integer factor (nearest) until they are ``min_height`` tall and
    the sheet is ``min_width`` wide. Videos may differ in length (the frames are picked from the
    shortest's range) but not in frame size. ``numbers``: the frame numbers of the rows' frames
    when the rows hold frames already picked from a longer video.
    """
    from PIL import Image

    n, h, w, scale = _layout(rows, "contact_sheet", min_height)
    pen = _Pen()
    picks = evenly_spaced(n, columns)
    scale = max(scale, -(-(min_width - LABEL_WIDTH) // (len(picks) * w)))
    th, tw = h * scale, w * scale
    canvas = Image.new("RGB", (LABEL_WIDTH + len(picks) * tw, len(rows) * th + FOOTER), "white")
    for r, (label, frames) in enumerate(rows):
        pen.label(canvas, 6, r * th, th, label)
        for c, i in enumerate(picks):
            canvas.paste(Image.fromarray(_enlarge(frames[i], scale)), (LABEL_WIDTH + c * tw, r * th))
    for c, i in enumerate(picks):
        number = int(numbers[i]) if numbers is not None else int(i)
        text = f"frame {number}" if pen.width(f"frame {number}") <= tw - 4 else str(number)
        pen.write(canvas, (LABEL_WIDTH + c * tw + (tw - round(pen.width(text))) // 2,
                           len(rows) * th + 2), text)
    return np.asarray(canvas)


def labelled_side_by_side(videos: Sequence[tuple[str, np.ndarray]], *,
                          min_height: int = MIN_HEIGHT) -> np.ndarray:
    """Videos left to right with a label above each (cut to its video's width, "..." marking
    the cut); all must have the same frame size.

    The result has as many frames as the shortest video.
    """
    from PIL import Image

    n, h, w, scale = _layout(videos, "labelled_side_by_side", min_height)
    pen = _Pen()
    th, tw = h * scale, w * scale
    header = Image.new("RGB", (tw * len(videos), HEADER), "white")
    for k, (label, _) in enumerate(videos):
        pen.write(header, (k * tw + 3, 1), pen.wrap(label, tw - 6)[0] if label.strip() else "")
    header_arr = np.asarray(header)
    out = np.empty((n, HEADER + th, tw * len(videos), 3), np.uint8)
    out[:, :HEADER] = header_arr
    for k, (_, frames) in enumerate(videos):
        for i in range(n):
            out[i, HEADER:, k * tw:(k + 1) * tw] = _enlarge(frames[i], scale)
    # even dimensions for H.264
    return out[:, : out.shape[1] // 2 * 2, : out.shape[2] // 2 * 2]
