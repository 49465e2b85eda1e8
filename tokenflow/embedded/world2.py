"""The embedded model's world (v2, issue 13; the first model's flat-shaded world v1 is in the
history of this repository): textured, shaded objects on textured backgrounds, filmed by a moving
camera, in frames of any aspect ratio from 1:2 to 2:1.

Coordinates are in units of the frame's short side, with the origin at the centre of the first
frame; a :class:`Camera` looks at ``(x, y)`` with a ``zoom``. Objects carry a texture (stripes,
dots, checks or rings) with an orientation, a period and a phase, attached to the object so that
it moves and turns with it, and are shaded with a light direction and a specular highlight.
Backgrounds are drawn from seeded value noise in world coordinates, so a camera pan shifts them
exactly. A :class:`Clip` is a scene plus per-frame parameters; frame ``t`` is rendered from them
alone. The geometry is exact and public: :meth:`Camera.to_world` and :meth:`Camera.to_pixels`,
:meth:`Thing.local` and :meth:`Thing.world`, :meth:`Scene.owner` (which object is seen at a point),
so a clip's true optical flow can be computed (``examples/motion_clips.py``).

Every background is unsaturated and every object saturated, so the checks of
:mod:`tokenflow.embedded.world2_checks` read a frame by rules, with no learned model.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np


__all__ = ["COLOURS", "SHAPES", "TEXTURES", "BACKGROUNDS", "WORDS", "Thing", "Scene", "Camera",
           "Clip", "random_scene", "random_clip", "render"]

#: Object colours and their hue in degrees.
COLOURS: dict[str, float] = {"red": 0.0, "orange": 28.0, "yellow": 54.0, "green": 125.0,
                             "blue": 222.0, "purple": 282.0}
SHAPES: tuple[str, ...] = ("ball", "box", "triangle")
#: Textures as caption words; "plain" adds no word.
TEXTURES: tuple[str, ...] = ("plain", "striped", "dotted", "checkered", "ringed")
#: Backgrounds as caption words ("wall" is the plain one).
BACKGROUNDS: tuple[str, ...] = ("sand", "grass", "wood", "tiles", "wall")
#: Every word a caption can use (each one token of the embedded tokenizer).
WORDS: tuple[str, ...] = ("a", "and", "on", *COLOURS, *SHAPES, *TEXTURES[1:], *BACKGROUNDS)

#: Period of a texture in units of the object's radius, and the shortest period in world units
#: (fractions of the frame's short side): at least 9 pixels at the model's 64, 13 at 96, more
#: than one cell of an 8x latent grid.
PERIOD = (0.55, 0.7)
MIN_PERIOD = 0.14
#: Radius of the circle that holds each shape, in units of its radius.
_BOUND = {"ball": 1.0, "box": 0.85 * 2 ** 0.5, "triangle": 1.35}


@dataclass(frozen=True)
class Thing:
    """One object. ``x, y, radius`` in world units; angles in degrees; the texture's period is in
    units of the radius and its phase in periods."""

    shape: str
    colour: str
    texture: str = "plain"
    x: float = 0.0
    y: float = 0.0
    radius: float = 0.25
    angle: float = 0.0
    texture_angle: float = 0.0
    period: float = 0.55
    phase: float = 0.0
    hue_jitter: float = 0.0
    value: float = 0.9

    def words(self) -> str:
        return thing_words(self.colour, self.texture, self.shape)

    def local(self, x, y):
        """Object coordinates ``(u, v)`` of world points: units of the radius, turned with the
        object (a positive ``angle`` turns it clockwise on screen, y pointing down)."""
        a = np.deg2rad(self.angle)
        dx, dy = (x - self.x) / self.radius, (y - self.y) / self.radius
        return dx * np.cos(a) + dy * np.sin(a), -dx * np.sin(a) + dy * np.cos(a)

    def world(self, u, v):
        """World coordinates of object coordinates ``(u, v)``: the inverse of :meth:`local`."""
        a = np.deg2rad(self.angle)
        return (self.x + self.radius * (u * np.cos(a) - v * np.sin(a)),
                self.y + self.radius * (u * np.sin(a) + v * np.cos(a)))

    def contains(self, x, y) -> np.ndarray:
        """True at the world points inside the object's shape."""
        return _shape_mask(self, *self.local(x, y))


def thing_words(colour: str, texture: str, shape: str) -> str:
    """An object's words in a caption: ``a red [striped] ball`` ("plain" adds no word)."""
    return f"a {colour} {'' if texture == 'plain' else texture + ' '}{shape}"


@dataclass(frozen=True)
class Scene:
    background: str
    things: tuple[Thing, ...]
    seed: int = 0  # the background's noise
    tone: tuple[float, float] = (0.0, 0.0)  # hue shift (degrees) and value shift of the background
    scale: float = 1.0  # size of the background's pattern
    light: tuple[float, float] = (225.0, 50.0)  # azimuth and elevation of the light, degrees

    def caption(self) -> str:
        article = "a " if self.background == "wall" else ""
        return " and ".join(t.words() for t in self.things) + f" on {article}{self.background}"

    def owner(self, x, y) -> np.ndarray:
        """int64: at each world point, the index of the object seen there (the last one drawn of
        those whose shape holds it: later objects are drawn over earlier ones), -1 for the
        background."""
        owner = np.full(np.shape(x), -1, np.int64)
        for i, thing in enumerate(self.things):
            owner[thing.contains(x, y)] = i
        return owner

    def with_thing(self, index: int, **changes) -> Scene:
        things = list(self.things)
        things[index] = replace(things[index], **changes)
        return replace(self, things=tuple(things))


@dataclass(frozen=True)
class Camera:
    x: float = 0.0
    y: float = 0.0
    zoom: float = 1.0

    def extent(self, height: int, width: int) -> tuple[float, float]:
        """Half the width and half the height of the view, in world units."""
        short = min(height, width)
        return width / short / 2 / self.zoom, height / short / 2 / self.zoom

    def to_world(self, col, row, height: int, width: int):
        """World coordinates seen at pixel coordinates ``(col, row)`` of a ``height x width``
        frame, where pixel ``i`` spans ``[i, i + 1)`` (its centre is at ``i + 0.5``)."""
        short = min(height, width)
        return (self.x + (col - width / 2) / short / self.zoom,
                self.y + (row - height / 2) / short / self.zoom)

    def to_pixels(self, x, y, height: int, width: int):
        """Pixel coordinates ``(col, row)`` of world points: the inverse of :meth:`to_world`."""
        short = min(height, width)
        return (x - self.x) * self.zoom * short + width / 2, (y - self.y) * self.zoom * short + height / 2


@dataclass(frozen=True)
class Clip:
    """A scene (objects at their first pose) and, per frame, a camera and each object's offset
    ``(dx, dy, dangle)`` from that pose."""

    scene: Scene
    cameras: tuple[Camera, ...]
    offsets: tuple[tuple[tuple[float, float, float], ...], ...] = field(default=())

    def __len__(self) -> int:
        return len(self.cameras)

    def frame(self, t: int) -> tuple[Scene, Camera]:
        things = self.scene.things
        if self.offsets:
            things = tuple(replace(th, x=th.x + dx, y=th.y + dy, angle=th.angle + da)
                           for th, (dx, dy, da) in zip(things, self.offsets[t]))
        return replace(self.scene, things=things), self.cameras[t]

    def render(self, t: int, height: int, width: int, **kwargs) -> tuple[np.ndarray, np.ndarray]:
        scene, camera = self.frame(t)
        return render(scene, height, width, camera=camera, **kwargs)


# --- random scenes and clips ------------------------------------------------------------------


def _random_thing(rng: np.random.Generator, radius: float, x: float, y: float) -> Thing:
    return Thing(
        shape=str(rng.choice(SHAPES)), colour=str(rng.choice(list(COLOURS))),
        texture=str(rng.choice(TEXTURES, p=(0.2, 0.2, 0.2, 0.2, 0.2))),
        x=x, y=y, radius=radius, angle=float(rng.uniform(0, 360)),
        texture_angle=float(rng.uniform(0, 180)), period=max(float(rng.uniform(*PERIOD)), MIN_PERIOD / radius),
        phase=float(rng.uniform(0, 1)), hue_jitter=float(rng.uniform(-7, 7)),
        value=float(rng.uniform(0.8, 1.0)))


def _fits(things, cameras, offsets, height: int, width: int, margin: float = 0.03,
          gap: float = 0.06) -> bool:
    """Every object inside every frame, and objects apart from each other, in every frame."""
    for t, camera in enumerate(cameras):
        half_w, half_h = camera.extent(height, width)
        centres = []
        for th, (dx, dy, _) in zip(things, offsets[t]):
            x, y, bound = th.x + dx - camera.x, th.y + dy - camera.y, th.radius * _BOUND[th.shape]
            if abs(x) + bound + margin > half_w or abs(y) + bound + margin > half_h:
                return False
            centres.append((x, y, bound))
        for i, (xi, yi, bi) in enumerate(centres):
            for xj, yj, bj in centres[:i]:
                if np.hypot(xi - xj, yi - yj) < bi + bj + gap:
                    return False
    return True


def random_clip(rng: np.random.Generator, n_frames: int = 8, *, height: int = 64,
                width: int = 64, n_things: int | None = None, camera_motion: bool | None = None,
                object_motion: bool | None = None) -> Clip:
    """A random clip framed for ``height x width`` frames: one to three objects (``n_things``),
    each inside every frame and apart from the others, with camera pan and zoom and/or object
    motion (random when None)."""
    if not 0.5 <= width / height <= 2:
        raise ValueError(f"aspect ratio {width}x{height} is outside 1:2 .. 2:1")
    n = int(rng.choice((1, 2, 3), p=(0.5, 0.3, 0.2))) if n_things is None else n_things
    camera_motion = bool(rng.random() < 0.6) if camera_motion is None else camera_motion
    object_motion = bool(rng.random() < 0.6) if object_motion is None else object_motion
    scene = Scene(background=str(rng.choice(BACKGROUNDS)), things=(),
                  seed=int(rng.integers(2 ** 31)),
                  tone=(float(rng.uniform(-6, 6)), float(rng.uniform(-0.05, 0.05))),
                  scale=float(rng.uniform(0.8, 1.25)),
                  light=(float(rng.uniform(0, 360)), float(rng.uniform(35, 65))))
    half_w, half_h = Camera().extent(height, width)
    low, high = {1: (0.17, 0.28), 2: (0.14, 0.22), 3: (0.13, 0.16)}[n]
    for attempt in range(300):
        shrink = 1 - 0.5 * attempt / 300  # later attempts: smaller objects, slower motion
        slow = max(0.0, 1 - attempt / 200)
        things = []
        for _ in range(n):
            radius = float(rng.uniform(low * (0.85 + 0.15 * shrink), low + (high - low) * shrink))
            thing = _random_thing(rng, radius, 0, 0)
            room_x = max(0.0, half_w - thing.radius * _BOUND[thing.shape] - 0.04)
            room_y = max(0.0, half_h - thing.radius * _BOUND[thing.shape] - 0.04)
            things.append(replace(thing, x=float(rng.uniform(-room_x, room_x)),
                                  y=float(rng.uniform(-room_y, room_y))))
        pan = rng.uniform(-0.025, 0.025, 2) * slow if camera_motion else np.zeros(2)
        zoom = float(rng.uniform(-0.012, 0.012)) * slow if camera_motion else 0.0
        cameras = tuple(Camera(float(pan[0] * t), float(pan[1] * t), float((1 + zoom) ** t))
                        for t in range(n_frames))
        velocities = [(*rng.uniform(-0.025, 0.025, 2) * slow, rng.uniform(-6, 6) * slow)
                      if object_motion else (0.0, 0.0, 0.0) for _ in range(n)]
        offsets = tuple(tuple((float(vx * t), float(vy * t), float(va * t))
                              for vx, vy, va in velocities) for t in range(n_frames))
        if _fits(things, cameras, offsets, height, width):
            return Clip(replace(scene, things=tuple(things)), cameras, offsets)
    raise RuntimeError("could not place the objects; use fewer objects or a larger frame")


def random_scene(rng: np.random.Generator, *, height: int = 64, width: int = 64,
                 n_things: int | None = None) -> Scene:
    """A random still scene framed for ``height x width`` by the default camera."""
    clip = random_clip(rng, 1, height=height, width=width, n_things=n_things,
                       camera_motion=False, object_motion=False)
    return clip.scene


# --- rendering ---------------------------------------------------------------------------------


def _hsv(hue_deg: float, s: float, v: float) -> np.ndarray:
    h = (hue_deg % 360) / 60
    c = v * s
    x = c * (1 - abs(h % 2 - 1))
    rgb = [(c, x, 0), (x, c, 0), (0, c, x), (0, x, c), (x, 0, c), (c, 0, x)][int(h) % 6]
    return (np.array(rgb, np.float32) + (v - c)) * 255


def _noise(grid: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Smooth value noise in 0..1 from a periodic 64 x 64 lattice ``grid``, at lattice
    coordinates."""
    flat = grid.ravel()
    x0, y0 = np.floor(x), np.floor(y)
    fx, fy = x - x0, y - y0
    fx, fy = fx * fx * (3 - 2 * fx), fy * fy * (3 - 2 * fy)
    i0, j0 = x0.astype(np.int32) & 63, (y0.astype(np.int32) & 63) * 64
    i1, j1 = (i0 + 1) & 63, (j0 + 64) & 4095
    top = flat[j0 + i0] * (1 - fx) + flat[j0 + i1] * fx
    bottom = flat[j1 + i0] * (1 - fx) + flat[j1 + i1] * fx
    return top * (1 - fy) + bottom * fy


def _downsample(image: np.ndarray, s: int) -> np.ndarray:
    """Box filter by ``s`` in both directions."""
    out = image[0::s, 0::s].astype(np.float32)
    for dy in range(s):
        for dx in range(s):
            if dy or dx:
                out += image[dy::s, dx::s]
    return out / (s * s)


def _background(scene: Scene, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """RGB float (H, W, 3) of the background at world coordinates ``x, y``."""
    grids = np.random.default_rng(scene.seed).random((4, 64, 64)).astype(np.float32)
    x, y = x / scene.scale, y / scene.scale
    dh, dv = scene.tone
    kind = scene.background
    if kind == "sand":  # fine grain and soft wind ripples
        base = _hsv(38 + dh, 0.3, 0.8 + dv)
        ripple = np.sin(2 * np.pi * (5 * y + 0.25 * x + 1.2 * _noise(grids[1], 2 * x, 2 * y)))
        shade = 1 + 0.12 * (_noise(grids[0], 24 * x, 24 * y) - 0.5) + 0.05 * ripple
    elif kind == "grass":  # upright blades: fine across, long along
        base = _hsv(92 + dh, 0.38, 0.52 + dv)
        blades = _noise(grids[0], 20 * x + 2 * _noise(grids[2], 4 * x, 4 * y), 2 * y)
        shade = 1 + 0.4 * (blades - 0.5) + 0.2 * (_noise(grids[1], 3 * x, 3 * y) - 0.5)
    elif kind == "wood":  # planks with a wavy grain and dark seams
        base = _hsv(26 + dh, 0.42, 0.55 + dv)
        plank = np.floor(y / 0.22)
        grain = np.sin(2 * np.pi * (14 * y + 2.0 * _noise(grids[1], 1.5 * x, 3 * y + 7 * plank)))
        seam = np.abs(y / 0.22 - np.round(y / 0.22)) < 0.05
        plank_tone = grids[0][plank.astype(np.int32) & 63, 0] - 0.5
        shade = (1 + 0.12 * grain + 0.12 * plank_tone) * np.where(seam, 0.65, 1.0)
    elif kind == "tiles":  # square tiles, each a little different, with dark grout
        base = _hsv(40 + 8 * dh, 0.06, 0.8 + dv)
        size = 0.2
        u, v = x / size, y / size
        grout = (np.abs(u - np.round(u)) < 0.06) | (np.abs(v - np.round(v)) < 0.06)
        tile = grids[0][np.floor(v).astype(np.int32) & 63, np.floor(u).astype(np.int32) & 63]
        shade = np.where(grout, 0.62, 1 + 0.1 * (tile - 0.5))
    elif kind == "wall":  # plain, with a faint low-frequency stain
        base = _hsv(40 + 8 * dh, 0.05, 0.72 + dv)
        shade = 1 + 0.08 * (_noise(grids[0], 2 * x, 2 * y) - 0.5)
    else:
        raise ValueError(f"unknown background {kind!r}")
    return shade[..., None] * base


def _shape_mask(thing: Thing, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    if thing.shape == "ball":
        return u ** 2 + v ** 2 <= 1
    if thing.shape == "box":
        return (np.abs(u) <= 0.85) & (np.abs(v) <= 0.85)
    if thing.shape == "triangle":  # equilateral, circumradius 1.35 (about a ball's area)
        inside = np.ones_like(u, dtype=bool)
        for k in range(3):
            t = np.pi / 2 + k * 2 * np.pi / 3
            inside &= u * np.cos(t) + v * np.sin(t) <= 0.675
        return inside
    raise ValueError(f"unknown shape {thing.shape!r}")


def _texture(thing: Thing, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """True where the texture darkens the object."""
    a = np.deg2rad(thing.texture_angle)
    p, q = (u * np.cos(a) + v * np.sin(a)) / thing.period, (-u * np.sin(a) + v * np.cos(a)) / thing.period
    p = p + thing.phase
    if thing.texture == "striped":
        return (p % 1) < 0.5
    if thing.texture == "dotted":
        return ((p % 1) - 0.5) ** 2 + (((q + thing.phase) % 1) - 0.5) ** 2 <= 0.3 ** 2
    if thing.texture == "checkered":
        return ((p % 1 < 0.5) ^ ((q + thing.phase) % 1 < 0.5))
    if thing.texture == "ringed":
        return (np.hypot(u, v) / thing.period + thing.phase) % 1 < 0.5
    if thing.texture == "plain":
        return np.zeros_like(u, dtype=bool)
    raise ValueError(f"unknown texture {thing.texture!r}")


def _shading(thing: Thing, u: np.ndarray, v: np.ndarray, light: tuple[float, float]
             ) -> tuple[np.ndarray, np.ndarray]:
    """Diffuse factor and specular weight: a sphere for balls, a shallow dome for flat shapes."""
    az, el = np.deg2rad(light[0]), np.deg2rad(light[1])
    lx, ly, lz = np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)
    a = np.deg2rad(thing.angle)  # (u, v) turn with the object; the light does not
    nx, ny = u * np.cos(a) - v * np.sin(a), u * np.sin(a) + v * np.cos(a)
    if thing.shape == "ball":
        nz = np.sqrt(np.clip(1 - nx ** 2 - ny ** 2, 0, 1))
        shininess, strength = 40, 0.75
    else:
        nx, ny = 0.3 * nx, 0.3 * ny
        nz = np.sqrt(np.clip(1 - nx ** 2 - ny ** 2, 0, 1))
        shininess, strength = 12, 0.2
    diffuse = 0.5 + 0.5 * np.clip(nx * lx + ny * ly + nz * lz, 0, 1)
    hx, hy, hz = lx, ly, lz + 1
    norm = np.sqrt(hx ** 2 + hy ** 2 + hz ** 2)
    spec = strength * np.clip((nx * hx + ny * hy + nz * hz) / norm, 0, 1) ** shininess
    return diffuse, spec


def render(scene: Scene, height: int = 64, width: int = 64, *, camera: Camera = Camera(),
           supersample: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """``(image, masks)``: uint8 (H, W, 3) and bool (n_things, H, W) visible-object masks.

    Drawn at ``supersample`` times the size and box-filtered down, so edges are anti-aliased.
    """
    s = supersample
    h, w = height * s, width * s
    py, px = np.mgrid[0:h, 0:w].astype(np.float32) + 0.5
    x, y = camera.to_world(px, py, h, w)
    image = _background(scene, x, y)
    owner = np.full((h, w), -1, np.int64)
    for i, thing in enumerate(scene.things):
        # only the pixels of the circle that holds the shape (the order is Scene.owner's)
        reach = thing.radius * _BOUND[thing.shape] * camera.zoom * min(h, w) + 2
        col, row = camera.to_pixels(thing.x, thing.y, h, w)
        box = (slice(max(0, int(row - reach)), max(0, int(row + reach) + 1)),
               slice(max(0, int(col - reach)), max(0, int(col + reach) + 1)))
        mask = np.zeros((h, w), bool)
        mask[box] = thing.contains(x[box], y[box])
        if not mask.any():
            continue
        u, v = thing.local(x[mask], y[mask])
        hue = COLOURS[thing.colour] + thing.hue_jitter
        base, dark = _hsv(hue, 0.85, thing.value), _hsv(hue, 0.9, thing.value * 0.5)
        colour = np.where(_texture(thing, u, v)[:, None], dark, base)
        diffuse, spec = _shading(thing, u, v, scene.light)
        colour = colour * diffuse[:, None] * (1 - spec[:, None]) + 255 * spec[:, None]
        image[mask] = colour
        owner[mask] = i
    image = _downsample(image, s)
    masks = np.stack([_downsample(owner == i, s) >= 0.5 for i in range(len(scene.things))]) \
        if scene.things else np.zeros((0, height, width), bool)
    return np.clip(np.round(image), 0, 255).astype(np.uint8), masks
