"""Writing a run's outputs: edited.mp4, frames/, source.mp4, side_by_side.mp4, preview.png
(source and edit, four frames each) and run.json."""

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
from tokenflow.video import evenly_spaced


def contact_sheet(*videos: np.ndarray, columns: int = 4) -> np.ndarray:
    """One row per video, ``columns`` evenly spaced frames each (same size videos)."""
    index = evenly_spaced(min(len(v) for v in videos), columns)
    return np.concatenate([np.concatenate(list(v[index]), axis=1) for v in videos], axis=0)


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


def run_record(job, results, clip, frames: np.ndarray, *, seconds: float) -> dict:
    """What ``run.json`` holds: every parameter, the model's identity, every stage's key, whether
    it was cached, timings and UNet evaluation counts."""
    model = job.base.model
    return {
        "tokenflow_version": __version__,
        "video": str(clip.source),
        "frames": int(len(frames)),
        "stride": int(getattr(clip, "stride", 1)),
        "fps": float(clip.fps),
        "size": {"width": int(frames.shape[2]), "height": int(frames.shape[1])},
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


#: Frames read from the blender's store and written to the outputs at a time.
OUTPUT_CHUNK = 16


def write_outputs(out: Path, job, results, clip, frames: np.ndarray, *, overwrite: bool,
                  seconds: float) -> Path:
    """Write everything into a temporary sibling directory, then move it into place.

    The edited frames stream from the blender's store :data:`OUTPUT_CHUNK` at a time into
    every output, so memory does not grow with the video. An existing ``out`` is replaced only
    with ``overwrite`` or when it holds the output of the very same run (same blender key);
    otherwise :class:`FileExistsError`.
    """
    from contextlib import ExitStack

    from tokenflow.video import VideoWriter, side_by_side, write_frames, write_png

    check_output_dir(out, job.keys["blender"], overwrite=overwrite)
    edited = job.base.cache.open(results["blender"].path)["frames"]
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        tmp.mkdir()
        fps = float(clip.fps)
        with ExitStack() as stack:
            videos = [stack.enter_context(VideoWriter(tmp / name, fps))
                      for name in ("edited.mp4", "source.mp4", "side_by_side.mp4")]
            for start in range(0, len(frames), OUTPUT_CHUNK):
                source = frames[start:start + OUTPUT_CHUNK]
                chunk = np.asarray(edited[start:start + len(source)])
                for writer, part in zip(videos, (chunk, source, side_by_side(source, chunk))):
                    writer.write(part)
                write_frames(tmp / "frames", chunk, start=start)
        index = evenly_spaced(len(frames), 4)
        write_png(tmp / "preview.png", contact_sheet(frames[index],
                                                     np.asarray(edited.oindex[index])))
        doc = run_record(job, results, clip, frames, seconds=seconds)
        (tmp / "run.json").write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
        replace_dir(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out
