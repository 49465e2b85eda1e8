"""Temporal-consistency and structure metrics of an edited video against its source.

Everything here is numpy + OpenCV (no torch) and works on ``(N, H, W, 3)`` uint8 RGB frames.

The central idea (as in the video-editing literature: warping error of Lai et al. 2018,
"Learning Blind Video Temporal Consistency") is to estimate optical flow once on the *source*
video and apply it to the *edited* frames: an edit that follows the source's motion warps onto
itself with a small error; flicker or texture sticking makes the error grow. The same error on
the source itself is the floor that the flow estimator leaves (interpolation, flow errors).

Flows, warping and valid pixels are :mod:`tokenflow.eval.flow`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np

from tokenflow.eval.flow import (  # noqa: F401  (re-exported: the metrics' flow helpers)
    FLOW_METHODS,
    Flows,
    Pair,
    _check_video,
    _flow_gray,
    _gray,
    _pairs,
    aligned_true_flows,
    estimate_flow,
    load_true_flow,
    save_true_flow,
    true_flows,
    valid_mask,
    video_flows,
    warp,
)
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
    "warp_residual",
]

#: Canny thresholds for :func:`edge_agreement` (the same as the ``canny`` control extractor).
CANNY_LOW, CANNY_HIGH = 100, 200


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
    for i, pair in enumerate(wanted):
        mask = flows.valid[pair]
        if mask.any():
            out[i] = float(warp_residual(edited, flows, pair)[mask].mean())
    return out


def warp_residual(edited: np.ndarray, flows: Flows, pair: Sequence[int]) -> np.ndarray:
    """The map behind :func:`warp_error` for one pair ``(t, s)``: float32 ``(H, W)``, per pixel
    of frame ``t`` the squared colour error (mean over RGB in [0, 1]) between ``edited[t]`` and
    ``edited[s]`` warped back along the source's flow; NaN where the pixel is not valid
    (occluded, or on a motion boundary). Where it is bright, the edit changed more than the
    source's motion explains: flicker."""
    (t, s), = _pairs([pair], len(edited))
    _need(flows, [(t, s)])
    warped = warp(_unit(edited[s]), flows.forward[(t, s)])
    err = ((_unit(edited[t]) - warped) ** 2).mean(-1).astype(np.float32)
    err[~flows.valid[(t, s)]] = np.nan
    return err


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


def nanmean(values: Sequence[float] | np.ndarray) -> float:
    """The mean of the values that are not NaN; NaN if there are none."""
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


#: Warp errors and the source's own, measured the same way (the estimator's floor).
SOURCE_FLOORS = {"warp_error": "warp_error_source", "warp_error_long": "warp_error_long_source"}
#: Why an edit's warp error below the source's own is no proof of consistency.
LOST_DETAIL = ("an edit that loses the source's detail (texture, fine edges) leaves less to warp "
               "wrongly, so a warp error below the source's is not by itself a more consistent "
               "edit; check edge F1 and look at the frames")


def below_source(aggregate: dict) -> dict[str, float]:
    """The warp errors of ``aggregate`` that are below the source's own, with the source's."""
    out = {}
    for name, floor in SOURCE_FLOORS.items():
        value, base = aggregate.get(name), aggregate.get(floor)
        if value is not None and base is not None and np.isfinite(value) and np.isfinite(base) \
                and value < base:
            out[name] = float(base)
    return out


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

    agg = {name: nanmean(values) for name, values in per.items()}
    agg["flicker_ratio"] = _ratio(agg["flicker"], agg["flicker_source"])
    if short and agg["flicker_source"] == 0 and agg["flicker"] > 0:
        notes.append("the source is static (no flicker): flicker_ratio is undefined (NaN)")
    for name, floor in below_source(agg).items():
        notes.append(f"{name} ({agg[name] * 1e3:.3g}e-3) is below the source's own "
                     f"({floor * 1e3:.3g}e-3): {LOST_DETAIL}")
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
