"""Clips whose true motion is known exactly, to check the metrics of ``tokenflow.eval.metrics``.

    python examples/motion_clips.py [--out examples/motion] [--long-range 4] [--measure]

Four clips (128x128, 24 frames, 12 fps), each rendered analytically from per-frame affine maps of
a procedural texture (smooth multi-scale colour noise, float32, sampled bilinearly with
``cv2.warpAffine``; OpenCV does not quantise sample positions for float images):

* ``translate``: the texture moves by a constant sub-pixel velocity;
* ``rotate``: the texture turns about the frame centre by a fixed angle per frame;
* ``zoom``: the texture is magnified about the frame centre by a fixed factor per frame;
* ``occlusion``: a red ball from ``tokenflow.embedded.world`` moves across a textured background that
  itself pans, covering and uncovering it.

Because frame ``t`` shows texture point ``q = A_t p`` at pixel ``p``, the point seen at ``p`` in
frame ``t`` is at ``A_s^-1 A_t p`` in frame ``s``: :func:`true_flow` is exact for any pair. In
``occlusion`` the ball's pixels (its warped coverage >= 0.5) follow the ball instead. A true flow
says where a pixel's *surface point* goes, whether or not it is visible there; occlusions (and
pixels leaving the frame) are left to the forward-backward test of
:func:`tokenflow.eval.metrics.valid_mask` applied to the true flows in both directions
(:func:`tokenflow.eval.metrics.true_flows`).

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
import math
from dataclasses import asdict, dataclass, fields
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

from tokenflow.eval.metrics import (
    flow_epe,
    load_true_flow,
    save_true_flow,
    true_flows,
    video_flows,
    warp_error,
)
from tokenflow.video import write_frames, write_video
from tokenflow.embedded.world import COLOURS, Scene, Thing, render

__all__ = ["CLIPS", "KINDS", "MotionClip", "flow_pairs", "load_clip_params", "load_true_flow", "measure",
           "object_mask", "render_clip", "render_frame", "save_clip", "texture", "true_flow"]


HERE = Path(__file__).resolve().parent / "motion"
KINDS = ("translate", "rotate", "zoom", "occlusion")
FPS = 12
LONG_RANGE = 4


@dataclass(frozen=True)
class MotionClip:
    """Everything that determines a clip. Pixel coordinates: x right, y down, pixel centres at
    integers; the frame centre is ``((W-1)/2, (H-1)/2)``."""

    kind: str
    frames: int = 24
    height: int = 128
    width: int = 128
    #: (dx, dy) pixels per frame: the texture ("translate") or the background pan ("occlusion").
    velocity: tuple[float, float] = (0.0, 0.0)
    #: degrees per frame ("rotate"); positive turns clockwise on screen (y points down).
    angle: float = 0.0
    #: scale factor per frame ("zoom"); > 1 zooms in.
    zoom: float = 1.0
    #: "occlusion": the ball's centre in frame 0 (x, y), its velocity, radius (pixels) and colour.
    object_start: tuple[float, float] = (32.0, 64.0)
    object_velocity: tuple[float, float] = (0.0, 0.0)
    object_radius: float = 20.0
    object_colour: str = "red"
    seed: int = 0
    texture_size: int = 384

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown kind {self.kind!r}; choose one of {', '.join(KINDS)}")
        if self.object_colour not in COLOURS:
            raise ValueError(f"unknown colour {self.object_colour!r}")
        if self.frames < 1 or self.height < 2 or self.width < 2 or self.zoom <= 0:
            raise ValueError(f"invalid clip {self}")

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> MotionClip:
        data = json.loads(text)
        tuples = {f.name for f in fields(cls) if str(f.type).startswith("tuple")}
        return cls(**{k: tuple(v) if k in tuples else v for k, v in data.items()})


CLIPS: dict[str, MotionClip] = {
    "translate": MotionClip("translate", velocity=(1.25, -0.5)),
    "rotate": MotionClip("rotate", angle=1.5),
    "zoom": MotionClip("zoom", zoom=1.02),
    "occlusion": MotionClip("occlusion", velocity=(-0.75, 0.25), object_start=(30.0, 60.0),
                            object_velocity=(2.5, 0.5), object_radius=20.0),
}


# --------------------------------------------------------------------------- rendering


@lru_cache(maxsize=8)
def texture(size: int, seed: int = 0) -> np.ndarray:
    """A smooth colour-noise texture, float32 (size, size, 3) in [8, 247] (read-only).

    Gaussian-filtered white noise at four scales (sigma 2 to 16 px): fine enough for optical
    flow to lock onto, smooth enough that bilinear interpolation errs by well under 1/255.
    """
    rng = np.random.default_rng(seed)
    out = np.zeros((size, size, 3), np.float32)
    for sigma, weight in ((2.0, 0.6), (4.0, 0.8), (8.0, 1.0), (16.0, 1.0)):
        shared = rng.standard_normal((size, size, 1)).astype(np.float32)
        colour = rng.standard_normal((size, size, 3)).astype(np.float32)
        layer = cv2.GaussianBlur(np.ascontiguousarray(shared + 0.6 * colour), (0, 0), sigma,
                                 borderType=cv2.BORDER_REFLECT)
        out += weight * layer / layer.std()
    out = np.clip(128 + out * (40 / out.std()), 8, 247).astype(np.float32)
    out.setflags(write=False)
    return out


def _centre(clip: MotionClip) -> np.ndarray:
    return np.array([(clip.width - 1) / 2, (clip.height - 1) / 2])


def frame_to_texture(clip: MotionClip, t: float) -> np.ndarray:
    """3x3 matrix ``A_t``: pixel ``p`` of frame ``t`` shows texture point ``A_t p`` (homogeneous)."""
    c = _centre(clip)
    big = (clip.texture_size - 1) / 2
    if clip.kind in ("translate", "occlusion"):
        linear, offset = np.eye(2), -np.asarray(clip.velocity, float) * t
    elif clip.kind == "rotate":
        a = -math.radians(clip.angle * t)
        linear, offset = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]]), np.zeros(2)
    else:  # zoom
        linear, offset = np.eye(2) / clip.zoom ** t, np.zeros(2)
    m = np.eye(3)
    m[:2, :2] = linear
    m[:2, 2] = big + offset - linear @ c  # q = big + offset + L (p - c)
    return m


def object_centre(clip: MotionClip, t: float) -> np.ndarray:
    return np.asarray(clip.object_start, float) + np.asarray(clip.object_velocity, float) * t


@lru_cache(maxsize=8)
def _sprite(radius: float, colour: str) -> tuple[np.ndarray, np.ndarray, float]:
    """The world's ball: premultiplied RGB, coverage alpha (its visible mask) and its centre index."""
    size = math.ceil(2 * radius) + 6
    # The world measures in fractions of the short side with pixel centres at +0.5, so the ball's
    # centre (0.5 of the side) is at pixel index (size - 1) / 2.
    scene = Scene("gray wall", (Thing("ball", colour, cx=0.5, cy=0.5, radius=radius / size),))
    image, masks = render(scene, size, size)
    alpha = masks[0].astype(np.float32)
    return image.astype(np.float32) * alpha[..., None], alpha, (size - 1) / 2


def _object_layer(clip: MotionClip, t: int) -> tuple[np.ndarray, np.ndarray]:
    """The ball in frame ``t``: its colour (H, W, 3) and its hard mask (coverage >= 0.5).

    The sprite is moved with bilinear sampling of its premultiplied colour and coverage; the
    frame then shows the ball wherever the coverage is at least 0.5 and the background elsewhere
    (no blending), so that every pixel shows exactly one surface and has one true flow.
    """
    premult, alpha, cs = _sprite(float(clip.object_radius), clip.object_colour)
    ox, oy = object_centre(clip, t)
    m = np.array([[1.0, 0.0, cs - ox], [0.0, 1.0, cs - oy]])  # frame pixel -> sprite pixel
    size = (clip.width, clip.height)
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    rgb = cv2.warpAffine(premult, m, size, flags=flags, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    a = cv2.warpAffine(alpha, m, size, flags=flags, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    mask = a >= 0.5
    colour = np.where(mask[..., None], rgb / np.maximum(a, 1e-6)[..., None], 0).astype(np.float32)
    return colour, mask


def object_mask(clip: MotionClip, t: int) -> np.ndarray:
    """bool (H, W): the pixels of frame ``t`` that belong to the ball (coverage >= 0.5)."""
    if clip.kind != "occlusion":
        return np.zeros((clip.height, clip.width), bool)
    return _object_layer(clip, t)[1]


def _check_coverage(clip: MotionClip) -> None:
    corners = np.array([[0, 0, 1], [clip.width - 1, 0, 1], [0, clip.height - 1, 1],
                        [clip.width - 1, clip.height - 1, 1]], float).T
    for t in range(clip.frames):
        q = frame_to_texture(clip, t) @ corners
        if q[:2].min() < 1 or q[:2].max() > clip.texture_size - 2:
            raise ValueError(f"frame {t} of {clip.kind} leaves the {clip.texture_size}px texture; "
                             "use a larger texture_size or a slower motion")


def render_frame(clip: MotionClip, t: int) -> np.ndarray:
    """Frame ``t``: uint8 (H, W, 3)."""
    tex = texture(clip.texture_size, clip.seed)
    a = frame_to_texture(clip, t)
    frame = cv2.warpAffine(tex, a[:2], (clip.width, clip.height),
                           flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REPLICATE)
    if clip.kind == "occlusion":
        colour, mask = _object_layer(clip, t)
        frame = np.where(mask[..., None], colour, frame)
    return np.clip(np.round(frame), 0, 255).astype(np.uint8)


def render_clip(clip: MotionClip) -> np.ndarray:
    """All frames: uint8 (N, H, W, 3)."""
    _check_coverage(clip)
    return np.stack([render_frame(clip, t) for t in range(clip.frames)])


def true_flow(clip: MotionClip, t: int, s: int) -> np.ndarray:
    """The exact flow from frame ``t`` to frame ``s``: float32 (H, W, 2), ``(dx, dy)`` such that the
    surface point at pixel ``(x, y)`` of frame ``t`` is at ``(x + dx, y + dy)`` in frame ``s``.

    Background/texture pixels follow ``A_s^-1 A_t``; in "occlusion" the ball's pixels of frame
    ``t`` follow the ball. Occlusion is not marked here: apply the forward-backward test to the
    true flows in both directions (``tokenflow.eval.metrics.true_flows``).
    """
    m = np.linalg.inv(frame_to_texture(clip, s)) @ frame_to_texture(clip, t)
    ys, xs = np.mgrid[0:clip.height, 0:clip.width].astype(np.float64)
    flow = np.empty((clip.height, clip.width, 2), np.float64)
    flow[..., 0] = m[0, 0] * xs + m[0, 1] * ys + m[0, 2] - xs
    flow[..., 1] = m[1, 0] * xs + m[1, 1] * ys + m[1, 2] - ys
    if clip.kind == "occlusion":
        flow[object_mask(clip, t)] = np.asarray(clip.object_velocity, float) * (s - t)
    return flow.astype(np.float32)


def flow_pairs(n: int, long_range: int = LONG_RANGE) -> list[tuple[int, int]]:
    """Consecutive pairs and pairs ``long_range`` apart, in both directions."""
    pairs = [(t, t + 1) for t in range(n - 1)] + [(t, t + long_range) for t in range(n - long_range)]
    return pairs + [(s, t) for t, s in pairs]


# --------------------------------------------------------------------------- files


def save_clip(clip: MotionClip, directory: str | Path, name: str, *, long_range: int = LONG_RANGE,
              fps: float = FPS) -> dict[str, Path]:
    """Write ``NAME.mp4``, ``NAME/*.png`` and ``NAME.flow.npz`` into ``directory``."""
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    frames = render_clip(clip)
    paths = {"mp4": folder / f"{name}.mp4", "frames": folder / name, "flow": folder / f"{name}.flow.npz"}
    write_video(paths["mp4"], frames, fps)
    if paths["frames"].is_dir():
        for old in paths["frames"].glob("*.png"):  # frames of an earlier, longer clip
            old.unlink()
    write_frames(paths["frames"], frames)
    pairs = flow_pairs(clip.frames, long_range)
    save_true_flow(paths["flow"], {(t, s): true_flow(clip, t, s) for t, s in pairs}, params=clip.to_json())
    return paths


def load_clip_params(path: str | Path) -> MotionClip:
    """The :class:`MotionClip` stored in a ``.flow.npz``."""
    with np.load(path, allow_pickle=False) as data:
        return MotionClip.from_json(str(data["params"]))


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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=HERE, help="output folder (default examples/motion)")
    parser.add_argument("--long-range", type=int, default=LONG_RANGE, help="frame gap of the long pairs")
    parser.add_argument("--measure", action="store_true", help="print DIS/Farneback errors against the true flow")
    args = parser.parse_args(argv)
    for name, clip in CLIPS.items():
        paths = save_clip(clip, args.out, name, long_range=args.long_range)
        print(paths["mp4"], paths["frames"], paths["flow"])
    if args.measure:
        print(f"\n{'clip':<10} {'pairs':<6} {'EPE dis':>8} {'EPE fb':>8} {'warp true':>10} {'warp dis':>10} {'warp fb':>10}")
        for name, clip in CLIPS.items():
            for span, row in measure(clip, args.long_range).items():
                print(f"{name:<10} {span:<6} {row['epe_dis']:8.3f} {row['epe_farneback']:8.3f} "
                      f"{row['warp_true']:10.2e} {row['warp_dis']:10.2e} {row['warp_farneback']:10.2e}")


if __name__ == "__main__":
    main()
