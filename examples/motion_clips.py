"""Clips whose true motion is known exactly, to check the metrics of ``tokenflow.eval.metrics``.

    python examples/motion_clips.py [--out examples/motion] [--long-range 4] [--measure]

Four clips of the embedded model's world v2 (:mod:`tokenflow.embedded.world2`: textured, shaded
objects on textured backgrounds, a moving camera), 24 frames at 12 fps, each a
:class:`MotionClip`: a scene, a camera pan and zoom per frame and, per object, a move and a turn
per frame (world units, fractions of the frame's short side; degrees, positive clockwise on
screen):

* ``pan`` (96x160): the camera pans over sand; a striped box and a dotted ball stay put in the
  world, so the whole picture moves by the pan;
* ``zoom`` (96x128, 4:3): the camera zooms in on grass, a checkered box and a ringed triangle;
* ``turn`` (160x96, portrait): a still camera over tiles; a striped box and a checkered triangle
  turn, a dotted ball moves across, turning. The light is overhead: world v2 lights every
  object from a fixed direction, and only from overhead does a turning surface keep its
  brightness;
* ``occlusion`` (96x160): the camera pans over sand while a striped ball passes in front of a
  dotted box (world v2 draws objects in order, later over earlier).

Wood (its grain runs one way: DIS cannot follow motion along it) and tiles (their sharp grout
makes resampling err) are never moved.

:func:`true_flow` is exact for any pair of frames: for the centre ``p`` of each pixel of frame
``t`` it finds the surface seen there (the topmost object whose shape holds the world point
under ``p``, else the background: ``Scene.owner``), follows that surface point to frame ``s``
(an object's point keeps its object coordinates, ``Thing.local`` and ``Thing.world``; a
background point keeps its world coordinates) and projects it with frame ``s``'s camera
(``Camera.to_pixels``). A true flow says where a pixel's *surface point* goes, whether or not it
is visible there; occlusions (and pixels leaving the frame) are left to the forward-backward
test of :func:`tokenflow.eval.metrics.valid_mask` applied to the true flows in both directions
(:func:`tokenflow.eval.metrics.true_flows`). Frames are rendered at 2x supersampling with a box
filter, so the flow is exact for the surfaces and the frames are exact up to that anti-aliasing.

For each clip ``NAME`` the output folder gets ``NAME.mp4`` (H.264, lossy: for viewing and for
``tf run``), ``NAME/00000.png ...`` (the exact frames; ``tf`` reads frame folders too) and
``NAME.flow.npz``: arrays ``pairs`` (P, 2) int32, ``flows`` (P, H, W, 2) float32 (the flow
``t -> s`` for every pair ``(t, s)``: consecutive and ``long_range`` apart, both directions) and
``params`` (the clip's parameters as JSON text), written by ``tokenflow.eval.metrics.save_true_flow``.
Load it with :func:`load_true_flow` (``tokenflow.eval.metrics.load_true_flow``, re-exported here; no
pickle) and :func:`load_clip_params`; ``tf eval --true-flow NAME.flow.npz`` uses it too.
The files are generated, not tracked (``/examples/motion/`` is in .gitignore).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from tokenflow.embedded.world2 import BACKGROUNDS, COLOURS, SHAPES, TEXTURES, Camera, Clip, Scene, Thing
from tokenflow.eval.metrics import (
    flow_epe,
    load_true_flow,
    save_true_flow,
    true_flows,
    video_flows,
    warp_error,
)
from tokenflow.video import VideoError, write_frames, write_video

__all__ = ["CLIPS", "KINDS", "MotionClip", "flow_pairs", "load_clip_params", "load_true_flow", "measure",
           "object_mask", "render_clip", "render_frame", "save_clip", "surfaces", "true_flow"]


HERE = Path(__file__).resolve().parent / "motion"
FPS = 12
LONG_RANGE = 4


@dataclass(frozen=True)
class MotionClip:
    """Everything that determines a clip: a world v2 scene (objects at their pose in frame 0, the
    camera at the world's origin with zoom 1) and constant motions per frame."""

    scene: Scene
    frames: int = 24
    height: int = 96
    width: int = 160
    #: the camera's move per frame (x right, y down), world units; the picture moves the other way.
    pan: tuple[float, float] = (0.0, 0.0)
    #: the camera's zoom factor per frame (> 1 zooms in, about the frame centre).
    zoom: float = 1.0
    #: per object (one each, or none): its move (dx, dy) in world units and turn in degrees per frame.
    motions: tuple[tuple[float, float, float], ...] = ()

    def __post_init__(self) -> None:
        if self.frames < 1 or self.height < 2 or self.width < 2 or not self.zoom > 0:
            raise ValueError(f"invalid clip size or zoom: {self.frames} frames of {self.height}x{self.width}, "
                             f"zoom {self.zoom}")
        if self.scene.background not in BACKGROUNDS:
            raise ValueError(f"unknown background {self.scene.background!r}; choose one of {', '.join(BACKGROUNDS)}")
        for thing in self.scene.things:
            for value, allowed in ((thing.shape, SHAPES), (thing.colour, tuple(COLOURS)),
                                   (thing.texture, TEXTURES)):
                if value not in allowed:
                    raise ValueError(f"unknown {value!r}; choose one of {', '.join(allowed)}")
        if self.motions and len(self.motions) != len(self.scene.things):
            raise ValueError(f"{len(self.motions)} motions for {len(self.scene.things)} objects")

    def world(self) -> Clip:
        """The world v2 clip: one camera and one pose offset per object for every frame."""
        cameras = tuple(Camera(self.pan[0] * t, self.pan[1] * t, self.zoom ** t) for t in range(self.frames))
        offsets = tuple(tuple((dx * t, dy * t, da * t) for dx, dy, da in self.motions)
                        for t in range(self.frames)) if self.motions else ()
        return Clip(self.scene, cameras, offsets)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> MotionClip:
        data = _tuples(json.loads(text))
        scene = dict(data.pop("scene"))
        things = tuple(Thing(**thing) for thing in scene.pop("things"))
        return cls(scene=Scene(things=things, **scene), **data)


def _tuples(value):
    """JSON's lists as tuples (the dataclasses' fields are tuples), recursively."""
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    if isinstance(value, dict):
        return {k: _tuples(v) for k, v in value.items()}
    return value


CLIPS: dict[str, MotionClip] = {
    "pan": MotionClip(
        Scene("sand", (Thing("box", "red", "striped", x=-0.4, y=0.12, radius=0.2, angle=20,
                             texture_angle=60, period=0.7),
                       Thing("ball", "yellow", "dotted", x=0.4, y=-0.08, radius=0.2, period=0.7,
                             phase=0.3)),
              seed=1),
        pan=(0.012, -0.005)),
    "zoom": MotionClip(
        Scene("grass", (Thing("box", "blue", "checkered", x=-0.25, y=0.05, radius=0.14,
                              texture_angle=30, period=1.0),
                        Thing("triangle", "yellow", "ringed", x=0.25, y=-0.02, radius=0.15, angle=10,
                              period=0.95)),
              seed=2),
        height=96, width=128, zoom=1.015),
    "turn": MotionClip(
        Scene("tiles", (Thing("box", "purple", "striped", x=0.0, y=-0.5, radius=0.2, texture_angle=15,
                              period=0.7),
                        Thing("ball", "orange", "dotted", x=-0.17, y=0.0, radius=0.14, period=1.0),
                        Thing("triangle", "blue", "checkered", x=0.03, y=0.5, radius=0.18, angle=40,
                              period=0.8)),
              seed=3, light=(0.0, 90.0)),
        height=160, width=96, motions=((0.0, 0.0, 3.0), (0.012, 0.0, 4.0), (0.0, -0.002, -2.5))),
    "occlusion": MotionClip(
        Scene("sand", (Thing("box", "green", "dotted", x=0.0, y=0.0, radius=0.2, angle=10, period=0.7),
                       Thing("ball", "red", "striped", x=-0.5, y=0.04, radius=0.16, texture_angle=70,
                             period=0.9)),
              seed=4),
        pan=(0.01, 0.003), motions=((0.0, 0.0, 0.0), (0.04, -0.001, 0.0))),
}
KINDS = tuple(CLIPS)


# --------------------------------------------------------------------------- rendering and flow


def render_frame(clip: MotionClip, t: int) -> np.ndarray:
    """Frame ``t``: uint8 (H, W, 3)."""
    return clip.world().render(t, clip.height, clip.width)[0]


def render_clip(clip: MotionClip) -> np.ndarray:
    """All frames: uint8 (N, H, W, 3)."""
    world = clip.world()
    return np.stack([world.render(t, clip.height, clip.width)[0] for t in range(clip.frames)])


def _pixel_centres(clip: MotionClip) -> tuple[np.ndarray, np.ndarray]:
    """Column and row of every pixel centre in world v2's pixel coordinates (float64 (H, W))."""
    rows, cols = np.mgrid[0:clip.height, 0:clip.width].astype(np.float64) + 0.5
    return cols, rows


def surfaces(clip: MotionClip, t: int) -> np.ndarray:
    """int64 (H, W): the object seen at each pixel centre of frame ``t``, -1 for the background."""
    scene, camera = clip.world().frame(t)
    return scene.owner(*camera.to_world(*_pixel_centres(clip), clip.height, clip.width))


def object_mask(clip: MotionClip, t: int) -> np.ndarray:
    """bool (H, W): the pixels of frame ``t`` whose centre shows an object."""
    return surfaces(clip, t) >= 0


def true_flow(clip: MotionClip, t: int, s: int) -> np.ndarray:
    """The exact flow from frame ``t`` to frame ``s``: float32 (H, W, 2), ``(dx, dy)`` such that the
    surface point at pixel ``(x, y)`` of frame ``t`` is at ``(x + dx, y + dy)`` in frame ``s``.

    Pixels that show an object follow the object (its move and turn), the others the background
    (fixed in the world); both through the cameras of ``t`` and ``s``. Occlusion is not marked
    here: apply the forward-backward test to the true flows in both directions
    (``tokenflow.eval.metrics.true_flows``).
    """
    world = clip.world()
    (scene_t, camera_t), (scene_s, camera_s) = world.frame(t), world.frame(s)
    cols, rows = _pixel_centres(clip)
    x, y = camera_t.to_world(cols, rows, clip.height, clip.width)
    owner = scene_t.owner(x, y)
    for i, (before, after) in enumerate(zip(scene_t.things, scene_s.things)):
        mine = owner == i
        x[mine], y[mine] = after.world(*before.local(x[mine], y[mine]))
    to_col, to_row = camera_s.to_pixels(x, y, clip.height, clip.width)
    return np.stack([to_col - cols, to_row - rows], axis=-1).astype(np.float32)


def flow_pairs(n: int, long_range: int = LONG_RANGE) -> list[tuple[int, int]]:
    """Consecutive pairs and pairs ``long_range`` apart, in both directions."""
    pairs = [(t, t + 1) for t in range(n - 1)] + [(t, t + long_range) for t in range(n - long_range)]
    return pairs + [(s, t) for t, s in pairs]


# --------------------------------------------------------------------------- files


def save_clip(clip: MotionClip, directory: str | Path, name: str, *, long_range: int = LONG_RANGE,
              fps: float = FPS) -> dict[str, Path]:
    """Write ``NAME.mp4``, ``NAME/*.png`` and ``NAME.flow.npz`` into ``directory`` (each file
    atomically; frames of an earlier, longer clip of that name are removed after the new ones are
    written)."""
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    frames = render_clip(clip)
    paths = {"mp4": folder / f"{name}.mp4", "frames": folder / name, "flow": folder / f"{name}.flow.npz"}
    write_video(paths["mp4"], frames, fps)
    kept = set(write_frames(paths["frames"], frames))
    for old in paths["frames"].glob("*.png"):
        if old not in kept:
            old.unlink()
    pairs = flow_pairs(clip.frames, long_range)
    save_true_flow(paths["flow"], {(t, s): true_flow(clip, t, s) for t, s in pairs}, params=clip.to_json())
    return paths


def load_clip_params(path: str | Path) -> MotionClip:
    """The :class:`MotionClip` stored in a ``.flow.npz``; ``ValueError`` if it holds none."""
    with np.load(path, allow_pickle=False) as data:
        text = str(data["params"]) if "params" in data.files else ""
    try:
        return MotionClip.from_json(text)
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise ValueError(f"{path}: its params are not a motion clip of world v2 ({exc})") from None


# --------------------------------------------------------------------------- measuring


def measure(clip: MotionClip, long_range: int = LONG_RANGE) -> dict[str, dict[str, float]]:
    """How well DIS and Farneback recover the clip's true flow.

    For ``short`` (t, t+1) and ``long`` (t, t+long_range) pairs: the mean endpoint error against
    the true flow (pixels valid in the true flow), and the source's warp error (MSE, RGB in [0, 1])
    with the true flow and with each estimate (each over its own valid pixels).
    """
    frames = render_clip(clip)
    pairs = flow_pairs(clip.frames, long_range)
    known = true_flows({p: true_flow(clip, *p) for p in pairs})
    out: dict[str, dict[str, float]] = {}
    for span, wanted in (("short", [(t, t + 1) for t in range(clip.frames - 1)]),
                         ("long", [(t, t + long_range) for t in range(clip.frames - long_range)])):
        row = {"warp_true": float(np.nanmean(warp_error(frames, known, wanted)))}
        for method in ("dis", "farneback"):
            est = video_flows(frames, wanted, method)
            row[f"epe_{method}"] = float(np.nanmean(flow_epe(known, est, wanted)))
            row[f"warp_{method}"] = float(np.nanmean(warp_error(frames, est, wanted)))
        out[span] = row
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=HERE, help="output folder (default examples/motion)")
    parser.add_argument("--long-range", type=int, default=LONG_RANGE, help="frame gap of the long pairs")
    parser.add_argument("--measure", action="store_true", help="print DIS/Farneback errors against the true flow")
    args = parser.parse_args(argv)
    shortest = min(clip.frames for clip in CLIPS.values())
    if not 1 <= args.long_range < shortest:
        parser.error(f"--long-range must be between 1 and {shortest - 1}, got {args.long_range}")
    try:
        for name, clip in CLIPS.items():
            paths = save_clip(clip, args.out, name, long_range=args.long_range)
            print(paths["mp4"], paths["frames"], paths["flow"])
    except (OSError, VideoError) as exc:
        print(f"error: cannot write the clips to {args.out}: {exc}", file=sys.stderr)
        return 1
    if args.measure:
        print(f"\n{'clip':<10} {'size':<8} {'pairs':<6} {'EPE dis':>8} {'EPE fb':>8} {'warp true':>10} "
              f"{'warp dis':>10} {'warp fb':>10}")
        for name, clip in CLIPS.items():
            size = f"{clip.height}x{clip.width}"
            for span, row in measure(clip, args.long_range).items():
                print(f"{name:<10} {size:<8} {span:<6} {row['epe_dis']:8.3f} {row['epe_farneback']:8.3f} "
                      f"{row['warp_true']:10.2e} {row['warp_dis']:10.2e} {row['warp_farneback']:10.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
