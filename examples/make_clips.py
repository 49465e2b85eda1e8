"""Regenerate the example clips in examples/clips/ from tokenflow's procedural world.

    python examples/make_clips.py

Deterministic, no downloads. Every clip is rendered at 128x128, twice the embedded model's native
64x64 (which `tf run` resizes to; the model was trained on square frames), with objects the
embedded model knows: see examples/README.md for what each shows and prompts to try.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from tokenflow.video import write_video
from tokenflow.embedded.world import Scene, Thing, render

HERE = Path(__file__).resolve().parent / "clips"
HEIGHT, WIDTH = 128, 128  # the world measures positions in units of the short side


def _clip(scenes: list[Scene]) -> np.ndarray:
    return np.stack([render(s, HEIGHT, WIDTH)[0] for s in scenes])


def ball(n: int = 24) -> np.ndarray:
    """A red ball rolling left to right on a checkered floor."""
    base = Scene("checkered floor", (Thing("ball", "red", cx=0.3, cy=0.5, radius=0.24),), cell=8)
    return _clip([base.with_thing(0, cx=0.28 + 0.44 * i / (n - 1), cy=0.5 + 0.05 * np.sin(i / 3))
                  for i in range(n)])


def turning_box(n: int = 24) -> np.ndarray:
    """A striped blue box turning in place while drifting right, on sand."""
    base = Scene("sand", (Thing("box", "blue", "striped", cx=0.4, cy=0.5, radius=0.28),))
    return _clip([base.with_thing(0, angle=90 * i / (n - 1), cx=0.4 + 0.2 * i / (n - 1))
                  for i in range(n)])


def passing(n: int = 32) -> np.ndarray:
    """A green triangle passes behind a yellow ball in front of a gray wall."""
    triangle = Thing("triangle", "green", cx=0.2, cy=0.42, radius=0.22)
    front = Thing("ball", "yellow", "dotted", cx=0.55, cy=0.55, radius=0.22)
    scenes = []
    for i in range(n):
        t = i / (n - 1)
        scenes.append(Scene("gray wall", (replace(triangle, cx=0.2 + 0.6 * t, angle=40 * t),
                                          replace(front, cx=0.55 - 0.1 * t))))
    return _clip(scenes)


def sky(n: int = 16) -> np.ndarray:
    """An orange ball rising across the sky."""
    base = Scene("sky", (Thing("ball", "orange", cx=0.3, cy=0.7, radius=0.22),))
    return _clip([base.with_thing(0, cx=0.3 + 0.4 * i / (n - 1), cy=0.7 - 0.4 * i / (n - 1))
                  for i in range(n)])


CLIPS = {"ball": ball, "turning_box": turning_box, "passing": passing, "sky": sky}


def main() -> None:
    HERE.mkdir(parents=True, exist_ok=True)
    for name, make in CLIPS.items():
        path = HERE / f"{name}.mp4"
        write_video(path, make(), fps=12)
        print(path)


if __name__ == "__main__":
    main()
