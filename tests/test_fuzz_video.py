"""Fuzzing ``tokenflow.video.read_video``: random bytes, mutated mp4 files (bit flips,
truncations, inserted and overwritten bytes at random offsets of a real mp4), random and mutated
PNG/JPG frames in random modes. Every call must return a valid :class:`Video` or raise
:class:`VideoError`: never another exception, never hang.

The loop runs in a child process (``python this_file.py SEED ITERATIONS WORKDIR``) so that a hang
is caught by a timeout; the child writes the input it is working on before each call, so a hang
names its input. Fixed seed, bounded time (about 15 s on 2 CPU cores)."""

from __future__ import annotations

import io
import json
import math
import subprocess
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import pytest

SEED, ITERATIONS = 20240611, 250
TIMEOUT = 90  # seconds for the whole child; one ffmpeg call takes ~0.05 s
PNG_MODES = ("1", "L", "LA", "P", "I;16", "RGB", "RGBA")
JPG_MODES = ("L", "RGB", "CMYK")


def _random_image(rng: np.random.Generator, mode: str):
    from PIL import Image

    h, w = (int(v) for v in rng.integers(1, 40, 2))
    if mode == "1":
        return Image.fromarray(rng.integers(0, 2, (h, w), dtype=np.uint8) * 255).convert("1")
    if mode == "I;16":
        data = rng.integers(0, 65536, (h, w), dtype=np.uint16)
        return Image.fromarray(data)
    if mode == "P":
        image = Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8), "L").convert("P")
        if rng.random() < 0.5:
            image.info["transparency"] = int(rng.integers(0, 256))
        return image
    channels = {"L": 1, "LA": 2, "RGB": 3, "RGBA": 4, "CMYK": 4}[mode]
    data = rng.integers(0, 256, (h, w, channels), dtype=np.uint8)
    if mode == "CMYK":
        return Image.frombytes("CMYK", (w, h), data.tobytes())
    return Image.fromarray(data[..., 0] if channels == 1 else data, mode)


def _mutate(rng: np.random.Generator, data: bytes) -> tuple[bytes, str]:
    """One random damage of ``data`` and its description."""
    b = bytearray(data)
    how = str(rng.choice(["flip", "truncate", "insert", "overwrite", "flips"]))
    at = int(rng.integers(0, len(b)))
    if how == "flip":
        b[at] ^= 1 << int(rng.integers(0, 8))
    elif how == "flips":
        for pos in rng.integers(0, len(b), int(rng.integers(2, 64))):
            b[int(pos)] ^= 1 << int(rng.integers(0, 8))
    elif how == "truncate":
        del b[at:]
    elif how == "insert":
        b[at:at] = rng.integers(0, 256, int(rng.integers(1, 512)), dtype=np.uint8).tobytes()
    else:
        chunk = rng.integers(0, 256, int(rng.integers(1, 256)), dtype=np.uint8).tobytes()
        b[at:at + len(chunk)] = chunk
    return bytes(b), f"{how}@{at}"


def _check(video, Video) -> str | None:
    """Why ``video`` is not a valid result, or None."""
    if not isinstance(video, Video):
        return f"returned {type(video).__name__}"
    f = video.frames
    if not (isinstance(f, np.ndarray) and f.dtype == np.uint8 and f.ndim == 4 and f.shape[3] == 3
            and min(f.shape) >= 1 and f.flags.c_contiguous):
        return f"bad frames {getattr(f, 'shape', None)} {getattr(f, 'dtype', None)}"
    if not (math.isfinite(video.fps) and video.fps > 0) or len(video) != f.shape[0]:
        return f"bad fps {video.fps!r}"
    return None


def fuzz(seed: int, iterations: int, workdir: Path) -> dict:
    """Run the fuzz loop; return counts and the failures (input, what happened)."""
    from tokenflow.testing import synthetic_frames
    from tokenflow.video import Video, VideoError, read_video, write_video

    rng = np.random.default_rng(seed)
    workdir.mkdir(parents=True, exist_ok=True)
    base = workdir / "base.mp4"
    write_video(base, synthetic_frames(6, 32, 48), fps=8)
    mp4 = base.read_bytes()
    png = io.BytesIO()
    _random_image(rng, "RGB").save(png, format="PNG")
    counts = {"ok": 0, "VideoError": 0}
    failures = []
    current = workdir / "current.txt"
    for i in range(iterations):
        case = workdir / f"case-{i}"
        case.mkdir()
        kind = ("random-bytes", "mp4", "mp4", "png-modes", "png-bytes")[i % 5]
        if kind == "random-bytes":
            suffix = str(rng.choice([".mp4", ".gif", ".mov", ".webm"]))
            target = case / f"x{suffix}"
            target.write_bytes(rng.integers(0, 256, int(rng.integers(0, 4096)),
                                            dtype=np.uint8).tobytes())
            what = f"{int(target.stat().st_size)} random bytes as {suffix}"
        elif kind == "mp4":
            data, what = _mutate(rng, mp4)
            target = case / "x.mp4"
            target.write_bytes(data)
            what = f"mp4 {what}"
        elif kind == "png-modes":
            target = case
            modes = []
            for j in range(int(rng.integers(1, 4))):
                jpg = rng.random() < 0.25
                mode = str(rng.choice(JPG_MODES if jpg else PNG_MODES))
                image = _random_image(rng, mode)
                image.save(case / f"{j}.{'jpg' if jpg else 'png'}")
                modes.append(f"{mode}{image.size}")
            what = f"frames {modes}"
        else:
            data, what = _mutate(rng, png.getvalue())
            (case / "0.png").write_bytes(data)
            target = case
            what = f"png {what}"
        current.write_text(f"{i}: {what}")
        try:
            video = read_video(target, frames=int(rng.integers(1, 8)) if rng.random() < 0.3 else None)
        except VideoError as exc:
            counts["VideoError"] += 1
            message = str(exc)
            if "\n" in message or not message.strip():
                failures.append((what, f"VideoError not one line: {message!r}"))
        except BaseException as exc:  # noqa: BLE001 - what the test is looking for
            failures.append((what, "".join(traceback.format_exception_only(exc)).strip()))
        else:
            problem = _check(video, Video)
            if problem:
                failures.append((what, problem))
            else:
                counts["ok"] += 1
    return {"counts": counts, "failures": failures}


@pytest.mark.slow
def test_read_video_returns_a_video_or_raises_video_error(tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    start = time.monotonic()
    try:
        done = subprocess.run([sys.executable, __file__, str(SEED), str(ITERATIONS), str(tmp_path),
                               str(report)], capture_output=True, text=True, timeout=TIMEOUT,
                              check=False)
    except subprocess.TimeoutExpired:
        current = (tmp_path / "current.txt").read_text()
        pytest.fail(f"read_video hung (> {TIMEOUT} s in all) on input {current}")
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(report.read_text())
    assert result["failures"] == [], result["failures"]
    counts = result["counts"]
    assert counts["ok"] + counts["VideoError"] == ITERATIONS
    # the fuzzing reaches both outcomes (a generator that only made garbage would test little)
    assert counts["ok"] >= ITERATIONS // 10 and counts["VideoError"] >= ITERATIONS // 10, counts
    assert time.monotonic() - start < TIMEOUT


if __name__ == "__main__":
    seed, iterations, workdir, out = sys.argv[1:5]
    Path(out).write_text(json.dumps(fuzz(int(seed), int(iterations), Path(workdir))))
