"""Writing a run's outputs: edited.mp4, frames/, source.mp4, side_by_side.mp4 (all at the output
size: the source's, the working size or another), preview.png and preview.gif (source and edit,
labelled, at the working size: :mod:`tokenflow.preview`) and run.json."""

from __future__ import annotations

import json
import os
import platform
import shutil
import uuid
from pathlib import Path

import numpy as np

from tokenflow import __version__
from tokenflow.cache.keys import _plain
from tokenflow.cache.store import safe_name


def replace_dir(tmp: Path, out: Path) -> None:
    """Put the complete directory ``tmp`` at ``out`` by renames only (an existing ``out`` is
    moved aside first and removed after), so ``out`` is never seen half written."""
    if out.exists():
        old = out.with_name(f".{out.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)


def output_dir_for(video: str | os.PathLike) -> Path:
    """Default output directory: ``out/<video name without suffix>``."""
    stem = Path(str(video).rstrip("/\\")).stem or "video"
    return Path("out") / safe_name(stem)


def _previous_key(out: Path) -> str | None:
    """The blender key of the run whose outputs ``out`` holds, if it holds one."""
    try:
        previous = json.loads((out / "run.json").read_text())
        return previous.get("keys", {}).get("blender")
    except (OSError, ValueError, AttributeError):
        return None


def check_output_dir(out: Path, blender_key: str | None, *, overwrite: bool) -> None:
    """:class:`FileExistsError` unless ``out`` may receive this run's outputs. With
    ``blender_key`` None (before the run's keys are known) only what needs no key is checked: a
    file, or a folder that holds something other than a run's outputs."""
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {out} is a file, not a directory")
    if out.exists() and any(out.iterdir()) and not overwrite:
        previous = _previous_key(out)
        if previous is None or (blender_key is not None and previous != blender_key):
            raise FileExistsError(f"output directory {out} exists and holds another result; "
                                  "use --overwrite or another --out")


def _size(height: int, width: int) -> dict[str, int]:
    return {"width": int(width), "height": int(height)}


def output_entry(source, spec) -> dict:
    """The outputs' size for a parsed ``--output-size`` (:func:`tokenflow.sizes.parse_output_size`)
    of a :class:`tokenflow.api.Source`, as ``run.json`` says it: ``{"width", "height", "as"}``."""
    from tokenflow.sizes import output_size

    height, width = output_size(spec, source.clip.frames.shape[1:3], source.working.shape[1:3])
    label = spec if isinstance(spec, str) else (
        f"{spec[0]}x{spec[1]}" if isinstance(spec, tuple) else str(spec))
    return {"width": int(width), "height": int(height), "as": label}


def say_output_size(source, output: dict, log) -> None:
    """A note to ``log`` when the outputs are not the frames as edited: resized, or of another
    aspect than the source's."""
    from tokenflow.preflight import say
    from tokenflow.sizes import aspect_note

    height, width = source.working.shape[1:3]
    if (output["height"], output["width"]) == (height, width):
        return
    named = "the source's size" if output["as"] == "source" else f"--output-size {output['as']}"
    say(log, f"note: outputs at {output['width']}x{output['height']} ({named}), resized from the "
             f"working size {width}x{height}; --output-size working keeps them as edited")
    stretch = aspect_note(source.clip.frames.shape[1:3], (output["height"], output["width"]))
    if stretch:
        say(log, f"note: --output-size {output['as']} changes the source's {stretch}")


def run_record(job, results, source, *, output: dict | None = None, seconds: float) -> dict:
    """What ``run.json`` holds: every parameter, the model's identity, the sizes (``source_size``,
    ``size``: the working size, ``canvas``: what the UNet saw, ``output_size``), every stage's
    key, whether it was cached, timings and UNet evaluation counts. ``source`` is a
    :class:`tokenflow.api.Source`; ``output`` the ``output_size`` entry (default: the working
    size)."""
    model = job.base.model
    clip, working = source.clip, source.working
    size = _size(*working.shape[1:3])
    canvas = _size(*source.frames.shape[1:3])
    return {
        "tokenflow_version": __version__,
        "video": str(clip.source),
        "frames": int(len(working)),
        "stride": int(getattr(clip, "stride", 1)),
        "fps": float(clip.fps),
        "source_size": _size(*clip.frames.shape[1:3]),
        "size": size,
        "canvas": canvas,
        "output_size": output or {**size, "as": "working"},
        "model": {"id": model.model_id, "revision": model.revision, "key": model.key,
                  "dtype": str(model.dtype).removeprefix("torch."), "device": str(model.device)},
        "config": _plain(job.base.config),
        "stages": {k: {"name": s.name, "version": s.version, "params": _plain(s.params)}
                   for k, s in job.stages.items()},
        "keys": dict(job.keys),
        "cache": {k: {"path": str(r.path), "cached": r.cached, "seconds": round(r.seconds, 3),
                      "stats": r.stats} for k, r in results.items()},
        "seconds": round(seconds, 3),
        "python": platform.python_version(),
    }


#: Frames read from the blender's store and written to the outputs at a time, at most; fewer
#: where that many frames at the output size would pass :data:`OUTPUT_CHUNK_BYTES`.
OUTPUT_CHUNK = 16
#: Bytes of one chunk of output frames, at most (a 4K source: 2 frames a chunk).
OUTPUT_CHUNK_BYTES = 64 << 20


def output_chunk(height: int, width: int) -> int:
    """Frames per chunk of the outputs at ``height`` x ``width``: :data:`OUTPUT_CHUNK`, fewer for
    large frames (at least one)."""
    return max(1, min(OUTPUT_CHUNK, OUTPUT_CHUNK_BYTES // (height * width * 3)))


def write_outputs(out: Path, job, results, source, *, output: dict | None = None,
                  overwrite: bool, seconds: float) -> Path:
    """Write everything into a temporary sibling directory, then move it into place.

    ``source`` is the :class:`tokenflow.api.Source` that was edited; ``output`` the output size
    (``{"width", "height", "as"}``; default: the working size). The edited frames stream from
    the blender's store a chunk at a time (:func:`output_chunk`), are cropped to the working
    size and resized to the output size; ``source.mp4`` and the side-by-side's left half are the
    decoded source frames resized to it (unchanged at the source's size). Memory does not grow
    with the video. An existing ``out`` is replaced only with ``overwrite`` or when it holds the
    output of the very same run (same blender key); otherwise :class:`FileExistsError`.
    """
    from contextlib import ExitStack

    from tokenflow.preview import edit_label, write_previews
    from tokenflow.video import VideoWriter, resize_frames, side_by_side, write_frames

    check_output_dir(out, job.keys["blender"], overwrite=overwrite)
    edited = job.base.cache.open(results["blender"].path)["frames"]
    frames = source.working
    height, width = (output["height"], output["width"]) if output else frames.shape[1:3]
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        tmp.mkdir()
        fps = float(source.clip.fps)
        with ExitStack() as stack:
            videos = [stack.enter_context(VideoWriter(tmp / name, fps))
                      for name in ("edited.mp4", "source.mp4", "side_by_side.mp4")]
            step = output_chunk(height, width)
            for start in range(0, len(frames), step):
                stop = min(len(frames), start + step)
                original = resize_frames(source.clip.frames[start:stop], height, width)
                chunk = resize_frames(np.ascontiguousarray(source.crop(np.asarray(
                    edited[start:stop]))), height, width)
                for writer, part in zip(videos, (chunk, original, side_by_side(original, chunk))):
                    writer.write(part)
                write_frames(tmp / "frames", chunk, start=start)
        write_previews(tmp, frames, edited, fps=fps, label=edit_label(job.stages["editor"]),
                       crop=source.crop)
        doc = run_record(job, results, source, output=output, seconds=seconds)
        (tmp / "run.json").write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
        replace_dir(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out
