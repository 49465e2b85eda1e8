"""Regenerate the example clips in examples/clips/ from tokenflow's procedural world (v2).

    python examples/make_clips.py [--out DIR]

Deterministic, no downloads. Textured, shaded objects on textured backgrounds
(``tokenflow.world``, the world the embedded model knows), rendered at a short side of 192 pixels,
twice the embedded model's 96 (``tf run`` scales the frames down to it, keeping the aspect), at
12 fps. See examples/README.md for what each clip shows and its source caption.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tokenflow import world

HERE = Path(__file__).resolve().parent / "clips"
SHORT = 192  # pixels on the short side: even (H.264), 2x the model's 96
FPS = 12


@dataclass(frozen=True)
class ExampleClip:
    """One example clip: ``make(n)`` gives its world clip of ``n`` frames (the motion spread over
    the whole clip whatever ``n``); ``height`` x ``width`` pixels; ``frames`` by default."""

    make: Callable[[int], world.Clip]
    height: int
    width: int
    frames: int

    def clip(self, n: int | None = None) -> world.Clip:
        return self.make(self.frames if n is None else n)

    def caption(self) -> str:
        """The source caption (``Scene.caption()``: what ``--inversion-prompt`` should say)."""
        return self.clip(1).scene.caption()

    def render(self, n: int | None = None) -> np.ndarray:
        """uint8 frames ``(n, height, width, 3)``."""
        clip = self.clip(n)
        return np.stack([clip.render(t, self.height, self.width)[0] for t in range(len(clip))])


def _steps(n: int) -> np.ndarray:
    """``n`` times from 0 to 1 (just 0 for one frame)."""
    return np.linspace(0.0, 1.0, n) if n > 1 else np.zeros(1)


def rolling_ball(n: int = 16) -> world.Clip:
    """A red ball rolls left to right across wooden planks (it turns as it rolls). Square: the
    README's first command."""
    ball = world.Thing("ball", "red", x=-0.22, y=0.04, radius=0.22, hue_jitter=2.0, value=0.92)
    scene = world.Scene("wood", (ball,), seed=11, light=(230.0, 50.0))
    travel = 0.44 * _steps(n)
    turn = np.rad2deg(travel / ball.radius)  # rolling: the turn that matches the distance
    return world.Clip(scene, tuple(world.Camera() for _ in travel),
                tuple(((float(dx), 0.0, float(da)),) for dx, da in zip(travel, turn)))


def box_pan(n: int = 24) -> world.Clip:
    """16:9. The camera pans right over grass past a blue checkered box that turns slowly."""
    box = world.Thing("box", "blue", "checkered", x=0.2, y=0.02, radius=0.24, angle=10.0,
                texture_angle=15.0, period=0.62, phase=0.2)
    scene = world.Scene("grass", (box,), seed=23, light=(210.0, 55.0))
    t = _steps(n)
    return world.Clip(scene, tuple(world.Camera(x=float(0.4 * s), y=float(0.03 * s)) for s in t),
                tuple(((0.0, 0.0, float(40.0 * s)),) for s in t))


def ball_zoom(n: int = 24) -> world.Clip:
    """Portrait 3:4. The camera zooms in (x1.4) on a purple ringed ball resting on tiles, drifting
    a little to the right."""
    ball = world.Thing("ball", "purple", "ringed", x=-0.05, y=0.08, radius=0.2, period=0.72,
                       phase=0.1)
    scene = world.Scene("tiles", (ball,), seed=5, light=(240.0, 45.0))
    t = _steps(n)
    return world.Clip(scene, tuple(world.Camera(x=float(-0.04 * s), y=float(0.06 * s),
                                                zoom=float(1.4 ** s)) for s in t),
                tuple(((float(0.06 * s), 0.0, float(-30.0 * s)),) for s in t))


def crossing(n: int = 24) -> world.Clip:
    """4:3, two objects. A yellow striped triangle crosses to the right above a green dotted ball
    that rolls to the left, on sand."""
    triangle = world.Thing("triangle", "yellow", "striped", x=-0.38, y=-0.2, radius=0.17,
                           angle=15.0, texture_angle=70.0, period=0.85, phase=0.3)
    ball = world.Thing("ball", "green", "dotted", x=0.36, y=0.22, radius=0.17, texture_angle=20.0,
                 period=0.85, phase=0.6)
    scene = world.Scene("sand", (triangle, ball), seed=7, light=(220.0, 50.0))
    t = _steps(n)
    roll = -0.7 * t
    return world.Clip(scene, tuple(world.Camera() for _ in t),
                tuple(((float(0.76 * s), 0.0, float(90.0 * s)),
                       (float(r), 0.0, float(math.degrees(r / ball.radius))))
                      for s, r in zip(t, roll)))


#: name -> clip; examples/README.md lists them with their captions.
CLIPS: dict[str, ExampleClip] = {
    "rolling_ball": ExampleClip(rolling_ball, SHORT, SHORT, 16),
    "box_pan": ExampleClip(box_pan, SHORT, 342, 24),  # 16:9 (341.3 rounded to even)
    "ball_zoom": ExampleClip(ball_zoom, 256, SHORT, 24),  # 3:4
    "crossing": ExampleClip(crossing, SHORT, 256, 24),  # 4:3
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE, help="folder (default examples/clips)")
    args = parser.parse_args()
    from tokenflow.video import VideoError, write_video

    for name, example in CLIPS.items():
        path = args.out / f"{name}.mp4"
        try:
            args.out.mkdir(parents=True, exist_ok=True)
            write_video(path, example.render(), fps=FPS)  # atomic: written aside, then renamed
        except (OSError, VideoError) as exc:
            parser.exit(1, f"make_clips.py: cannot write {path}: {exc}\n")
        print(f"{path}: {example.caption()!r}")


if __name__ == "__main__":
    main()
