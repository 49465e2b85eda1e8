"""Fingerprints of `tf run` outputs, to prove a change left them alone (or by how much it did not).

    python benchmarks/fingerprint.py save-tiny-model MODEL_DIR        # once, before the change
    python benchmarks/fingerprint.py record DIR [--tiny-model MODEL_DIR]
    python benchmarks/fingerprint.py compare DIR_BEFORE DIR_AFTER

``record`` runs a fixed set of edits through the `tf` command line, each in its own process and
cache, and keeps, per case: the edited frames (``frames.npz``, lossless) and every stage's cache
key (from ``run.json``). The cases cover the embedded model with every built-in editor and an
SD-1.5-shaped random model (the one ``tokenflow.testing`` builds; pass ``--tiny-model`` to reuse
one saved earlier, so that the weights are the same in both recordings: build it once with
``save-tiny-model``). ``compare`` prints one table: per case, whether the frames are equal
bit for bit, their PSNR otherwise, and which stage keys changed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
BALL = ["examples/clips/rolling_ball.mp4", "--inversion-prompt", "a red ball on wood",
        "--frames", "12", "--steps", "10", "--inversion-steps", "20", "--batch-size", "4"]
BLUE = ["--prompt", "a blue ball on wood"]

#: name -> (tf run arguments, needs the tiny SD-shaped model)
CASES: dict[str, tuple[list[str], bool]] = {
    "embedded-pnp": (BALL + BLUE, False),
    "embedded-pnp-linear": (BALL + BLUE + ["-o", "blender.weights", "linear"], False),
    "embedded-pnp-frames": (BALL + BLUE + ["--editor", "pnp-frames"], False),
    "embedded-sdedit": (BALL + BLUE + ["--editor", "sdedit"], False),
    "embedded-controlnet": (BALL + BLUE + ["--editor", "controlnet"], False),
    "sd15-pnp": (["--frames", "6", "--steps", "4", "--inversion-steps", "8", "--batch-size", "3",
                  "--size", "64", "--prompt", "a photo of a cat"], True),
}


def save_tiny_model(directory: Path) -> Path:
    try:
        from tokenflow.testing.tiny import save_tiny_model as save
    except ImportError:  # before the testing package had the builders
        from tokenflow.models import save_tiny_model as save
    return save(directory, "sd15", seed=0)


def synthetic_clip(path: Path) -> Path:
    """Six 64x96 frames of a moving gradient with a square (deterministic)."""
    from tokenflow.video import write_frames

    yy, xx = np.mgrid[0:64, 0:96].astype(np.float32)
    frames = []
    for t in range(6):
        img = np.stack([xx * 2.5, yy * 3.5, (xx + yy + 20 * t) % 255], -1)
        img[20:40, 10 + 6 * t:30 + 6 * t] = (240, 40, 40)
        frames.append(img.clip(0, 255).astype(np.uint8))
    write_frames(path, np.stack(frames))
    return path


def record(out: Path, tiny_model: Path | None) -> None:
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "HF_HUB_OFFLINE": "1",
           "TOKENFLOW_HASH_CACHE": str(out / "hash-memo")}
    clip = synthetic_clip(out / "synthetic")
    if tiny_model is None:
        tiny_model = save_tiny_model(out / "tiny-sd15")
    for name, (args, tiny) in CASES.items():
        run_dir = out / name
        argv = [sys.executable, "-m", "tokenflow.cli", "run"]
        argv += ([str(clip), "--model", str(tiny_model)] if tiny else []) + args
        argv += ["--cache-dir", str(out / "cache" / name), "--out", str(run_dir), "--overwrite",
                 "-q"]
        done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"{name}: tf run failed:\n{done.stderr[-2000:]}")
        import imageio.v3 as iio

        files = sorted((run_dir / "frames").glob("*.png"))
        np.savez_compressed(run_dir / "frames.npz", frames=np.stack([iio.imread(f) for f in files]))
        doc = json.loads((run_dir / "run.json").read_text())
        keys = doc["keys"]
        (run_dir / "keys.json").write_text(json.dumps(keys, indent=1, sort_keys=True))
        print(f"recorded {name}", file=sys.stderr)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0 ** 2 / mse)


def compare(before: Path, after: Path) -> int:
    print("| case | frames | PSNR dB | max abs diff | stage keys changed |")
    print("|---|---|---|---|---|")
    bad = 0
    for name in CASES:
        a = np.load(before / name / "frames.npz")["frames"]
        b = np.load(after / name / "frames.npz")["frames"]
        ka = json.loads((before / name / "keys.json").read_text())
        kb = json.loads((after / name / "keys.json").read_text())
        changed = sorted(k for k in set(ka) | set(kb) if ka.get(k) != kb.get(k))
        same = a.shape == b.shape and np.array_equal(a, b)
        diff = int(np.abs(a.astype(int) - b.astype(int)).max()) if a.shape == b.shape else -1
        bad += (not same) + bool(changed)
        print(f"| {name} | {'identical' if same else 'DIFFER'} | "
              f"{psnr(a, b) if a.shape == b.shape else float('nan'):.2f} | {diff} | "
              f"{', '.join(changed) or 'none'} |")
    return 1 if bad else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    rec = sub.add_parser("record")
    rec.add_argument("out", type=Path)
    rec.add_argument("--tiny-model", type=Path, default=None)
    cmp_ = sub.add_parser("compare")
    cmp_.add_argument("before", type=Path)
    cmp_.add_argument("after", type=Path)
    save = sub.add_parser("save-tiny-model")
    save.add_argument("out", type=Path)
    args = parser.parse_args()
    if args.cmd == "record":
        record(args.out, args.tiny_model)
    elif args.cmd == "save-tiny-model":
        print(save_tiny_model(args.out))
    else:
        sys.exit(compare(args.before, args.after))


if __name__ == "__main__":
    main()
