"""What a crash costs: `tf run` killed (SIGKILL) halfway through a stage, then run again.

    python benchmarks/resume.py [--frames 16] [--steps 50]

Embedded model, examples/clips/rolling_ball.mp4 at its working size. A clean run gives the
reference time; then, for each kill point, a run in a fresh cache is killed when the stage's
partial store holds half of its work, and the same command is run again to completion. "lost" is
the time at the kill plus the rerun minus the clean run: the work redone plus the second process's
start-up (model loading). The final frames are compared with the clean run's (bit-identical
expected).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import zarr

ROOT = Path(__file__).resolve().parents[1]


def _progress(cache: Path, kind: str) -> dict:
    for path in (cache / kind).glob(".*.partial.progress.json"):
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return {}
    return {}


def _frames(out: Path) -> np.ndarray:
    doc = json.loads((out / "run.json").read_text())
    return np.asarray(zarr.open_group(doc["cache"]["blender"]["path"], mode="r")["frames"][...])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--steps", type=int, default=50)
    args = parser.parse_args()
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "HF_HUB_OFFLINE": "1",
           "TOKENFLOW_CHECKPOINT_SECONDS": "0"}  # the default: the inversion checkpoints every step
    clip = ROOT / "examples" / "clips" / "rolling_ball.mp4"
    half = {"inversion": lambda p: p.get("state", {}).get("step", -1) >= 25,  # of 50
            "features": lambda p: len(p.get("done", [])) >= (args.steps * -(-args.frames // 8)) // 2,
            "blender": lambda p: len(p.get("done", [])) >= args.steps // 2}
    with tempfile.TemporaryDirectory(prefix="tf-resume-") as tmp:
        tmp = Path(tmp)

        def command(name: str) -> list[str]:
            return [sys.executable, "-m", "tokenflow.cli", "run", str(clip), "--inversion-prompt",
                    "a red ball on wood", "--prompt", "a blue ball on wood",
                    "--frames", str(args.frames), "--steps", str(args.steps), "-q",
                    "--cache-dir", str(tmp / f"cache-{name}"), "--out", str(tmp / f"out-{name}")]

        start = time.perf_counter()
        subprocess.run(command("clean"), env=env, check=True, capture_output=True)
        clean = time.perf_counter() - start
        doc = json.loads((tmp / "out-clean" / "run.json").read_text())
        stage_s = {k: v["seconds"] for k, v in doc["cache"].items()}
        print(f"embedded model, {clip.name} {args.frames} frames, {args.steps} steps, "
              f"{os.cpu_count()} cores; clean run {clean:.1f} s (stages: "
              + ", ".join(f"{k} {v:.1f} s" for k, v in stage_s.items()) + ")\n")
        print("| killed during | at (s) | work done then | rerun (s) | lost (s) | identical |")
        print("|---|---|---|---|---|---|")
        for kind, ready in half.items():
            cache = tmp / f"cache-{kind}"
            start = time.perf_counter()
            proc = subprocess.Popen(command(kind), env=env, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)
            while proc.poll() is None and not ready(_progress(cache, kind)):
                time.sleep(0.01)
            if proc.poll() is not None:
                print(f"| {kind} | (finished before the kill point) |")
                continue
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            at = time.perf_counter() - start
            done = _progress(cache, kind)
            units = done.get("state", {}).get("step", len(done.get("done", [])))
            start = time.perf_counter()
            subprocess.run(command(kind), env=env, check=True, capture_output=True)
            rerun = time.perf_counter() - start
            same = np.array_equal(_frames(tmp / f"out-{kind}"), _frames(tmp / "out-clean"))
            unit = "inversion steps" if kind == "inversion" else (
                "feature passes" if kind == "features" else "editing steps")
            print(f"| {kind} | {at:.1f} | {units} {unit} | {rerun:.1f} | {at + rerun - clean:.1f} "
                  f"| {'yes' if same else 'NO'} |", flush=True)


if __name__ == "__main__":
    main()
