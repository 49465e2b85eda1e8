"""Rule-based checks of world v2's frames (:mod:`tokenflow.embedded.world2`): every background is
unsaturated and every object saturated, so a frame's objects, their colour and texture kind, and
its background are read by rules (:func:`read_frame`), with no learned model. Also how accurate
the rules are on the world's own frames (:func:`measure_checks`)."""

from __future__ import annotations

import cv2
import numpy as np

from tokenflow.embedded.world2 import COLOURS, MIN_PERIOD, random_clip

__all__ = ["object_mask", "object_masks", "texture_kind", "background_kind", "read_frame",
           "measure_checks", "mask_iou", "object_colour", "CHECK_SIZES"]

SATURATION_MIN = 0.55  # objects are drawn at >= 0.8, backgrounds at <= 0.42
VALUE_MIN = 0.1


def _hsv_image(image: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hue (degrees), saturation and value of a uint8 RGB image, each in an array of its shape."""
    x = image.astype(np.float32) / 255
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    mx, mn = x.max(-1), x.min(-1)
    delta = mx - mn
    sat = np.where(mx > 0, delta / np.maximum(mx, 1e-6), 0)
    safe = np.maximum(delta, 1e-6)
    hue = np.where(mx == r, ((g - b) / safe) % 6, np.where(mx == g, (b - r) / safe + 2,
                                                          (r - g) / safe + 4)) * 60
    return hue, sat, mx


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two boolean masks (1 when both are empty)."""
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def object_mask(image: np.ndarray) -> np.ndarray:
    """Pixels saturated and bright enough to be an object (backgrounds are all unsaturated)."""
    _, sat, val = _hsv_image(image)
    return (sat >= SATURATION_MIN) & (val >= VALUE_MIN)


def object_colour(image: np.ndarray, mask: np.ndarray | None = None, min_pixels: int = 12
                  ) -> str | None:
    """The colour name nearest the circular mean hue of the object's pixels: ``mask``, by default
    :func:`object_mask`; ``None`` under ``min_pixels`` pixels."""
    mask = object_mask(image) if mask is None else mask
    if mask.sum() < min_pixels:
        return None
    hue, _, _ = _hsv_image(image)
    angles = np.deg2rad(hue[mask])
    mean = np.rad2deg(np.arctan2(np.sin(angles).mean(), np.cos(angles).mean())) % 360
    return min(COLOURS, key=lambda c: min(abs(mean - COLOURS[c]), 360 - abs(mean - COLOURS[c])))


def object_masks(image: np.ndarray, min_pixels: int = 30) -> list[np.ndarray]:
    """One mask per object: the connected components of :func:`object_mask` (holes such as a
    highlight filled), largest first; specks under ``min_pixels`` are dropped."""
    raw = object_mask(image).astype(np.uint8)
    # components of the mask opened (JPEG-like specks gone), grown back over the raw mask
    opened = cv2.morphologyEx(raw, cv2.MORPH_OPEN, np.ones((2, 2), np.uint8))
    n, labels, stats, _ = cv2.connectedComponentsWithStats(opened, connectivity=8)
    order = sorted(range(1, n), key=lambda k: -stats[k, cv2.CC_STAT_AREA])
    out = []
    for k in order:
        if stats[k, cv2.CC_STAT_AREA] < min_pixels:
            continue
        component = cv2.dilate((labels == k).astype(np.uint8), np.ones((3, 3), np.uint8)) & raw
        contours, _ = cv2.findContours(component, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        filled = np.zeros_like(component)
        cv2.drawContours(filled, contours, -1, 1, thickness=-1)
        out.append(filled.astype(bool))
    return out


def _texture_features(image: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    """Statistics of the object's log luminance with its smooth shading removed: contrast, the
    fraction of dark pixels, and how the gradients turn: one way (stripes), two perpendicular ways
    (checks), across the radius (rings)."""
    solid = (object_mask(image) & mask).astype(np.uint8)  # without the highlight
    inner = cv2.erode(solid, np.ones((3, 3), np.uint8), iterations=2) > 0
    if inner.sum() < 20:
        return dict.fromkeys(("spread", "dark", "coherence", "fourfold", "radial"), 0.0)
    lum = np.log(image.astype(np.float32).mean(-1) + 8)
    # about half a period: a quarter radius, and at least half the shortest period
    sigma = max(1.2, 0.25 * np.sqrt(mask.sum() / np.pi), 0.5 * MIN_PERIOD * min(image.shape[:2]))
    m = solid.astype(np.float32)
    smooth = cv2.GaussianBlur(lum * m, (0, 0), sigma) / np.maximum(cv2.GaussianBlur(m, (0, 0), sigma), 1e-3)
    detail = (lum - smooth) * m
    values = detail[inner]
    low, high = np.percentile(values, (5, 95))
    gx = cv2.Sobel(detail, cv2.CV_32F, 1, 0, ksize=3)[inner]
    gy = cv2.Sobel(detail, cv2.CV_32F, 0, 1, ksize=3)[inner]
    weight = gx ** 2 + gy ** 2
    total = max(float(weight.sum()), 1e-12)
    theta = np.arctan2(gy, gx)
    ys, xs = np.nonzero(inner)
    cy, cx = np.nonzero(mask)
    phi = np.arctan2(ys - cy.mean(), xs - cx.mean())
    return {"spread": float(np.percentile(values, 85) - np.percentile(values, 15)),
            "dark": float((values < (low + high) / 2).mean()),
            "coherence": float(abs((weight * np.exp(2j * theta)).sum())) / total,
            "fourfold": float(abs((weight * np.exp(4j * theta)).sum())) / total,
            "radial": float((weight * np.cos(2 * (theta - phi))).sum()) / total}


def texture_kind(image: np.ndarray, mask: np.ndarray) -> str:
    """Which of :data:`~tokenflow.embedded.world2.TEXTURES` the object under ``mask`` (one of :func:`object_masks`) shows."""
    f = _texture_features(image, mask)
    if f["spread"] < 0.22:
        return "plain"
    if f["radial"] > 0.8:
        return "ringed"
    if f["coherence"] > 0.6:
        return "striped"
    # checks: half the pixels dark, edges two perpendicular ways; dots: a quarter dark, round
    return "checkered" if f["fourfold"] + 2 * (f["dark"] - 0.33) > 0.2 else "dotted"


def _background_features(image: np.ndarray, objects: np.ndarray) -> dict[str, float]:
    keep = cv2.dilate(objects.astype(np.uint8), np.ones((3, 3), np.uint8), iterations=2) == 0
    if keep.sum() < 32:
        keep = np.ones(objects.shape, bool)
    hue, sat, val = _hsv_image(image)
    angles = np.deg2rad(hue[keep])
    w = sat[keep]
    mean_hue = np.rad2deg(np.arctan2((w * np.sin(angles)).sum(), (w * np.cos(angles)).sum())) % 360
    lum = image.astype(np.float32).mean(-1)
    detail = lum - cv2.GaussianBlur(lum, (0, 0), 3.0)
    return {"hue": float(mean_hue), "sat": float(np.median(sat[keep])),
            "value": float(np.median(val[keep])),
            "detail": float(detail[keep].std() / max(lum[keep].mean(), 1.0))}


def background_kind(image: np.ndarray, objects: np.ndarray | None = None) -> str:
    """Which of :data:`~tokenflow.embedded.world2.BACKGROUNDS` the pixels away from ``objects`` (default: the object mask)
    show: by their tint and by the strength of their fine detail."""
    f = _background_features(image, object_mask(image) if objects is None else objects)
    if f["sat"] < 0.18:
        return "tiles" if f["detail"] > 0.04 else "wall"
    if 60 <= f["hue"] <= 160:
        return "grass"
    return "sand" if f["value"] > 0.68 else "wood"


def read_frame(image: np.ndarray) -> dict:
    """Everything the checks read from a frame: the background and, per object (largest first),
    its mask, colour and texture."""
    masks = object_masks(image)
    everything = np.any(masks, axis=0) if masks else np.zeros(image.shape[:2], bool)
    return {"background": background_kind(image, everything),
            "objects": [{"mask": m, "colour": object_colour(image, m), "texture": texture_kind(image, m)}
                        for m in masks]}


#: Frame sizes the checks are measured on: square, 4:3, 16:9, 2:1 and their portraits.
CHECK_SIZES: tuple[tuple[int, int], ...] = ((64, 64), (72, 96), (96, 72), (64, 112), (112, 64),
                                            (96, 160), (64, 128), (128, 64))


def measure_checks(rng: np.random.Generator, n: int = 200, blur: float = 0.0,
                   jpeg: int | None = None) -> dict[str, float]:
    """Accuracy of the checks on ``n`` random clip frames (sizes cycling through
    :data:`CHECK_SIZES`), optionally blurred (Gaussian, ``blur`` pixels) and JPEG-compressed at
    quality ``jpeg``: the fraction of frames whose object count and background are right, and of
    objects whose colour and texture are right (an object is read from the found mask that
    overlaps its true mask most)."""
    right = {"count": 0, "background": 0, "colour": 0, "texture": 0}
    n_objects = 0
    for k in range(n):
        height, width = CHECK_SIZES[k % len(CHECK_SIZES)]
        clip = random_clip(rng, 4, height=height, width=width)
        t = int(rng.integers(len(clip)))
        image, masks = clip.render(t, height, width)
        if blur:
            image = np.clip(np.round(cv2.GaussianBlur(image.astype(np.float32), (0, 0), blur)), 0, 255
                            ).astype(np.uint8)
        if jpeg is not None:
            _, data = cv2.imencode(".jpg", image[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, jpeg])
            image = cv2.imdecode(data, cv2.IMREAD_COLOR)[..., ::-1]
        read = read_frame(image)
        things = clip.frame(t)[0].things
        right["count"] += len(read["objects"]) == len(things)
        right["background"] += read["background"] == clip.scene.background
        for thing, mask in zip(things, masks):
            n_objects += 1
            found = max(read["objects"], key=lambda o: mask_iou(o["mask"], mask), default=None)
            if found is not None and mask_iou(found["mask"], mask) >= 0.5:
                right["colour"] += found["colour"] == thing.colour
                right["texture"] += found["texture"] == thing.texture
    return {"count": right["count"] / n, "background": right["background"] / n,
            "colour": right["colour"] / max(n_objects, 1), "texture": right["texture"] / max(n_objects, 1)}
