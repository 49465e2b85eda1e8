"""Evaluating edits and comparing editors: what ``tf eval`` and ``tf compare`` do.

``evaluate_edit`` aligns an edit with its source (:func:`tokenflow.eval.metrics.align`), computes the
consistency and structure metrics (:func:`tokenflow.eval.metrics.evaluate`, the source's optical flow
estimated once or given) and the fidelity scores of the installed scorers. ``run_methods`` runs
several editors or settings on one clip through one shared stage cache; ``write_comparison``
writes the table (Markdown and JSON), a labelled side-by-side video, a contact sheet, a flicker
sheet and a plot.
"""

from __future__ import annotations

import json
import os
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tokenflow.eval.metrics import LOST_DETAIL, below_source

#: Aggregate metrics shown in tables, in order, with a short header and whether lower is better.
TABLE_METRICS: list[tuple[str, str, bool]] = [
    ("warp_error", "warp err (x1e3)", True),
    ("warp_error_long", "warp err t+k (x1e3)", True),
    ("flicker_ratio", "flicker ratio", True),
    ("structure_flow_epe", "flow EPE (px)", True),
    ("structure_edges", "edge F1", False),
]
#: Per-frame series drawn by the plots.
PLOT_METRICS = ["warp_error", "warp_error_long", "flicker", "structure_edges"]
#: Consecutive frames in ``flicker_sheet.png``, from the middle of the clip.
FLICKER_COLUMNS = 6
#: The per-pixel RMS colour error (RGB in [0, 1]) drawn white in ``flicker_sheet.png``'s
#: residual rows; 0 is black. Pixels the source's flow cannot follow are drawn in
#: :data:`FLICKER_INVALID`.
FLICKER_WHITE = 0.25
FLICKER_INVALID = (40, 40, 110)


@dataclass
class Edit:
    """An edited video to evaluate, with what its ``run.json`` says about it (if anything)."""

    frames: np.ndarray
    prompt: str | None = None
    stride: int = 1
    source: str | None = None
    run: dict[str, Any] | None = None


def load_edit(path: str | os.PathLike) -> Edit:
    """A video, a frame folder, or a ``tf run`` output directory (its lossless ``frames/``, and
    the prompt, stride and source video from its ``run.json``)."""
    from tokenflow.video import read_video

    path = Path(path)
    run_json = path / "run.json" if path.is_dir() else None
    if run_json is not None and run_json.is_file():
        try:
            run = json.loads(run_json.read_text())
        except (OSError, ValueError) as exc:
            raise ValueError(f"{run_json} could not be read ({exc})") from None
        frames_dir = path / "frames"
        video = read_video(frames_dir if frames_dir.is_dir() else path / "edited.mp4")
        params = run.get("stages", {}).get("editor", {}).get("params", {})
        return Edit(video.frames, prompt=params.get("prompt"), stride=int(run.get("stride", 1)),
                    source=run.get("video"), run=run)
    return Edit(read_video(path).frames)


def evaluate_edit(source: np.ndarray, edited: np.ndarray, *, prompt: str | None = None,
                  scorers: list | None = None, flow_method: str = "dis", long_range: int = 4,
                  source_flows=None) -> dict[str, Any]:
    """Metrics of an aligned (source, edited) pair, as a JSON-able dict: ``aggregate``,
    ``per_frame``, ``notes`` (what was skipped and why)."""
    from tokenflow.eval.metrics import evaluate, nanmean

    report = evaluate(source, edited, flow_method=flow_method, long_range=long_range,
                      source_flows=source_flows)
    doc = report.to_dict()  # JSON-safe: NaN (nothing to measure) is None
    doc.pop("alignment", None)
    if scorers:
        from tokenflow.eval.scoring import score_all

        if prompt:
            scores, notes = score_all(scorers, edited, prompt, source)
            for name, values in scores.items():
                doc["per_frame"][f"score_{name}"] = [float(v) for v in values]
                mean = nanmean(values)
                doc["aggregate"][f"score_{name}"] = mean if np.isfinite(mean) else None
            doc["notes"] += notes
        else:
            doc["notes"].append("no prompt: fidelity scorers skipped (pass --prompt)")
    return doc


# --------------------------------------------------------------------------------------------- compare


@dataclass
class Method:
    """One column of a comparison: an editor and its own ``-o`` settings."""

    label: str
    editor: str
    options: list[tuple[str, str]] = field(default_factory=list)


def parse_method(spec: str) -> Method:
    """``"NAME [PARAM=VALUE ...]"``: an editor and settings for it alone, e.g.
    ``"sdedit strength=1.0"``; a PARAM with a dot (``blender.weights=linear``) names its stage."""
    parts = shlex.split(spec)
    if not parts:
        raise ValueError("an empty --editor")
    options = []
    for part in parts[1:]:
        key, sep, value = part.partition("=")
        if not sep or not key:
            raise ValueError(f"--editor {spec!r}: expected NAME PARAM=VALUE ..., got {part!r}")
        options.append((key if "." in key else f"editor.{key}", value))
    return Method(label=" ".join(parts), editor=parts[0], options=options)


@dataclass
class MethodResult:
    method: Method
    frames: np.ndarray
    keys: dict[str, str]
    stats: dict[str, Any]
    seconds: float
    cached: bool
    metrics: dict[str, Any] = field(default_factory=dict)


def run_methods(source, methods: list[Method], *, options: list[tuple[str, str]],
                **edit_args) -> list[MethodResult]:
    """Edit ``source`` (a :class:`tokenflow.api.Source`) with each method through one shared
    cache (upstream stages are computed once): :func:`tokenflow.api.edit` with the method's
    editor and its options after ``options``; ``edit_args`` are the other arguments of
    ``edit`` (``prompt``, ``steps``, ``cache_dir``, ...)."""
    from tokenflow.api import edit

    results = []
    for method in methods:
        start = time.perf_counter()
        done = edit(source, editor=method.editor, options=[*options, *method.options],
                    **edit_args)
        seconds = time.perf_counter() - start
        blender = done.results["blender"]
        results.append(MethodResult(method, done.frames, done.keys, dict(blender.stats),
                                    seconds, bool(blender.cached)))
    return results


def _fmt(value: Any, scale: float = 1.0) -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "n/a"
    return f"{value * scale:.3g}" if isinstance(value, float) else str(value)


#: Marks a warp error below the source's own in the table (explained under it).
BELOW_MARK = " *"
BELOW_LEGEND = f"*: below the source's own warp error; {LOST_DETAIL}."


def table_rows(source_metrics: dict, results: list[MethodResult]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the comparison table (the source itself first, as the floor); a warp
    error below the source's own is marked :data:`BELOW_MARK`."""
    score_names = sorted({k for r in results for k in r.metrics.get("aggregate", {})
                          if k.startswith("score_")})
    header = ["method", *[h for _, h, _ in TABLE_METRICS], *score_names,
              "UNet evals/step", "seconds"]
    rows = []
    agg = source_metrics.get("aggregate", {})
    rows.append(["source (itself)", *[_fmt(agg.get(m), 1e3 if "warp" in m else 1.0)
                                      for m, _, _ in TABLE_METRICS],
                 *["" for _ in score_names], "", ""])
    for r in results:
        agg = r.metrics.get("aggregate", {})
        low = below_source(agg)
        evals = r.stats.get("unet_frame_evals", 0) / max(1, r.stats.get("steps", 1))
        rows.append([r.method.label, *[_fmt(agg.get(m), 1e3 if "warp" in m else 1.0)
                                       + (BELOW_MARK if m in low else "")
                                       for m, _, _ in TABLE_METRICS],
                     *[_fmt(agg.get(s)) for s in score_names], f"{evals:g}",
                     "cached" if r.cached else f"{r.seconds:.1f}"])
    return header, rows


def markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def residual_image(residual: np.ndarray) -> np.ndarray:
    """A :func:`tokenflow.eval.metrics.warp_residual` map as uint8 RGB: its per-pixel RMS error
    in gray (black 0, white :data:`FLICKER_WHITE` or more), pixels without a valid flow in
    :data:`FLICKER_INVALID`."""
    valid = np.isfinite(residual)
    level = np.sqrt(np.where(valid, residual, 0.0)) / FLICKER_WHITE
    gray = (np.clip(level, 0.0, 1.0) * 255).round().astype(np.uint8)
    image = np.repeat(gray[..., None], 3, axis=-1)
    image[~valid] = FLICKER_INVALID
    return image


def flicker_rows(source: np.ndarray, videos: list[tuple[str, np.ndarray]], flows,
                 columns: int = FLICKER_COLUMNS) -> tuple[list[tuple[str, np.ndarray]], np.ndarray]:
    """Rows of ``flicker_sheet.png`` and their frame numbers: ``columns`` consecutive frames
    ``t`` from the middle of the clip; for the source and each labelled video, its frames and
    then its residual ``t -> t+1`` (:func:`residual_image`): where the video changes from one
    frame to the next by more than the source's motion (``flows``, pairs ``(t, t+1)``)
    explains. The source's own residual row is the floor (flow and interpolation error)."""
    from tokenflow.eval.metrics import warp_residual

    count = min(columns, len(source) - 1)
    if count < 1:
        raise ValueError("a flicker sheet needs at least two frames")
    start = (len(source) - 1 - count) // 2
    picks = np.arange(start, start + count)
    rows = []
    for label, frames in [("source", source), *videos]:
        rows.append((label, frames[picks]))
        residuals = [residual_image(warp_residual(frames, flows, (t, t + 1))) for t in picks]
        rows.append((f"{label}: change to the next frame beyond the source's motion",
                     np.stack(residuals)))
    return rows, picks


def write_comparison(out: Path, source: np.ndarray, fps: float, results: list[MethodResult],
                     source_metrics: dict, *, context: dict, flows=None,
                     size: tuple[int, int] | None = None) -> dict[str, Path]:
    """Write table.md, table.json, side_by_side.mp4, contact_sheet.png, metrics.png and, given
    the source's ``flows`` for the pairs ``(t, t+1)`` of a clip of at least two frames,
    flicker_sheet.png (:func:`flicker_rows`) into ``out`` (built aside, then renamed into
    place). ``size``: ``(height, width)`` of the frames shown in the video and the sheets
    (default: as given; the residuals are computed before resizing)."""
    import shutil
    import uuid

    from tokenflow.eval.figures import plot_metrics
    from tokenflow.frame_figures import contact_sheet, labelled_side_by_side
    from tokenflow.outputs import replace_dir
    from tokenflow.video import resize_frames, write_png, write_video

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    try:
        header, rows = table_rows(source_metrics, results)
        legend = ("warp err: mean squared RGB error (x1e3, [0,1] scale) between each edited frame "
                  "and the next (t+k: k frames on) warped back with the SOURCE's optical flow, "
                  "over non-occluded pixels; flicker ratio: mean |frame t+1 - frame t| of the "
                  "edit over the source's; flow EPE: the edit's own flow vs the source's (px); "
                  "edge F1: Canny edges of edit vs source. Lower is better except edge F1 and "
                  "scores.")
        if any(BELOW_MARK in cell for row in rows for cell in row):
            legend += "\n\n" + BELOW_LEGEND
        (tmp / "table.md").write_text(f"{context.get('title', '')}\n\n{markdown(header, rows)}\n"
                                      f"{legend}\n")
        doc = {**context, "source": source_metrics,
               "methods": [{"label": r.method.label, "editor": r.method.editor,
                            "options": r.method.options, "keys": r.keys, "stats": r.stats,
                            "seconds": round(r.seconds, 3), "cached": r.cached,
                            "metrics": r.metrics} for r in results]}
        (tmp / "table.json").write_text(json.dumps(doc, indent=2, default=float) + "\n")
        videos = [("source", source), *[(r.method.label, r.frames) for r in results]]

        def shown(rows: list[tuple[str, np.ndarray]]) -> list[tuple[str, np.ndarray]]:
            return rows if size is None else [(label, resize_frames(v, *size)) for label, v in rows]

        write_video(tmp / "side_by_side.mp4", labelled_side_by_side(shown(videos)), fps)
        write_png(tmp / "contact_sheet.png", contact_sheet(shown(videos), 6))
        if flows is not None and len(source) > 1:
            rows, picks = flicker_rows(source, videos[1:], flows)
            write_png(tmp / "flicker_sheet.png",
                      contact_sheet(shown(rows), len(picks), numbers=picks))
        series = {r.method.label: r.metrics.get("per_frame", {}) for r in results}
        series["source"] = source_metrics.get("per_frame", {})
        plot_metrics(series, PLOT_METRICS, tmp / "metrics.png", title=context.get("title", ""))
        replace_dir(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return {path.name: path for path in sorted(out.iterdir())}
