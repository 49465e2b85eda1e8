"""Crash safety: a real `tf run` killed (SIGKILL) during inversion, the feature store or the
editing loop resumes from its partial store when run again, and the final video is
bit-identical to an uninterrupted run's. Two processes on one cache never corrupt it."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

from tokenflow.cache.store import StageCache
from tokenflow.testing import synthetic_frames
from tokenflow.video import write_frames

STEPS = 10
ARGS = ["--prompt", "a blue ball", "--steps", str(STEPS), "--inversion-steps", "50", "--frames",
        "8", "--batch-size", "4", "--size", "64", "-q"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tf_tiny_model_dir) -> dict:
    root = tmp_path_factory.mktemp("resume")
    clip = root / "clip"
    write_frames(clip, synthetic_frames(8, height=64, width=64))
    env = {k: v for k, v in os.environ.items() if k not in ("TOKENFLOW_LOAD_PLUGINS",)}
    env.update(OMP_WAIT_POLICY="PASSIVE", HF_HUB_OFFLINE="1", TOKENFLOW_CHECKPOINT_SECONDS="0",
               TOKENFLOW_HASH_CACHE=str(root / "memo"), OMP_NUM_THREADS="1")
    base = [sys.executable, "-m", "tokenflow.cli", "run", str(clip), "--model",
            str(tf_tiny_model_dir), *ARGS]
    reference = root / "reference"
    done = subprocess.run([*base, "--cache-dir", str(root / "cache-ref"), "--out", str(reference)],
                          env=env, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr
    return {"root": root, "base": base, "env": env, "reference": reference}


def _frames(out: Path) -> np.ndarray:
    doc = json.loads((out / "run.json").read_text())
    return np.asarray(zarr.open_group(doc["cache"]["blender"]["path"], mode="r")["frames"][...])


def _progress(cache: Path, kind: str) -> dict:
    files = list((cache / kind).glob(".*.partial.progress.json"))
    if not files:
        return {}
    try:
        return json.loads(files[0].read_text())
    except (OSError, ValueError):
        return {}


def _kill_when(proc: subprocess.Popen, ready, timeout: float = 120.0) -> bool:
    """SIGKILL ``proc`` as soon as ``ready()``; False if it ended first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        if ready():
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
            return True
        time.sleep(0.005)
    proc.kill()
    raise AssertionError("the run never reached the kill point")


KILL_POINTS = {
    # inversion: after its 5th checkpointed step of 50 (the frames are encoded, latents stored)
    "inversion": lambda cache: _progress(cache, "inversion").get("state", {}).get("step", -1) >= 5,
    # features: after 3 of its (timestep, frame batch) passes
    "features": lambda cache: len(_progress(cache, "features").get("done", [])) >= 3,
    # the editing loop: after 4 of 10 timesteps
    "editing": lambda cache: len(_progress(cache, "blender").get("done", [])) >= 4,
}


RESUME_NOTES = {"inversion": "inversion: resuming at step ",
                "features": "features: resuming; an interrupted run stored ",
                "editing": "editing loop: resuming at step "}


@pytest.mark.slow
@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_a_killed_run_resumes_bit_identically(setup, point: str) -> None:
    root = setup["root"]
    cache, out = root / f"cache-{point}", root / f"out-{point}"
    cmd = [*setup["base"], "--cache-dir", str(cache), "--out", str(out)]
    proc = subprocess.Popen(cmd, env=setup["env"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    assert _kill_when(proc, lambda: KILL_POINTS[point](cache)), "the run ended before the kill"
    kind = "blender" if point == "editing" else point
    store = StageCache(cache)
    partials = list((cache / kind).glob(".*.partial.zarr"))
    assert partials, "the interrupted stage left no partial store"
    assert not [e for e in store.entries() if e.kind == kind]  # never read as complete
    assert not out.exists()
    done_before = len(_progress(cache, kind).get("done", []))
    assert done_before >= 1
    rerun = subprocess.run([a for a in cmd if a != "-q"], env=setup["env"],
                           capture_output=True, text=True, timeout=600, check=False)
    assert rerun.returncode == 0, rerun.stderr
    # the rerun says what it reuses, what it resumes and where
    plan = next(line for line in rerun.stderr.splitlines() if line.startswith("stage cache: "))
    resumed = re.search(r"resuming ([a-z, ]+) \(left partly done by an interrupted run\)", plan)
    assert resumed and kind in resumed.group(1).split(", "), plan
    if point != "inversion":
        assert "reusing inversion" in plan, plan
    assert RESUME_NOTES[point] in rerun.stderr, rerun.stderr
    np.testing.assert_array_equal(_frames(out), _frames(setup["reference"]))
    assert (out / "edited.mp4").read_bytes() == (setup["reference"] / "edited.mp4").read_bytes()
    assert not list(cache.glob("*/.*.partial*")) and not list(cache.glob("*/.*.tmp-*"))
    assert store.verify() == []


@pytest.mark.slow
def test_two_processes_on_one_cache(setup) -> None:
    """Both ask for the same entries at once: one computes each, the other waits; both finish
    with the reference result and the cache verifies."""
    root = setup["root"]
    cache = root / "cache-shared"
    procs = [subprocess.Popen([*setup["base"], "--cache-dir", str(cache), "--out",
                               str(root / f"out-shared-{i}")], env=setup["env"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    results = [p.communicate(timeout=600) for p in procs]
    for proc, (_, err) in zip(procs, results):
        assert proc.returncode == 0, err
    for i in range(2):
        np.testing.assert_array_equal(_frames(root / f"out-shared-{i}"),
                                      _frames(setup["reference"]))
    store = StageCache(cache)
    assert store.verify() == []
    assert len({(e.kind, e.key) for e in store.entries()}) == len(store.entries()) == 6


def _cli(*args: str):
    from click.testing import CliRunner

    from tokenflow.cli import cli

    return CliRunner().invoke(cli, [str(a) for a in args])


def test_cache_verify_finds_and_removes_broken_entries(setup, tmp_path: Path) -> None:
    import shutil

    cache = tmp_path / "cache"
    shutil.copytree(setup["root"] / "cache-ref", cache)
    store = StageCache(cache)
    entries = store.entries()
    assert len(entries) == 6 and store.verify() == []
    ok = _cli("cache", "verify", "--cache-dir", cache)
    assert ok.exit_code == 0 and "6 of 6 entries intact; 0 broken; 0 partial" in ok.output
    by_kind = {e.kind: e.path for e in entries}
    # a flipped byte in a chunk, a missing chunk, and a dropped completeness marker
    chunk = next(p for p in sorted((by_kind["features"]).rglob("c/*/*/*/*/*")) if p.is_file())
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0xFF
    chunk.write_bytes(bytes(data))
    next(p for p in sorted(by_kind["inversion"].rglob("latents/c/*/*/*/*/*")) if p.is_file()).unlink()
    shutil.copytree(by_kind["keyframes"], cache / "keyframes" / ".random-0000.partial.zarr")
    problems = dict(store.verify())
    assert problems[by_kind["features"]].startswith("checksum mismatch in ")
    assert problems[by_kind["inversion"]].startswith("1 file(s) missing")
    assert problems[cache / "keyframes" / ".random-0000.partial.zarr"].startswith("partial")
    assert len(problems) == 3
    bad = _cli("cache", "verify", "--cache-dir", cache)
    assert bad.exit_code == 1 and "4 of 6 entries intact; 2 broken; 1 partial" in bad.output
    assert sum(line.startswith("BROKEN") for line in bad.output.splitlines()) == 2
    fixed = _cli("cache", "verify", "--cache-dir", cache, "--remove")
    assert fixed.exit_code == 0, fixed.output
    assert not by_kind["features"].exists() and not by_kind["inversion"].exists()
    assert {e.kind for e in store.entries()} == {"keyframes", "correspondence", "editor", "blender"}
    assert all(not p[1].startswith(("checksum", "1 file")) for p in store.verify())
