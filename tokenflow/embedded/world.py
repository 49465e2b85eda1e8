"""The embedded model's world: procedural scenes, their captions, and checks of what an image shows.

A scene is one or more flat-shaded objects (a ball, a box or a triangle; six well-separated
colours; plain, striped or dotted) in front of one of four backgrounds. Every background is
unsaturated and every object saturated, so an object's pixels can be found by saturation alone:
that is what :func:`object_mask`, :func:`object_colour` and :func:`background_kind` rely on to
score generated and edited images without any learned model.
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass, replace

import numpy as np

#: Object colours and their hue in degrees.
COLOURS: dict[str, float] = {"red": 0.0, "orange": 28.0, "yellow": 54.0, "green": 125.0,
                             "blue": 222.0, "purple": 282.0}
SHAPES: tuple[str, ...] = ("ball", "box", "triangle")
#: Textures; "plain" adds no word to the caption.
TEXTURES: tuple[str, ...] = ("plain", "striped", "dotted")
#: Backgrounds as they appear in captions.
BACKGROUNDS: tuple[str, ...] = ("checkered floor", "gray wall", "sky", "sand")
#: Every word a caption can use (the embedded tokenizer keeps each as one token).
WORDS: tuple[str, ...] = ("a", "and", "on", *COLOURS, *SHAPES, "striped", "dotted", "checkered",
                          "floor", "gray", "wall", "sky", "sand")

SATURATION_MIN = 0.45
VALUE_MIN = 0.25


@dataclass(frozen=True)
class Thing:
    """One object: centre and radius as fractions of the image's short side; angle in degrees."""

    shape: str
    colour: str
    texture: str = "plain"
    cx: float = 0.5
    cy: float = 0.5
    radius: float = 0.25
    angle: float = 0.0
    hue_jitter: float = 0.0
    value: float = 0.9

    def words(self) -> str:
        return thing_words(self.colour, self.texture, self.shape)


def thing_words(colour: str, texture: str, shape: str) -> str:
    """An object's words in a caption: ``a red [striped] ball`` ("plain" adds no word)."""
    return f"a {colour} {'' if texture == 'plain' else texture + ' '}{shape}"


@dataclass(frozen=True)
class Scene:
    background: str
    things: tuple[Thing, ...]
    cell: int = 8  # checker cell size (pixels at 64x64; scaled with the image)
    tone: float = 0.0  # small brightness change of the background, -1..1

    def caption(self) -> str:
        return " and ".join(t.words() for t in self.things) + f" on {_article(self.background)}"

    def with_thing(self, index: int, **changes) -> Scene:
        things = list(self.things)
        things[index] = replace(things[index], **changes)
        return replace(self, things=tuple(things))


def _article(background: str) -> str:
    return background if background in ("sky", "sand") else f"a {background}"


def random_scene(rng: np.random.Generator, n_things: int = 1) -> Scene:
    """A random scene with ``n_things`` objects, big enough to fill a good part of the frame."""
    things = []
    for _ in range(n_things):
        radius = float(rng.uniform(0.2, 0.32))
        things.append(Thing(
            shape=str(rng.choice(SHAPES)), colour=str(rng.choice(list(COLOURS))),
            texture=str(rng.choice(TEXTURES, p=(0.5, 0.25, 0.25))),
            cx=float(rng.uniform(radius, 1 - radius)), cy=float(rng.uniform(radius, 1 - radius)),
            radius=radius, angle=float(rng.uniform(0, 360)),
            hue_jitter=float(rng.uniform(-7, 7)), value=float(rng.uniform(0.75, 1.0)),
        ))
    return Scene(background=str(rng.choice(BACKGROUNDS)), things=tuple(things),
                 cell=int(rng.integers(6, 13)), tone=float(rng.uniform(-1, 1)))


def _hsv(hue_deg: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb((hue_deg % 360) / 360, s, v), dtype=np.float32) * 255


def _background(scene: Scene, h: int, w: int, scale: float) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    tone = 12 * scene.tone
    if scene.background == "checkered floor":
        cell = max(2.0, scene.cell * scale)
        board = ((yy // cell + xx // cell) % 2)[..., None]
        return np.where(board > 0, 205 + tone, 125 + tone) * np.ones(3, np.float32)
    if scene.background == "gray wall":
        return np.full((h, w, 3), 150 + 2 * tone, np.float32)
    if scene.background == "sky":
        t = (yy / max(1, h - 1))[..., None]
        top, bottom = np.array([140, 180, 235], np.float32), np.array([205, 222, 245], np.float32)
        return top * (1 - t) + bottom * t + tone
    if scene.background == "sand":
        return np.broadcast_to(np.array([222, 204, 168], np.float32) + tone, (h, w, 3)).copy()
    raise ValueError(f"unknown background {scene.background!r}")


def _shape_mask(thing: Thing, yy, xx, short: float) -> np.ndarray:
    cx, cy, r = thing.cx * short, thing.cy * short, thing.radius * short
    dx, dy = xx - cx, yy - cy
    a = np.deg2rad(thing.angle)
    u, v = dx * np.cos(a) + dy * np.sin(a), -dx * np.sin(a) + dy * np.cos(a)
    if thing.shape == "ball":
        return dx ** 2 + dy ** 2 <= r ** 2
    if thing.shape == "box":
        half = 0.85 * r
        return (np.abs(u) <= half) & (np.abs(v) <= half)
    if thing.shape == "triangle":
        inside = np.ones_like(u, dtype=bool)
        for k in range(3):  # three half-planes of an equilateral triangle of circumradius 1.15 r
            t = a + np.pi / 2 + k * 2 * np.pi / 3
            inside &= (dx * np.cos(t) + dy * np.sin(t)) <= 0.575 * r
        return inside
    raise ValueError(f"unknown shape {thing.shape!r}")


def _texture(thing: Thing, yy, xx, short: float) -> np.ndarray:
    """True where the texture darkens the object."""
    period = max(2.0, thing.radius * short / 2.2)
    a = np.deg2rad(thing.angle)
    u = xx * np.cos(a) + yy * np.sin(a)
    if thing.texture == "striped":
        return (u // (period / 2)) % 2 == 1
    if thing.texture == "dotted":
        v = -xx * np.sin(a) + yy * np.cos(a)
        du, dv = (u % period) - period / 2, (v % period) - period / 2
        return du ** 2 + dv ** 2 <= (period * 0.28) ** 2
    return np.zeros_like(xx, dtype=bool)


def render(scene: Scene, height: int = 64, width: int = 64, *, supersample: int = 2
           ) -> tuple[np.ndarray, np.ndarray]:
    """``(image, masks)``: uint8 (H, W, 3) and bool (n_things, H, W) visible-object masks.

    Drawn at ``supersample`` times the size and box-filtered down, so edges are anti-aliased.
    """
    s = supersample
    h, w = height * s, width * s
    short = float(min(h, w))
    image = _background(scene, h, w, short / 64)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32) + 0.5
    owner = np.full((h, w), -1, np.int64)
    for i, thing in enumerate(scene.things):
        mask = _shape_mask(thing, yy, xx, short)
        hue = COLOURS[thing.colour] + thing.hue_jitter
        base, dark = _hsv(hue, 0.85, thing.value), _hsv(hue, 0.9, thing.value * 0.55)
        shade = 1 - 0.18 * np.clip((yy - thing.cy * short) / (thing.radius * short), -1, 1)
        colour = np.where(_texture(thing, yy, xx, short)[..., None], dark, base)
        colour = colour * shade[..., None] if thing.shape == "ball" else colour
        image = np.where(mask[..., None], colour, image)
        owner[mask] = i
    image = image.reshape(height, s, width, s, 3).mean(axis=(1, 3))
    masks = np.zeros((len(scene.things), height, width), bool)
    for i in range(len(scene.things)):
        masks[i] = (owner == i).reshape(height, s, width, s).mean(axis=(1, 3)) >= 0.5
    return np.clip(np.round(image), 0, 255).astype(np.uint8), masks


# --- reading images ---------------------------------------------------------------------------


def _hsv_image(image: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    x = image.astype(np.float32) / 255
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    mx, mn = x.max(-1), x.min(-1)
    delta = mx - mn
    sat = np.where(mx > 0, delta / np.maximum(mx, 1e-6), 0)
    safe = np.maximum(delta, 1e-6)
    hue = np.where(mx == r, ((g - b) / safe) % 6, np.where(mx == g, (b - r) / safe + 2,
                                                          (r - g) / safe + 4)) * 60
    return hue, sat, mx


def object_mask(image: np.ndarray) -> np.ndarray:
    """Pixels saturated and bright enough to be an object (backgrounds are all unsaturated)."""
    _, sat, val = _hsv_image(image)
    return (sat >= SATURATION_MIN) & (val >= VALUE_MIN)


def object_colour(image: np.ndarray, mask: np.ndarray | None = None, min_pixels: int = 12
                  ) -> str | None:
    """The colour name whose hue is nearest the circular mean hue of the object's pixels."""
    hue, _, _ = _hsv_image(image)
    mask = object_mask(image) if mask is None else mask
    if mask.sum() < min_pixels:
        return None
    angles = np.deg2rad(hue[mask])
    mean = np.rad2deg(np.arctan2(np.sin(angles).mean(), np.cos(angles).mean())) % 360
    return min(COLOURS, key=lambda c: min(abs(mean - COLOURS[c]), 360 - abs(mean - COLOURS[c])))


def background_kind(image: np.ndarray, mask: np.ndarray | None = None) -> str:
    """Which of :data:`BACKGROUNDS` the pixels outside ``mask`` (default: the object mask) show."""
    mask = object_mask(image) if mask is None else mask
    pixels = image[~mask].astype(np.float32)
    if len(pixels) < 16:
        pixels = image.reshape(-1, 3).astype(np.float32)
    luminance = pixels.mean(-1)
    r, b = pixels[:, 0].mean(), pixels[:, 2].mean()
    if luminance.std() > 22:
        return "checkered floor"
    if b - r > 35:
        return "sky"
    if r - b > 28:
        return "sand"
    return "gray wall"


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0
