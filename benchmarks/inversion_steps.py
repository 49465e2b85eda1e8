"""Reconstruction PSNR against DDIM inversion steps, as `tf invert` reports it: invert every frame
with N steps, regenerate from the inverted noise over the same grid (same prompt, no guidance),
compare with the source frames.

    python benchmarks/inversion_steps.py [--steps 50,100,250,500] [--frames 8]
                                         [--clips rolling_ball,box_pan,...]

On the embedded model and its example clips (examples/make_clips.py; each with its source caption
as the inversion prompt, at the model's working size, the first ``--frames`` frames). Prints one
Markdown table: mean and minimum PSNR per clip and step count, the VAE's own PSNR (the ceiling),
seconds, and for each clip the fewest steps within 0.5 dB of the most. Then, with ``--wall``, the
wall time of a cold ``tf run`` of ``rolling_ball.mp4`` (all 16 frames, 50 editing steps) at the
model's default inversion steps against the same run with 500.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))
from make_clips import CLIPS  # noqa: E402 - examples/make_clips.py

CAPTIONS = {name: clip.caption() for name, clip in CLIPS.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", default="50,100,250,500")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--clips", default=",".join(CAPTIONS))
    parser.add_argument("--tolerance", type=float, default=0.5)
    parser.add_argument("--wall", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import torch

    import tokenflow

    torch.set_num_threads(1)
    counts = [int(s) for s in args.steps.split(",")]
    model = tokenflow.load_model(None, device="cpu")
    print(f"embedded model, short side {model.native_size}, first {args.frames} frames, editing "
          f"grid 50 steps, 1 torch "
          f"thread; reconstruction PSNR in dB (mean / min over frames)\n")
    print("| clip | " + " | ".join(f"{c} steps" for c in counts)
          + " | VAE alone | fewest steps within " + f"{args.tolerance} dB of {max(counts)} |")
    print("|" + "---|" * (len(counts) + 3))
    with tempfile.TemporaryDirectory(prefix="tf-invsteps-") as tmp:
        for clip in args.clips.split(","):
            path = ROOT / "examples" / "clips" / f"{clip}.mp4"
            if not path.exists():
                sys.exit(f"{path} is missing: python examples/make_clips.py")
            cells, means, vae = [], {}, None
            for count in counts:
                start = time.perf_counter()
                result = tokenflow.invert(path, model=model, inversion_prompt=CAPTIONS[clip],
                                          inversion_steps=count, steps=50, frames=args.frames,
                                          cache_dir=Path(tmp) / "cache")
                seconds = time.perf_counter() - start
                psnr = result.psnr
                means[count], vae = psnr["mean"], psnr["vae_mean"]
                cells.append(f"{psnr['mean']:.2f} / {psnr['min']:.2f} ({seconds:.0f} s)")
            best = means[max(counts)]
            enough = min(c for c in counts if means[c] >= best - args.tolerance)
            print(f"| {clip} | " + " | ".join(cells) + f" | {vae:.2f} | {enough} |", flush=True)

    if args.wall:
        wall(model)


def wall(model) -> None:
    """Cold `tf run` of rolling_ball.mp4 at the default inversion steps and at 500, same editing."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from measure import tf_run

    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "1",
           "HF_HUB_OFFLINE": "1"}
    default = model.defaults.get("inversion.inversion_steps", 500)
    rows = []
    with tempfile.TemporaryDirectory(prefix="tf-invwall-") as tmp:
        for label, extra in ((f"default ({default})", []), ("500", ["--inversion-steps", "500"])):
            run = tf_run([str(ROOT / "examples" / "clips" / "rolling_ball.mp4"),
                          "--inversion-prompt", CAPTIONS["rolling_ball"],
                          "--prompt", "a blue ball on wood",
                          "--cache-dir", str(Path(tmp) / label.split()[0]), "--out",
                          str(Path(tmp) / f"out-{label.split()[0]}"), "-q", *extra], env)
            rows.append((label, run["seconds"]))
    print("\n| inversion steps | cold tf run, rolling_ball.mp4 (16 frames, 50 editing steps) s |")
    print("|---|---|")
    for label, seconds in rows:
        print(f"| {label} | {seconds:.1f} |")
    print(f"\nratio default / 500: {rows[0][1] / rows[1][1]:.2f}")


if __name__ == "__main__":
    main()
