"""Wall time, memory and UNet work of a cold `tf run` on the setting of issue 11 ("the same work as
the released code"): a random-weight SD-2.1-base-shaped model and a synthetic 128x192 clip.

    python benchmarks/wall_time.py [--runs a,b] [--versions NAME=PYTHON,...] [--frames-out DIR]
                                   [--against DIR] [-- EXTRA tf run ARGS]

Runs (each a cold `tf run` in its own process, one torch thread, OMP_WAIT_POLICY=PASSIVE):

* ``a``: 32 frames, 50 inversion + 50 editing steps (released code on this machine: 169 s);
* ``b``: 16 frames, 500 inversion + 50 editing steps (released code: 345 s).

The model: UNet ``block_out_channels (32, 64, 128, 128)``, ``layers_per_block 2``,
``attention_head_dim (2, 4, 8, 8)``, linear projections (SD 2.x), cross-attention dim 64; VAE
``(16, 32, 64, 64)``; CLIP text encoder hidden 64, 2 layers; seed 0 (``tokenflow.testing.tiny``).
Batch size 8, guidance 7.5, seed 1. ``--frames-out DIR`` keeps each run's frames
(``DIR/<run>.npz``); ``--against DIR`` reports the PSNR of this run's frames against those (an
earlier commit's), and whether the keyframe draws are identical. ``--versions
before=/path/to/other/checkout/.venv/bin/python,after=.venv/bin/python`` runs each setting with
each interpreter's tokenflow, interleaved (the machine's load affects both alike), and compares
every version's frames with the first's. ``--variants "default=;reuse=-o blender.reuse_keyframes
true"`` runs each setting once per variant (NAME=more tf run arguments, ``;``-separated),
interleaved likewise, each cold in its own cache, and compares every variant's frames with the
first's (the speed options of docs/benchmarks.md). ``--warm`` shares one cache among the
variants of a setting and removes only the editor's and the blender's stores before each run, so
that each run recomputes the editing loop alone (its seconds are the ``blender s`` column);
``--repeat R`` runs the whole interleaved round R times and ends with the median loop seconds per
variant and the median CPU seconds of the whole ``tf run`` process (steadier than wall time when
other work shares the machine; with ``--warm`` the first round also computes the upstream
stores). Prints one Markdown table.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
import zarr
from measure import dir_size, tf_run  # benchmarks/measure.py (the script directory is on sys.path)

RUNS = {"a": (32, 50, 169.0), "b": (16, 500, 345.0)}  # frames, inversion steps, released code s
KINDS = ("inversion", "features", "keyframes", "correspondence", "blender")
UNET = dict(block_out_channels=(32, 64, 128, 128), attention_head_dim=(2, 4, 8, 8))
VAE = dict(block_out_channels=(16, 32, 64, 64))


def build(tmp: Path, n: int) -> tuple[Path, Path]:
    from tokenflow.testing import synthetic_frames
    from tokenflow.testing.tiny import save_tiny_model
    from tokenflow.video import write_frames

    model = tmp / "model"
    if not model.exists():
        save_tiny_model(model, "sd21", seed=0, sample_size=16, unet=UNET, vae=VAE)
    clip = tmp / f"clip-{n}"
    write_frames(clip, synthetic_frames(n, height=128, width=192, seed=0))
    return model, clip


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0 ** 2 / mse)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default="a,b")
    parser.add_argument("--frames-out", type=Path, default=None)
    parser.add_argument("--against", type=Path, default=None)
    parser.add_argument("--versions", default=None,
                        help="NAME=PYTHON,...: compare checkouts in one run (interleaved)")
    parser.add_argument("--variants", default=None,
                        help="NAME=TF RUN ARGS;...: compare options in one run (interleaved)")
    parser.add_argument("--warm", action="store_true",
                        help="time the editing loop alone: upstream stores shared and kept")
    parser.add_argument("--repeat", type=int, default=1, help="interleaved rounds")
    parser.add_argument("extra", nargs="*", help="more tf run arguments (after --)")
    args = parser.parse_args()
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "1",
           "HF_HUB_OFFLINE": "1"}
    versions = [tuple(v.split("=", 1)) for v in args.versions.split(",")] if args.versions \
        else [("this", sys.executable)]
    variants = [(name, shlex.split(more)) for name, _, more in
                (v.partition("=") for v in args.variants.split(";") if v.strip())] \
        if args.variants else [("", [])]
    versions = [(f"{v}{'/' if v and name else ''}{name}", python, more)
                for v, python in versions for name, more in variants] if args.variants \
        else [(v, python, []) for v, python in versions]
    header = ["run", "version", "wall s", "released s", "ratio", "peak RSS MB",
              *[f"{k} s" for k in KINDS], "UNet frame-evals (inv / feat / loop)",
              "ms per frame-eval (inv / feat / loop)", "cache MiB", "PSNR vs first version (or --against)",
              "keyframes equal"]
    print(f"{'warm (editing loop recomputed)' if args.warm else 'cold'} tf run, "
          f"random SD-2.1-base-shaped model, 128x192, batch 8, guidance 7.5, seed 1, "
          f"1 torch thread, {os.cpu_count()} cores; extra args: {' '.join(args.extra) or 'none'}\n")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    with tempfile.TemporaryDirectory(prefix="tf-wall-") as tmp:
        tmp = Path(tmp)
        for name in args.runs.split(","):
            n, inv_steps, released = RUNS[name]
            model, clip = build(tmp, n)
            first: dict = {}
            loops: dict[str, list[float]] = {}
            cpu: dict[str, list[float]] = {}
            for (version, python, more), _ in ((v, r) for r in range(args.repeat)
                                               for v in versions):
                tag = version.replace("/", "-")
                out, cache = tmp / f"out-{name}-{tag}", tmp / f"cache-{name}-{tag}"
                if args.warm:
                    cache = tmp / f"cache-{name}"
                    for kind in ("editor", "blender"):
                        shutil.rmtree(cache / kind, ignore_errors=True)
                result = tf_run([str(clip), "--model", str(model), "--prompt", "a photo of a cat",
                                 "--size", "192x128", "--steps", "50", "--inversion-steps",
                                 str(inv_steps), "--batch-size", "8", "--guidance", "7.5",
                                 "--seed", "1", "--cache-dir", str(cache), "--out", str(out), "-q",
                                 "--overwrite", *args.extra, *more], env, python=python)
                doc = json.loads((out / "run.json").read_text())
                seconds = [doc["cache"][k]["seconds"] for k in KINDS]
                stats = doc["cache"]["blender"]["stats"]
                evals = (n * inv_steps, n * 50, stats["unet_frame_evals"])
                per = [s * 1000 / e for s, e in zip((seconds[0], seconds[1], seconds[4]), evals)]
                frames = np.asarray(zarr.open_group(doc["cache"]["blender"]["path"], mode="r")
                                    ["frames"][...])
                keyframes = np.asarray(zarr.open_group(doc["cache"]["keyframes"]["path"],
                                                       mode="r")["keyframes"][...])
                if args.frames_out:
                    args.frames_out.mkdir(parents=True, exist_ok=True)
                    np.savez_compressed(args.frames_out / f"{name}-{tag}.npz", frames=frames,
                                        keyframes=keyframes)
                old = None
                if first:
                    old = first
                elif args.against and (args.against / f"{name}.npz").exists():
                    old = np.load(args.against / f"{name}.npz")
                versus = f"{psnr(frames, old['frames']):.1f}" if old is not None else ""
                same_kf = ("yes" if np.array_equal(keyframes, old["keyframes"]) else "NO") \
                    if old is not None else ""
                first = first or {"frames": frames, "keyframes": keyframes}
                print(f"| {name}: {n} frames, {inv_steps}/50 | {version} | "
                      f"{result['seconds']:.1f} | {released:.0f} | "
                      f"{result['seconds'] / released:.2f} | {result['peak_rss_mb']:.0f} | "
                      + " | ".join(f"{s:.1f}" for s in seconds)
                      + f" | {' / '.join(str(e) for e in evals)} | "
                      f"{' / '.join(f'{p:.1f}' for p in per)} | {dir_size(cache) / 2**20:.1f} | "
                      f"{versus} | {same_kf} |", flush=True)
                loops.setdefault(version, []).append(seconds[4])
                cpu.setdefault(version, []).append(result["cpu_seconds"])
            if args.repeat > 1 or args.warm:
                for what, values in (("editing loop wall s", loops), ("process CPU s", cpu)):
                    base = statistics.median(next(iter(values.values())))
                    print(f"\n{what}, median of {args.repeat} (ratio to the first): " + "; ".join(
                        f"{v} {statistics.median(t):.1f} ({statistics.median(t) / base:.2f}x)"
                        for v, t in values.items()), flush=True)


if __name__ == "__main__":
    sys.exit(main())
