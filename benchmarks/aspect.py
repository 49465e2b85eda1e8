"""How the working size's design shows in the result: clips of another aspect than the UNet's
grid, edited by the embedded model, measured at the source's size.

    python benchmarks/aspect.py [--clips ball-16x9,wall-16x9,ball-9x16] [--designs stretch,centre,pad]
                                [--frames 12]

Clips: tokenflow's world (v2) rendered at 256x144 (16:9) or 144x256 (9:16), one ball moving
along the long side (its caption as the inversion prompt, its colour changed by the prompt).
Designs, in this process (``tokenflow.edit``, the embedded model's defaults, one torch thread):

* ``stretch``: each side rounded to the nearest multiple of the UNet's (``Model.size_multiple``;
  the code before issue 12): the frames are resized to the rounded canvas and the outputs, at the
  source's size, resized back;
* ``centre``: the frames padded to the next multiples by mirroring, centred on the canvas;
* ``pad``: this checkout's ``tokenflow.sizes.Framing``: padded to the right and below.

Per clip and design: the canvas the UNet saw, the ball's extent along the long side over its
extent across it, in the edit over the same in the source (1.000: round stays round; the largest
object of ``tokenflow.world.object_masks``), the share of the outer 16 px at both ends of the
long side holding other object pixels (what the model drew at the frame's ends; 0 in the
sources), how many frames have the asked colour, and the seconds. Prints one Markdown table.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

#: name: (background, colour, target colour, height, width)
CLIPS = {"ball-16x9": ("tiles", "red", "blue", 144, 256),
         "wall-16x9": ("wall", "orange", "purple", 144, 256),
         "ball-9x16": ("tiles", "red", "blue", 256, 144)}
DESIGNS = ("stretch", "centre", "pad")
RADIUS = 0.24


def scene_of(name: str, colour: str | None = None):
    from tokenflow import world

    background, source_colour, *_ = CLIPS[name]
    return world.Scene(background, (world.Thing("ball", colour or source_colour, radius=RADIUS),))


def render_clip(name: str, n: int) -> np.ndarray:
    """The ball crossing the frame along its long side, ``RADIUS`` + 0.16 from each end (world
    units: the short side is 1, the origin at the frame's centre)."""
    from tokenflow import world

    *_, height, width = CLIPS[name]
    half = max(height, width) / min(height, width) / 2 - RADIUS - 0.16
    frames = []
    for i in range(n):
        at = -half + 2 * half * i / max(1, n - 1)
        move = {"x": at} if width >= height else {"y": at}
        frames.append(world.render(scene_of(name).with_thing(0, **move), height, width)[0])
    return np.stack(frames)


def use_design(design: str, original: tuple, multiple: int) -> None:
    """Make ``tokenflow.api.prepare`` size frames as ``design`` does (it imports these module
    attributes at each call); ``original``: this checkout's (working_size, pad, crop)."""
    import tokenflow.sizes as sizes

    sizes.working_size, sizes.Framing.pad, sizes.Framing.crop = original
    if design == "stretch":
        exact = sizes.working_size

        def rounded(height, width, size, *, native):
            h, w = exact(height, width, size, native=native)
            return tuple(max(multiple, int(np.floor(s / multiple + 0.5)) * multiple)
                         for s in (h, w))

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
    """The largest object's extent along the frame's long side over its extent across it, and
    the share of the outer 16 px at both ends of the long side holding other object pixels."""
    from tokenflow import world

    masks = world.object_masks(frame)
    if not masks:
        return float("nan"), 0.0
    ys, xs = np.nonzero(masks[0])
    height, width = frame.shape[:2]
    along, across = (xs, ys) if width >= height else (ys, xs)
    ratio = (np.ptp(along) + 1) / (np.ptp(across) + 1)
    stray = world.object_mask(frame) & ~masks[0]
    if width < height:
        stray = stray.T
    ends = np.r_[0:16, stray.shape[1] - 16:stray.shape[1]]
    return float(ratio), float(stray[:, ends].mean())


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
    from tokenflow.models import load_model
    from tokenflow.video import read_video

    original = (sizes.working_size, sizes.Framing.pad, sizes.Framing.crop)
    multiple = load_model(None).size_multiple

    print("| clip | design | canvas | ball long/short extent, edit / source | ends with stray "
          "object pixels | frames of the asked colour | seconds |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="tf-aspect-") as tmp:
        for design in args.designs.split(","):
            use_design(design, original, multiple)
            for name in args.clips.split(","):
                target = CLIPS[name][2]
                frames = render_clip(name, args.frames)
                source_ratio = np.median([ball_shape(f)[0] for f in frames])
                start = time.perf_counter()
                out = Path(tmp) / f"{design}-{name}"
                result = tokenflow.edit(
                    frames_video(frames, Path(tmp) / name), out=out,
                    inversion_prompt=scene_of(name).caption(),
                    prompt=scene_of(name, target).caption(),
                    cache_dir=Path(tmp) / f"cache-{design}")
                seconds = time.perf_counter() - start
                edited = read_video(out / "frames").frames
                shapes = [ball_shape(f) for f in edited]
                ratio = np.nanmedian([r for r, _ in shapes]) / source_ratio
                stray = np.mean([s for _, s in shapes])
                hits = sum(tokenflow.world.object_colour(f) == target for f in edited)
                canvas = result.record["canvas"]
                print(f"| {name} | {design} | {canvas['width']}x{canvas['height']} | "
                      f"{ratio:.3f} | {stray:.2%} | {hits}/{len(edited)} | {seconds:.0f} |",
                      flush=True)


def frames_video(frames: np.ndarray, folder: Path) -> Path:
    from tokenflow.video import write_frames

    if not folder.exists():
        write_frames(folder, frames)
    return folder


if __name__ == "__main__":
    main()
