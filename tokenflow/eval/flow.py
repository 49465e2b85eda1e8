"""Optical flow for the metrics: estimating it (OpenCV DIS or Farneback), warping with it, which
pixels to trust (forward-backward consistency, motion boundaries), and known flows of synthetic
clips (``.flow.npz``). numpy + OpenCV, no torch; frames are ``(N, H, W, 3)`` uint8 RGB.

Conventions
-----------
* A flow ``f`` from frame ``a`` to frame ``b`` is ``float32 (H, W, 2)``: pixel ``(x, y)`` of ``a``
  is at ``(x + f[y, x, 0], y + f[y, x, 1])`` in ``b``.
* :func:`warp` is a backward warp, so ``warp(frame_b, flow_ab)`` approximates ``frame_a``.
* A pair ``(t, s)`` in a :class:`Flows` means: ``forward[(t, s)]`` is the flow ``t -> s``,
  ``backward[(t, s)]`` the flow ``s -> t``, and ``valid[(t, s)]`` marks the pixels of frame ``t``
  whose flow is trusted (:func:`valid_mask`).
* Colours are measured in [0, 1] units (uint8 / 255).

Valid pixels
------------
:func:`valid_mask` follows the usual convention of Sundaram, Brox and Keutzer (ECCV 2010, "Dense
point trajectories by GPU-accelerated large displacement optical flow"), also used by Ruder,
Dosovitskiy and Brox (GCPR 2016, "Artistic style transfer for videos"), with their constants:

* occluded where ``|f_ab + f_ba(x + f_ab)|^2 >= 0.01 (|f_ab|^2 + |f_ba(x + f_ab)|^2) + 0.5``;
* motion boundary where ``|grad u|^2 + |grad v|^2 > 0.01 |f_ab|^2 + 0.002`` (``u, v`` the two
  components of ``f_ab``; gradients by central differences, one-sided at the image border);
* and the target ``x + f_ab`` must lie inside the frame (``0 <= x' <= W-1``, ``0 <= y' <= H-1``).

The motion-boundary test is not scale-invariant: near the centre of a rotation or zoom, where
the flow is small but its gradient is not, it can flag pixels of a perfectly smooth motion.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

FLOW_METHODS = ("dis", "farneback")

#: Forward-backward consistency constants (Sundaram et al. 2010): alpha1, alpha2.
CONSISTENCY_ALPHA1 = 0.01
CONSISTENCY_ALPHA2 = 0.5
#: Motion-boundary constants (Sundaram et al. 2010): |grad f|^2 > BOUNDARY_ALPHA1 |f|^2 + BOUNDARY_ALPHA2.
BOUNDARY_ALPHA1 = 0.01
BOUNDARY_ALPHA2 = 0.002
#: Farneback parameters: pyr_scale, levels, winsize, iterations, poly_n, poly_sigma. Larger windows than
#: OpenCV's tutorial (0.5, 3, 15, 3, 5, 1.2), which lost 9 px motions of fine texture at 96x96;
#: poly_sigma 1.5 is OpenCV's advice for poly_n 7.
FARNEBACK_PARAMS = (0.5, 4, 21, 5, 7, 1.5)

Pair = tuple[int, int]



def _gray(frame: np.ndarray, what: str = "frame") -> np.ndarray:
    if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8 or not (
        frame.ndim == 2 or (frame.ndim == 3 and frame.shape[2] == 3)
    ):
        raise ValueError(f"{what} must be a uint8 (H, W, 3) RGB or (H, W) gray image, "
                         f"got shape {getattr(frame, 'shape', None)} dtype {getattr(frame, 'dtype', None)}")
    gray = frame if frame.ndim == 2 else cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2GRAY)
    return np.ascontiguousarray(gray)


def _flow_gray(a: np.ndarray, b: np.ndarray, method: str) -> np.ndarray:
    if method == "dis":
        dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
        flow = dis.calc(a, b, None)
    elif method == "farneback":
        pyr_scale, levels, winsize, iterations, poly_n, poly_sigma = FARNEBACK_PARAMS
        flow = cv2.calcOpticalFlowFarneback(a, b, None, pyr_scale, levels, winsize, iterations,
                                            poly_n, poly_sigma, 0)
    else:
        raise ValueError(f"unknown flow method {method!r}; choose one of {', '.join(FLOW_METHODS)}")
    return np.ascontiguousarray(flow, dtype=np.float32)


def estimate_flow(a: np.ndarray, b: np.ndarray, method: str = "dis") -> np.ndarray:
    """Optical flow from frame ``a`` to frame ``b``: ``float32 (H, W, 2)`` of ``(dx, dy)``.

    ``a`` and ``b`` are uint8 ``(H, W, 3)`` RGB (or ``(H, W)`` gray) frames of the same size.
    ``"dis"`` is OpenCV's DIS optical flow (Kroeger et al. 2016) with preset MEDIUM, ``"farneback"``
    OpenCV's Farneback with :data:`FARNEBACK_PARAMS`; both run on the grayscale frames.
    """
    if method not in FLOW_METHODS:
        raise ValueError(f"unknown flow method {method!r}; choose one of {', '.join(FLOW_METHODS)}")
    ga, gb = _gray(a, "a"), _gray(b, "b")
    if ga.shape != gb.shape:
        raise ValueError(f"frames differ in size: {ga.shape[::-1]} vs {gb.shape[::-1]}")
    return _flow_gray(ga, gb, method)


def _check_flow(flow: np.ndarray, what: str = "flow") -> None:
    if not isinstance(flow, np.ndarray) or flow.ndim != 3 or flow.shape[2] != 2:
        raise ValueError(f"{what} must be an (H, W, 2) array, got shape {getattr(flow, 'shape', None)}")


def _grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    xs = np.arange(w, dtype=np.float32)[None, :].repeat(h, 0)
    ys = np.arange(h, dtype=np.float32)[:, None].repeat(w, 1)
    return xs, ys


def warp(image: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """Backward warp: ``out[y, x] = image[y + flow[y, x, 1], x + flow[y, x, 0]]``.

    Bilinear (``cv2.remap``, float32 so the sample positions are not quantised), border
    replicated. ``image`` is ``(H, W, C)`` or ``(H, W)`` of any numeric dtype; the result is
    float32 of the same shape, in the image's own units (uint8 stays 0..255).
    ``warp(frame_b, flow_ab)`` approximates ``frame_a``.
    """
    _check_flow(flow)
    image = np.asarray(image)
    if image.ndim not in (2, 3) or image.shape[:2] != flow.shape[:2]:
        raise ValueError(f"image {image.shape} and flow {flow.shape} differ in size")
    h, w = flow.shape[:2]
    xs, ys = _grid(h, w)
    map_x = xs + flow[..., 0].astype(np.float32)
    map_y = ys + flow[..., 1].astype(np.float32)
    src = np.ascontiguousarray(image, dtype=np.float32)
    if src.ndim == 2:
        return cv2.remap(src, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    out = np.empty(src.shape, np.float32)
    for c0 in range(0, src.shape[2], 4):  # cv2.remap takes at most 4 channels
        part = cv2.remap(np.ascontiguousarray(src[..., c0:c0 + 4]), map_x, map_y, cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_REPLICATE)
        out[..., c0:c0 + 4] = part.reshape(h, w, -1)
    return out


def _motion_boundary(flow: np.ndarray) -> np.ndarray:
    du_dy, du_dx = np.gradient(flow[..., 0])
    dv_dy, dv_dx = np.gradient(flow[..., 1])
    grad2 = du_dx ** 2 + du_dy ** 2 + dv_dx ** 2 + dv_dy ** 2
    return grad2 > BOUNDARY_ALPHA1 * (flow ** 2).sum(-1) + BOUNDARY_ALPHA2


def valid_mask(flow_ab: np.ndarray, flow_ba: np.ndarray, *, alpha1: float = CONSISTENCY_ALPHA1,
               alpha2: float = CONSISTENCY_ALPHA2, boundary: bool = True) -> np.ndarray:
    """bool ``(H, W)``: the pixels of frame ``a`` whose flow to ``b`` is trusted.

    True where the forward-backward test passes
    (``|f_ab + f_ba(x + f_ab)|^2 < alpha1 (|f_ab|^2 + |f_ba(x + f_ab)|^2) + alpha2``), where the
    target ``x + f_ab`` is inside the frame and, if ``boundary``, not on a motion boundary
    (``|grad f_ab|^2 > 0.01 |f_ab|^2 + 0.002``). Constants and sources: see the module docstring.
    """
    _check_flow(flow_ab, "flow_ab")
    _check_flow(flow_ba, "flow_ba")
    if flow_ab.shape != flow_ba.shape:
        raise ValueError(f"flows differ in size: {flow_ab.shape} vs {flow_ba.shape}")
    h, w = flow_ab.shape[:2]
    fab = flow_ab.astype(np.float32, copy=False)
    back = warp(flow_ba, fab)  # f_ba sampled where each pixel of a lands in b
    lhs = ((fab + back) ** 2).sum(-1)
    rhs = alpha1 * ((fab ** 2).sum(-1) + (back ** 2).sum(-1)) + alpha2
    valid = lhs < rhs
    xs, ys = _grid(h, w)
    tx, ty = xs + fab[..., 0], ys + fab[..., 1]
    valid &= (tx >= 0) & (tx <= w - 1) & (ty >= 0) & (ty <= h - 1)
    if boundary and h > 1 and w > 1:
        valid &= ~_motion_boundary(fab)
    return valid


@dataclass
class Flows:
    """Flows of one video for a set of frame pairs, computed once and reused.

    For a pair ``(t, s)``: ``forward[(t, s)]`` is the flow ``t -> s``, ``backward[(t, s)]`` the
    flow ``s -> t`` and ``valid[(t, s)]`` the bool mask of trusted pixels of frame ``t``.
    """

    forward: dict[Pair, np.ndarray]
    backward: dict[Pair, np.ndarray]
    valid: dict[Pair, np.ndarray]
    source: str  # "dis", "farneback" or "true"


def _pairs(pairs: Iterable[Sequence[int]], n: int | None = None) -> list[Pair]:
    out = []
    for pair in pairs:
        t, s = (int(pair[0]), int(pair[1]))
        if n is not None and not (0 <= t < n and 0 <= s < n):
            raise ValueError(f"pair {(t, s)} is outside the video's {n} frames")
        out.append((t, s))
    return out


def _check_video(frames: np.ndarray, what: str = "frames") -> None:
    if not isinstance(frames, np.ndarray) or frames.ndim != 4 or frames.shape[3] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"{what} must be an (N, H, W, 3) uint8 array, got shape "
                         f"{getattr(frames, 'shape', None)} dtype {getattr(frames, 'dtype', None)}")


def video_flows(frames: np.ndarray, pairs: Iterable[Sequence[int]], method: str = "dis") -> Flows:
    """Estimate forward and backward flow for each pair ``(t, s)`` of ``frames`` and their masks.

    Each directed flow is computed once even if a pair and its reverse are both asked for.
    """
    _check_video(frames)
    if method not in FLOW_METHODS:
        raise ValueError(f"unknown flow method {method!r}; choose one of {', '.join(FLOW_METHODS)}")
    wanted = _pairs(pairs, len(frames))
    grays: dict[int, np.ndarray] = {}
    memo: dict[Pair, np.ndarray] = {}

    def directed(i: int, j: int) -> np.ndarray:
        if (i, j) not in memo:
            for k in (i, j):
                if k not in grays:
                    grays[k] = _gray(frames[k])
            memo[(i, j)] = _flow_gray(grays[i], grays[j], method)
        return memo[(i, j)]

    forward, backward, valid = {}, {}, {}
    for t, s in wanted:
        forward[(t, s)] = directed(t, s)
        backward[(t, s)] = directed(s, t)
        valid[(t, s)] = valid_mask(forward[(t, s)], backward[(t, s)])
    return Flows(forward, backward, valid, method)


def true_flows(flow: dict[Pair, np.ndarray], back: dict[Pair, np.ndarray] | None = None) -> Flows:
    """:class:`Flows` (``source="true"``) for the pairs of ``flow``, from known flows; validity
    from :func:`valid_mask` (the forward-backward test finds the occlusions).

    Both dicts hold directed flows keyed ``(from, to)``: ``flow[(t, s)]`` is the flow ``t -> s``
    and the reverse flow of that pair is ``back[(s, t)]``, or ``flow[(s, t)]`` when ``back`` is
    None (so a dict holding both directions, as :func:`load_true_flow` returns, is enough; its
    pairs then appear in both orders).
    """
    source = flow if back is None else back
    forward, backward, valid = {}, {}, {}
    for key, f in flow.items():
        t, s = int(key[0]), int(key[1])
        if (s, t) not in source:
            where = "flow" if back is None else "back"
            raise ValueError(f"{where} has no reverse flow ({s}, {t}) for the pair ({t}, {s})")
        b = source[(s, t)]
        _check_flow(f)
        forward[(t, s)] = np.asarray(f, np.float32)
        backward[(t, s)] = np.asarray(b, np.float32)
        valid[(t, s)] = valid_mask(forward[(t, s)], backward[(t, s)])
    return Flows(forward, backward, valid, "true")


def save_true_flow(path: str | os.PathLike[str], flows: dict[Pair, np.ndarray], *, params: str = "") -> Path:
    """Write directed flows ``{(t, s): flow t -> s}`` as an ``.npz`` (atomically, compressed):
    ``pairs`` int32 (P, 2), ``flows`` float32 (P, H, W, 2) and ``params`` (free text, e.g. JSON
    of how the clip was made). Plain arrays only, so :func:`load_true_flow` needs no pickle."""
    target = Path(path)
    pairs = _pairs(flows)
    if pairs:
        stack = np.stack([np.asarray(flows[p], np.float32) for p in pairs])
    else:
        stack = np.zeros((0, 0, 0, 2), np.float32)
    if stack.ndim != 4 or stack.shape[3] != 2:
        raise ValueError(f"flows must be (H, W, 2) arrays of one size, got {stack.shape[1:]}")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.tmp.npz")
    try:
        np.savez_compressed(tmp, pairs=np.array(pairs, np.int32).reshape(-1, 2), flows=stack,
                            params=np.array(str(params)))
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def load_true_flow(path: str | os.PathLike[str]) -> dict[Pair, np.ndarray]:
    """``{(t, s): flow t -> s}`` (float32 (H, W, 2)) from an ``.npz`` written by
    :func:`save_true_flow` (e.g. by ``examples/motion_clips.py``); never unpickles."""
    with np.load(path, allow_pickle=False) as data:
        if "pairs" not in data.files or "flows" not in data.files:
            raise ValueError(f"{path}: not a true-flow file (needs arrays 'pairs' and 'flows')")
        pairs, flows = data["pairs"], data["flows"]
    if pairs.ndim != 2 or pairs.shape[1] != 2 or flows.ndim != 4 or flows.shape[3] != 2 \
            or len(pairs) != len(flows):
        raise ValueError(f"{path}: bad shapes: pairs {pairs.shape}, flows {flows.shape}")
    return {(int(t), int(s)): flows[i].astype(np.float32, copy=False) for i, (t, s) in enumerate(pairs)}




def aligned_true_flows(path, source_hw, edit_hw, stride, start, n, long_range) -> Flows:
    """The known flows (a ``.flow.npz`` of :func:`save_true_flow`) between the SOURCE frames
    that EDITED's frames ``0..n-1`` are (``start + i * stride``), rescaled to the edit's size,
    for every pair ``(t, t+1)`` and ``(t, t+long_range)``; ``ValueError`` (one line) if the file
    cannot be read or lacks a pair."""
    try:
        known = load_true_flow(path)
    except (OSError, ValueError, KeyError) as exc:
        raise ValueError(f"--true-flow {path}: {exc}") from None
    sy, sx = edit_hw[0] / source_hw[0], edit_hw[1] / source_hw[1]

    def pick(a: int, b: int):
        flow = known.get((start + a * stride, start + b * stride))
        if flow is None:
            return None
        if flow.shape[:2] != tuple(edit_hw):
            flow = cv2.resize(flow, (edit_hw[1], edit_hw[0]), interpolation=cv2.INTER_LINEAR)
        return (flow * np.array([sx, sy], np.float32)).astype(np.float32)

    forward, backward = {}, {}
    for k in sorted({1, long_range}):
        for t in range(n - k):
            f, b = pick(t, t + k), pick(t + k, t)
            if f is None or b is None:
                raise ValueError(
                    f"--true-flow {path} has no flow between source frames "
                    f"{start + t * stride} and {start + (t + k) * stride}")
            forward[(t, t + k)], backward[(t + k, t)] = f, b
    return true_flows(forward, backward)
