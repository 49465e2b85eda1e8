"""Regenerate the example clips in examples/clips/ (deterministic; no downloads).

    python examples/make_clips.py
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent / "clips"


def checkered_floor(height: int, width: int, cell: int = 16) -> np.ndarray:
    """A light/dark checkerboard below a sky gradient."""
    yy, xx = np.mgrid[0:height, 0:width]
    board = ((yy // cell + xx // cell) % 2).astype(np.float32)
    floor = np.stack([200 - 90 * board, 200 - 90 * board, 190 - 80 * board], axis=-1)
    sky = np.stack([np.full_like(board, 150), 180 + 40 * yy / height, np.full_like(board, 235)], -1)
    horizon = height // 3
    return np.where((yy < horizon)[..., None], sky, floor)


def ball_clip(n: int = 16, height: int = 128, width: int = 192) -> np.ndarray:
    """A shaded red ball rolling left to right across a checkered floor."""
    background = checkered_floor(height, width)
    yy, xx = np.mgrid[0:height, 0:width]
    radius = height // 5
    frames = []
    for i in range(n):
        cx = radius + 4 + (width - 2 * radius - 8) * i / max(1, n - 1)
        cy = height * 0.62 + 4 * np.sin(i / 2)
        d2 = (xx - cx) ** 2 + (yy - cy) ** 2
        inside = d2 <= radius ** 2
        light = 0.55 + 0.45 * np.clip(1 - ((xx - cx + radius / 3) ** 2 + (yy - cy + radius / 3) ** 2)
                                      / (1.6 * radius ** 2), 0, 1)
        ball = np.stack([230 * light, 40 * light, 40 * light], axis=-1)
        shadow = ((xx - cx) ** 2 / 4 + (yy - cy - radius) ** 2 * 4) <= radius ** 2 / 2
        frame = np.where(shadow[..., None], background * 0.6, background)
        frame = np.where(inside[..., None], ball, frame)
        frames.append(frame)
    return np.clip(np.stack(frames), 0, 255).astype(np.uint8)


def main() -> None:
    from tokenflow.video import write_video

    HERE.mkdir(parents=True, exist_ok=True)
    write_video(HERE / "ball.mp4", ball_clip(), fps=8)
    print(HERE / "ball.mp4")


if __name__ == "__main__":
    main()
