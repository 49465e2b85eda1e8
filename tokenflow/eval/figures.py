"""Figures for comparisons: labelled contact sheets, labelled side-by-side videos, metric plots.

Frames are ``uint8 (N, H, W, 3)``. Small frames (the embedded model's 64x64) are enlarged by an
integer factor with nearest-neighbour sampling so that labels stay readable and pixels honest.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from tokenflow.video import evenly_spaced, write_png  # noqa: F401  (write_png: for figure writers)

#: Frames are enlarged until they are at least this tall (integer factors only).
MIN_HEIGHT = 128
LABEL_WIDTH = 160
HEADER = 14


def scale_for(height: int, min_height: int = MIN_HEIGHT) -> int:
    """The integer enlargement that makes ``height`` at least ``min_height``."""
    return max(1, -(-min_height // max(1, height)))


def _enlarge(frame: np.ndarray, scale: int) -> np.ndarray:
    return frame if scale == 1 else np.repeat(np.repeat(frame, scale, axis=0), scale, axis=1)


def _text(image, xy: tuple[int, int], text: str, fill="black") -> None:
    from PIL import ImageDraw, ImageFont

    ImageDraw.Draw(image).text(xy, text, fill=fill, font=ImageFont.load_default())


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
                  min_height: int = MIN_HEIGHT) -> np.ndarray:
    """One row per labelled video (label on the left), ``columns`` evenly spaced frames each.

    Videos may differ in length (the frames are picked from the shortest's range) but not in
    frame size.
    """
    from PIL import Image

    n, h, w, scale = _layout(rows, "contact_sheet", min_height)
    picks = evenly_spaced(n, columns)
    th, tw = h * scale, w * scale
    canvas = Image.new("RGB", (LABEL_WIDTH + len(picks) * tw, len(rows) * th), "white")
    for r, (label, frames) in enumerate(rows):
        _text(canvas, (6, r * th + th // 2 - 6), label)
        for c, i in enumerate(picks):
            canvas.paste(Image.fromarray(_enlarge(frames[i], scale)), (LABEL_WIDTH + c * tw, r * th))
    return np.asarray(canvas)


def labelled_side_by_side(videos: Sequence[tuple[str, np.ndarray]], *,
                          min_height: int = MIN_HEIGHT) -> np.ndarray:
    """Videos left to right with a label above each; all must have the same frame size.

    The result has as many frames as the shortest video.
    """
    from PIL import Image

    n, h, w, scale = _layout(videos, "labelled_side_by_side", min_height)
    th, tw = h * scale, w * scale
    header = Image.new("RGB", (tw * len(videos), HEADER), "white")
    for k, (label, _) in enumerate(videos):
        _text(header, (k * tw + 3, 1), label[: max(4, tw // 6)])
    header_arr = np.asarray(header)
    out = np.empty((n, HEADER + th, tw * len(videos), 3), np.uint8)
    out[:, :HEADER] = header_arr
    for k, (_, frames) in enumerate(videos):
        for i in range(n):
            out[i, HEADER:, k * tw:(k + 1) * tw] = _enlarge(frames[i], scale)
    # even dimensions for H.264
    return out[:, : out.shape[1] // 2 * 2, : out.shape[2] // 2 * 2]


def require_matplotlib() -> None:
    """A one-line ``RuntimeError`` saying how to install matplotlib (the ``eval`` extra) if it is
    missing: call it before long work whose end is a plot."""
    import importlib.util

    if importlib.util.find_spec("matplotlib") is None:
        raise RuntimeError("metric plots need matplotlib: pip install 'tokenflow[eval]'")


def plot_metrics(series: dict[str, dict[str, Sequence[float]]], metrics: Sequence[str],
                 path: str | os.PathLike, *, title: str = "") -> Path:
    """One panel per metric, one line per method (``series[method][metric]`` per frame or pair),
    written atomically as a PNG. Needs matplotlib (:func:`require_matplotlib`)."""
    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [m for m in metrics if any(m in s for s in series.values())]
    if not metrics:
        raise ValueError("plot_metrics: none of the metrics is in the series")
    fig, axes = plt.subplots(len(metrics), 1, figsize=(7, 2.3 * len(metrics)), squeeze=False)
    for ax, metric in zip(axes[:, 0], metrics):
        for method, values in series.items():
            if metric in values:
                y = np.asarray(values[metric], dtype=float)
                ax.plot(np.arange(len(y)), y, marker=".", label=method)
        ax.set_ylabel(metric, fontsize=8)
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=7, ncol=min(4, len(series)))
    axes[-1, 0].set_xlabel("frame (or frame pair t, t+k)")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
    return path
