"""How the working size's design shows in the result: clips of another aspect than the UNet's
grid, edited by the embedded model, measured at the source's size.

    python benchmarks/aspect.py [--clips ball-16x9,sky-16x9,ball-4x3] [--designs stretch,centre,pad]
                                [--frames 12]

Clips: tokenflow's world rendered at 256x144 (16:9) or 192x144 (4:3), one ball moving (its
caption as the inversion prompt, its colour changed by the prompt). Designs, in this process
(``tokenflow.edit``, the embedded model's defaults, one torch thread):

* ``stretch``: each side rounded to the nearest multiple of 64 (the code before issue 12): the
  frames are resized to 128x64 (16:9) or 64x64 (4:3) and the outputs, at the source's size,
  resized back;
* ``centre``: the frames padded to the next multiples by mirroring, centred on the canvas;
* ``pad``: this checkout's ``tokenflow.sizes.Framing``: padded to the right and below.

Per clip and design: the canvas the UNet saw, the ball's width / height in the edit over the
same in the source (1.000: round stays round; the largest connected object of
``tokenflow.embedded.world.object_mask``), the share of the outer 16 px columns holding other
object pixels (what the model drew at the frame's edges; 0 in the sources), how many frames
have the asked colour, and the seconds. Prints one Markdown table.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

CLIPS = {"ball-16x9": ("checkered floor", "red", "blue", 144, 256),
         "sky-16x9": ("sky", "orange", "purple", 144, 256),
         "ball-4x3": ("checkered floor", "red", "blue", 144, 192)}
DESIGNS = ("stretch", "centre", "pad")


def render_clip(name: str, n: int) -> np.ndarray:
    from tokenflow.embedded.world import Scene, Thing, render

    background, colour, _, height, width = CLIPS[name]
    scene = Scene(background, (Thing("ball", colour, cx=0.4, cy=0.5, radius=0.24),), cell=8)
    span = width / height - 0.8  # in units of the short side, as the world measures
    return np.stack([render(scene.with_thing(0, cx=0.4 + span * i / max(1, n - 1)), height,
                            width)[0] for i in range(n)])


def use_design(design: str, original: tuple) -> None:
    """Make ``tokenflow.api.prepare`` size frames as ``design`` does (it imports these module
    attributes at each call); ``original``: this checkout's (working_size, pad, crop)."""
    import tokenflow.sizes as sizes

    sizes.working_size, sizes.Framing.pad, sizes.Framing.crop = original
    if design == "stretch":
        exact = sizes.working_size

        def rounded(height, width, size, *, native):
            h, w = exact(height, width, size, native=native)
            return tuple(max(64, int(np.floor(s / 64 + 0.5)) * 64) for s in (h, w))

        sizes.working_size = rounded
    elif design == "centre":
        def offsets(f):
            return (f.canvas_height - f.height) // 2, (f.canvas_width - f.width) // 2

        def pad(self, frames):
            (top, left), (ch, cw) = offsets(self), (self.canvas_height, self.canvas_width)
            return np.pad(frames, ((0, 0), (top, ch - self.height - top),
                                   (left, cw - self.width - left), (0, 0)), mode="reflect")

        def crop(self, frames):
            top, left = offsets(self)
            return frames[:, top:top + self.height, left:left + self.width]

        sizes.Framing.pad, sizes.Framing.crop = pad, crop


def ball_shape(frame: np.ndarray) -> tuple[float, float]:
    """The largest object's width / height, and the share of the outer 16 px columns holding
    other object pixels."""
    import cv2

    from tokenflow.embedded.world import object_mask

    mask = object_mask(frame).astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask)
    if count < 2:
        return float("nan"), 0.0
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    ratio = stats[largest, cv2.CC_STAT_WIDTH] / stats[largest, cv2.CC_STAT_HEIGHT]
    stray = (mask > 0) & (labels != largest)
    edges = np.r_[0:16, frame.shape[1] - 16:frame.shape[1]]
    return float(ratio), float(stray[:, edges].mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", default=",".join(CLIPS))
    parser.add_argument("--designs", default=",".join(DESIGNS))
    parser.add_argument("--frames", type=int, default=12)
    args = parser.parse_args()
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import torch

    torch.set_num_threads(1)
    import tokenflow
    import tokenflow.sizes as sizes
    from tokenflow.embedded.world import object_colour
    from tokenflow.video import read_video

    original = (sizes.working_size, sizes.Framing.pad, sizes.Framing.crop)

    print("| clip | design | canvas | ball w/h, edit / source | edge columns with stray "
          "object pixels | frames of the asked colour | seconds |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="tf-aspect-") as tmp:
        for design in args.designs.split(","):
            use_design(design, original)
            for name in args.clips.split(","):
                background, colour, target, *_ = CLIPS[name]
                frames = render_clip(name, args.frames)
                source_ratio = np.median([ball_shape(f)[0] for f in frames])
                start = time.perf_counter()
                out = Path(tmp) / f"{design}-{name}"
                result = tokenflow.edit(
                    frames_video(frames, Path(tmp) / name), out=out,
                    inversion_prompt=f"a {colour} ball on {article(background)}",
                    prompt=f"a {target} ball on {article(background)}",
                    cache_dir=Path(tmp) / f"cache-{design}")
                seconds = time.perf_counter() - start
                edited = read_video(out / "frames").frames
                shapes = [ball_shape(f) for f in edited]
                ratio = np.nanmedian([r for r, _ in shapes]) / source_ratio
                stray = np.mean([s for _, s in shapes])
                hits = sum(object_colour(f) == target for f in edited)
                canvas = result.record["canvas"]
                print(f"| {name} | {design} | {canvas['width']}x{canvas['height']} | "
                      f"{ratio:.3f} | {stray:.2%} | {hits}/{len(edited)} | {seconds:.0f} |",
                      flush=True)


def frames_video(frames: np.ndarray, folder: Path) -> Path:
    from tokenflow.video import write_frames

    if not folder.exists():
        write_frames(folder, frames)
    return folder


def article(background: str) -> str:
    return background if background == "sky" else f"a {background}"


if __name__ == "__main__":
    main()
