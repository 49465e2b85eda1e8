"""Wall time and peak RSS of `tf run` cold, then warm with a new prompt, then with a new seed.

Tiny SD-shaped model (random weights, built from config), the bundled 16-frame 192x128 clip,
50 editing steps and 50 inversion steps. Each run is a separate `tf` process.

    python benchmarks/run_cache.py [--frames 16] [--steps 50] [--inversion-steps 50]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

from measure import (  # benchmarks/measure.py (the script directory is on sys.path)
    dir_size,
    tf_run,
)

ROOT = Path(__file__).resolve().parents[1]
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--inversion-steps", type=int, default=50)
    args = parser.parse_args()
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "HF_HUB_OFFLINE": "1"}
    clip = ROOT / "examples" / "clips" / "rolling_ball.mp4"
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        from tokenflow.testing.tiny import save_tiny_model

        model = save_tiny_model(tmp / "model", "sd15", seed=0)
        base = [str(clip), "--model", str(model), "--frames", str(args.frames),
                "--steps", str(args.steps), "--inversion-steps", str(args.inversion_steps),
                "--cache-dir", str(tmp / "cache"), "-q"]
        runs = [
            ("cold", ["--prompt", "a blue ball", "--seed", "1"]),
            ("warm, new prompt", ["--prompt", "a green ball", "--seed", "1"]),
            ("warm, new seed", ["--prompt", "a green ball", "--seed", "2"]),
            ("same command again", ["--prompt", "a green ball", "--seed", "2"]),
        ]
        print(f"tf run, tiny SD-1.5-shaped model, {args.frames} frames 192x128, "
              f"{args.steps} steps, {args.inversion_steps} inversion steps, "
              f"{os.cpu_count()} CPU cores\n")
        print("| run | wall time | peak RSS | stages computed | cache on disk |")
        print("|---|---|---|---|---|")
        for i, (label, extra) in enumerate(runs):
            out = tmp / f"out{i}"
            result = tf_run(base + extra + ["--out", str(out)], env)
            doc = json.loads((out / "run.json").read_text())
            computed = [k for k, v in doc["cache"].items() if not v["cached"]]
            print(f"| {label} | {result['seconds']:.1f} s | {result['peak_rss_mb']:.0f} MB | "
                  f"{', '.join(computed) or 'none'} | {dir_size(tmp / 'cache') / 2**20:.1f} MiB |")
        stats = doc["cache"]["blender"]["stats"]
        k, n = stats["keyframes_per_step"], stats["frames"]
        print(f"\nUNet frame-evaluations per editing step: "
              f"{stats['unet_frame_evals'] / stats['steps']:g} (2(K+N) = {2 * (k + n)}, K={k}, N={n})")


if __name__ == "__main__":
    main()
