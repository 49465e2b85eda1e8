"""Temporal-consistency and structure metrics of an edited video against its source.

Everything here is numpy + OpenCV (no torch) and works on ``(N, H, W, 3)`` uint8 RGB frames.

The central idea (as in the video-editing literature: warping error of Lai et al. 2018,
"Learning Blind Video Temporal Consistency") is to estimate optical flow once on the *source*
video and apply it to the *edited* frames: an edit that follows the source's motion warps onto
itself with a small error; flicker or texture sticking makes the error grow. The same error on
the source itself is the floor that the flow estimator leaves (interpolation, flow errors).

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

import math
import os
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from tokenflow.video import VideoError, resize_frames

__all__ = [
    "FLOW_METHODS",
    "Flows",
    "Report",
    "align",
    "edge_agreement",
    "estimate_flow",
    "evaluate",
    "flicker",
    "flow_epe",
    "load_true_flow",
    "save_true_flow",
    "true_flows",
    "valid_mask",
    "video_flows",
    "warp",
    "warp_error",
]

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
#: Canny thresholds for :func:`edge_agreement` (the same as the ``canny`` control extractor).
CANNY_LOW, CANNY_HIGH = 100, 200

Pair = tuple[int, int]


# --------------------------------------------------------------------------- flow


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


# --------------------------------------------------------------------------- metrics


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


def _unit(frame: np.ndarray) -> np.ndarray:
    """uint8 -> float32 in [0, 1]; floats are taken to be in [0, 1] already."""
    if frame.dtype == np.uint8:
        return frame.astype(np.float32) / 255.0
    return frame.astype(np.float32, copy=False)


def _need(flows: Flows, pairs: list[Pair], what: str = "flows") -> None:
    missing = [p for p in pairs if p not in flows.forward or p not in flows.valid]
    if missing:
        shown = ", ".join(map(str, missing[:4])) + (" ..." if len(missing) > 4 else "")
        raise ValueError(f"{what} ({flows.source}) have no flow for pairs {shown}")


def warp_error(edited: np.ndarray, flows: Flows, pairs: Iterable[Sequence[int]]) -> np.ndarray:
    """Per pair ``(t, s)``: the mean squared colour error (RGB in [0, 1], averaged over the valid
    pixels of frame ``t`` and the 3 channels) between ``edited[t]`` and
    ``warp(edited[s], flows.forward[(t, s)])``; NaN where no pixel is valid.

    ``flows`` come from the *source* video: the edit is judged by how well it follows the source's
    motion. ``edited`` is uint8 (or float in [0, 1]) ``(N, H, W, 3)``.
    """
    wanted = _pairs(pairs, len(edited))
    _need(flows, wanted)
    out = np.full(len(wanted), np.nan)
    for i, (t, s) in enumerate(wanted):
        mask = flows.valid[(t, s)]
        if not mask.any():
            continue
        warped = warp(_unit(edited[s]), flows.forward[(t, s)])
        err = ((_unit(edited[t]) - warped) ** 2).mean(-1)
        out[i] = float(err[mask].mean())
    return out


def flow_epe(flows_a: Flows, flows_b: Flows, pairs: Iterable[Sequence[int]]) -> np.ndarray:
    """Per pair: mean endpoint error ``|f_a - f_b|`` (pixels) of the forward flows over the pixels
    valid in ``flows_a``; NaN where none is. Only ``flows_b.forward`` is used."""
    wanted = _pairs(pairs)
    _need(flows_a, wanted, "flows_a")
    missing = [p for p in wanted if p not in flows_b.forward]
    if missing:
        raise ValueError(f"flows_b ({flows_b.source}) have no flow for pairs {missing[:4]}")
    out = np.full(len(wanted), np.nan)
    for i, p in enumerate(wanted):
        mask = flows_a.valid[p]
        if not mask.any():
            continue
        diff = flows_a.forward[p].astype(np.float32) - flows_b.forward[p].astype(np.float32)
        out[i] = float(np.sqrt((diff ** 2).sum(-1))[mask].mean())
    return out


def _edges(frame: np.ndarray) -> np.ndarray:
    return cv2.Canny(_gray(frame), CANNY_LOW, CANNY_HIGH) > 0


def edge_agreement(a: np.ndarray, b: np.ndarray, tolerance: int = 1) -> np.ndarray:
    """Per frame: F1 score between the Canny edge maps of ``a[i]`` and ``b[i]``.

    Canny with thresholds (100, 200) on the grayscale frame. An edge pixel of one map counts as
    matched if the other map has an edge pixel within ``tolerance`` pixels (Chebyshev distance,
    i.e. in a ``(2 tolerance + 1)`` square); precision is the matched fraction of ``b``'s edges,
    recall of ``a``'s. Two edgeless frames agree (1.0); one edgeless frame against edges gives 0.
    """
    _check_video(a, "a")
    _check_video(b, "b")
    if a.shape != b.shape:
        raise ValueError(f"videos differ in shape: {a.shape} vs {b.shape}")
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance}")
    kernel = np.ones((2 * tolerance + 1, 2 * tolerance + 1), np.uint8)
    out = np.empty(len(a))
    for i in range(len(a)):
        ea, eb = _edges(a[i]), _edges(b[i])
        na, nb = int(ea.sum()), int(eb.sum())
        if na == 0 and nb == 0:
            out[i] = 1.0
            continue
        if na == 0 or nb == 0:
            out[i] = 0.0
            continue
        near_a = cv2.dilate(ea.astype(np.uint8), kernel) > 0
        near_b = cv2.dilate(eb.astype(np.uint8), kernel) > 0
        precision = (eb & near_a).sum() / nb
        recall = (ea & near_b).sum() / na
        out[i] = 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)
    return out


def flicker(frames: np.ndarray) -> np.ndarray:
    """Per consecutive pair ``(t, t+1)``: mean ``|frame[t+1] - frame[t]|`` in [0, 1] units (over
    pixels and channels). Motion counts too: compare with the source's flicker."""
    if frames.ndim != 4:
        raise ValueError(f"frames must be (N, H, W, C), got shape {frames.shape}")
    scale = 255.0 if frames.dtype == np.uint8 else 1.0
    out = np.empty(max(0, len(frames) - 1))
    for t in range(len(out)):
        diff = np.abs(frames[t + 1].astype(np.float32) - frames[t].astype(np.float32))
        out[t] = float(diff.mean()) / scale
    return out


# --------------------------------------------------------------------------- evaluate


def _nanmean(values: Sequence[float] | np.ndarray) -> float:
    array = np.asarray(values, dtype=np.float64)
    finite = array[~np.isnan(array)]
    return float(finite.mean()) if finite.size else math.nan


def _ratio(num: float, den: float) -> float:
    if math.isnan(num) or math.isnan(den):
        return math.nan
    if den == 0:
        return 1.0 if num == 0 else math.nan
    return num / den


@dataclass
class Report:
    """What :func:`evaluate` measured.

    ``per_frame[name]`` lists one value per frame (``structure_edges``) or per pair, in order of
    the pair's first frame: ``(t, t+1)`` for ``warp_error``, ``warp_error_source``,
    ``valid_fraction``, ``structure_flow_epe``, ``flicker``, ``flicker_source``, ``flicker_ratio``
    (N-1 values) and ``(t, t+k)`` for ``warp_error_long``, ``warp_error_long_source``,
    ``valid_fraction_long`` (N-k values). ``aggregate[name]`` is the NaN-ignoring mean, except
    ``flicker_ratio``, the ratio of the mean flickers. ``alignment`` says how source and edit were
    matched (set by the caller, e.g. from :func:`align`).
    """

    per_frame: dict[str, list[float]]
    aggregate: dict[str, float]
    notes: list[str] = field(default_factory=list)
    alignment: str = "none (inputs used as given)"

    def to_dict(self) -> dict:
        """JSON-safe dict: NaN becomes None."""
        def clean(v: float) -> float | None:
            return None if v is None or not math.isfinite(v) else float(v)
        return {"per_frame": {k: [clean(v) for v in vs] for k, vs in self.per_frame.items()},
                "aggregate": {k: clean(v) for k, v in self.aggregate.items()},
                "notes": list(self.notes), "alignment": self.alignment}


METRICS = ("warp_error", "warp_error_source", "warp_error_long", "warp_error_long_source",
           "valid_fraction", "valid_fraction_long", "structure_flow_epe", "structure_edges",
           "flicker", "flicker_source", "flicker_ratio")


def evaluate(source: np.ndarray, edited: np.ndarray, *, flow_method: str = "dis", long_range: int = 4,
             source_flows: Flows | None = None) -> Report:
    """Temporal consistency and structure preservation of ``edited`` against ``source``.

    Both are uint8 ``(N, H, W, 3)`` of the same shape (see :func:`align`). Flow is estimated on the
    source with ``flow_method`` for the pairs ``(t, t+1)`` and ``(t, t+long_range)`` (the long
    flow directly between the two frames, not chained), unless ``source_flows`` (e.g. known flow
    from :func:`true_flows`) provides them. See :class:`Report` for the metrics. Videos too short
    for a pair kind get NaN for it and a note.
    """
    _check_video(source, "source")
    _check_video(edited, "edited")
    if source.shape != edited.shape:
        raise ValueError(f"source {source.shape} and edited {edited.shape} differ in shape; align them first")
    if isinstance(long_range, bool) or not isinstance(long_range, int) or long_range < 1:
        raise ValueError(f"long_range must be a positive integer, got {long_range!r}")
    if flow_method not in FLOW_METHODS:
        raise ValueError(f"unknown flow method {flow_method!r}; choose one of {', '.join(FLOW_METHODS)}")
    n = len(source)
    if n == 0:
        raise ValueError("no frames to evaluate")
    notes: list[str] = []
    short = [(t, t + 1) for t in range(n - 1)]
    long = [(t, t + long_range) for t in range(n - long_range)]
    if source_flows is None:
        source_flows = video_flows(source, short + long, flow_method)
    else:
        _need(source_flows, short + long, "source_flows")
    notes.append(f"flow: {source_flows.source} on the source, pairs (t, t+1) and (t, t+{long_range}); "
                 "valid pixels pass the forward-backward and motion-boundary tests (Sundaram et al. 2010)")
    if n < 2:
        notes.append(f"{n} frame: no frame pairs, so the temporal metrics are NaN")
    elif n <= long_range:
        notes.append(f"{n} frames <= long_range {long_range}: the long-range metrics are NaN")

    per: dict[str, list[float]] = {}
    per["warp_error"] = warp_error(edited, source_flows, short).tolist()
    per["warp_error_source"] = warp_error(source, source_flows, short).tolist()
    per["warp_error_long"] = warp_error(edited, source_flows, long).tolist()
    per["warp_error_long_source"] = warp_error(source, source_flows, long).tolist()
    per["valid_fraction"] = [float(source_flows.valid[p].mean()) for p in short]
    per["valid_fraction_long"] = [float(source_flows.valid[p].mean()) for p in long]
    if short:
        edit_method = flow_method if source_flows.source == "true" else source_flows.source
        grays = [_gray(f) for f in edited]
        edit_forward = {(t, s): _flow_gray(grays[t], grays[s], edit_method) for t, s in short}
        per["structure_flow_epe"] = flow_epe(source_flows, Flows(edit_forward, {}, {}, edit_method), short).tolist()
        if source_flows.source == "true":
            notes.append(f"structure_flow_epe compares the true source flow with {edit_method} on the "
                         "edit, so it includes the estimator's own error")
    else:
        per["structure_flow_epe"] = []
    per["structure_edges"] = edge_agreement(source, edited).tolist()
    fe, fs = flicker(edited), flicker(source)
    per["flicker"], per["flicker_source"] = fe.tolist(), fs.tolist()
    per["flicker_ratio"] = [_ratio(a, b) for a, b in zip(per["flicker"], per["flicker_source"])]

    agg = {name: _nanmean(values) for name, values in per.items()}
    agg["flicker_ratio"] = _ratio(agg["flicker"], agg["flicker_source"])
    if short and agg["flicker_source"] == 0 and agg["flicker"] > 0:
        notes.append("the source is static (no flicker): flicker_ratio is undefined (NaN)")
    empty = [p for p in short + long if not source_flows.valid[p].any()]
    if empty:
        notes.append(f"{len(empty)} pair(s) have no valid pixel (their warp errors are NaN), e.g. {empty[0]}")
    return Report(per_frame={k: per[k] for k in METRICS}, aggregate={k: agg[k] for k in METRICS}, notes=notes)


# --------------------------------------------------------------------------- align


def align(source: np.ndarray, edited: np.ndarray, *, stride: int = 1, start: int = 0
          ) -> tuple[np.ndarray, np.ndarray, str]:
    """Match ``source`` to ``edited`` the way ``tf eval`` does; returns ``(source, edited, description)``.

    Frames: ``source[start::stride][:len(edited)]`` (an edit made with ``--stride`` / a frame
    limit); a :class:`~tokenflow.video.VideoError` if that leaves fewer frames than the edit has.
    Size: the source is resized to the edit's size with :func:`tokenflow.video.resize_frames`.
    ``edited`` is returned unchanged; the description is one line.
    """
    _check_video(source, "source")
    _check_video(edited, "edited")
    for name, value, low in (("stride", stride, 1), ("start", start, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise VideoError(f"{name} must be an integer >= {low}, got {value!r}")
    n, total = len(edited), len(source)
    picked = source[start::stride]
    if len(picked) < n:
        raise VideoError(f"source too short: {total} frames with start {start} and stride {stride} "
                         f"give {len(picked)}, but the edit has {n}")
    picked = np.ascontiguousarray(picked[:n])
    parts = []
    if (start, stride) != (0, 1) or total != n:
        last = start + (n - 1) * stride
        parts.append(f"source frames {start}..{last} step {stride} ({n} of {total})")
    h, w = edited.shape[1:3]
    h0, w0 = picked.shape[1:3]
    if (h0, w0) != (h, w):
        picked = resize_frames(picked, h, w)
        parts.append(f"source resized {w0}x{h0} -> {w}x{h}")
    return picked, edited, "; ".join(parts) if parts else "none (same frames and size)"
