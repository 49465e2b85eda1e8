"""Feature-store bytes and what its encoding costs: the default int8 store against float16 (the
encoding before issue 11) and other settings, on the same runs.

    python benchmarks/disk.py [--settings random,embedded] [--variants "float16;int8;..."]

Settings (each a cold `tf run` per variant, one torch thread, sharing one cache so inversion
and keyframes are computed once; the first variant is the reference):

* ``random``: issue 11's random-weight SD-2.1-base-shaped model (see benchmarks/wall_time.py),
  a synthetic 16-frame 128x192 clip, 50 inversion + 50 editing steps, batch 8;
* ``embedded``: the embedded default model on examples/clips/rolling_ball.mp4 (16 frames) and
  box_pan.mp4 (24 frames, 16:9), at its working size, its defaults.

A variant is a ``;``-separated list entry of ``-o features.NAME=VALUE`` pairs joined by spaces
(``float16`` and ``int8`` are shorthands for ``dtype=...``). Columns: the feature store's bytes
and their ratio to the reference's, the share of the correspondence indices (every timestep,
frame, layer, reference and token) that differ from the reference run's, the PSNR of the
edited frames against the reference run's, and the feature and correspondence stages' seconds.
Prints one Markdown table.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import zarr
from measure import dir_size, tf_run  # benchmarks/measure.py (the script directory is on sys.path)
from wall_time import build, psnr

ROOT = Path(__file__).resolve().parent.parent
SHORT = {"float16": "dtype=float16", "float32": "dtype=float32", "int8": "dtype=int8"}


def options(variant: str) -> list[str]:
    out: list[str] = []
    for item in variant.split():
        name, value = SHORT.get(item, item).split("=", 1)
        out += ["-o", f"features.{name}", value]
    return out


def indices(path: str) -> np.ndarray:
    group = zarr.open_group(path, mode="r")
    parts = [np.asarray(group[name]["index"][...]).ravel() for name in sorted(group.group_keys())
             if "index" in group[name]]
    return np.concatenate(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", default="random,embedded")
    parser.add_argument("--variants", default="float16;int8;int8 levels=32;int8 timestep_chunk=1")
    args = parser.parse_args()
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "1",
           "HF_HUB_OFFLINE": "1"}
    variants = [v.strip() for v in args.variants.split(";") if v.strip()]
    header = ["setting", "features", "feature store MiB", "ratio", "correspondences changed",
              "edit PSNR vs first (dB)", "features s", "correspondence s", "int8 clipped"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    with tempfile.TemporaryDirectory(prefix="tf-disk-") as tmp:
        tmp = Path(tmp)
        runs = []
        for setting in args.settings.split(","):
            if setting == "random":
                model, clip = build(tmp, 16)
                runs.append(("random SD-2.1-shaped, 16 frames 128x192, 50/50",
                             [str(clip), "--model", str(model), "--size", "192x128",
                              "--steps", "50", "--inversion-steps", "50", "--batch-size", "8",
                              "--prompt", "a photo of a cat"]))
            elif setting == "embedded":
                for name, prompt in (("rolling_ball", "a blue striped ball on wood"),
                                     ("box_pan", "a red kite in a blue sky")):
                    runs.append((f"embedded, {name}.mp4",
                                 [str(ROOT / "examples" / "clips" / f"{name}.mp4"),
                                  "--prompt", prompt]))
            else:
                sys.exit(f"unknown setting {setting!r}")
        for label, base in runs:
            cache = tmp / f"cache-{abs(hash(label))}"
            first: dict = {}
            for variant in variants:
                out = tmp / f"out-{abs(hash((label, variant)))}"
                tf_run([*base, "--seed", "1", "--cache-dir", str(cache), "--out", str(out), "-q",
                        *options(variant)], env)
                doc = json.loads((out / "run.json").read_text())
                feats = doc["cache"]["features"]
                size = dir_size(Path(feats["path"]))
                index = indices(doc["cache"]["correspondence"]["path"])
                frames = np.asarray(zarr.open_group(doc["cache"]["blender"]["path"], mode="r")
                                    ["frames"][...])
                first = first or {"size": size, "index": index, "frames": frames}
                changed = float(np.mean(index != first["index"]))
                clipped = feats.get("stats", {}).get("int8_clipped")
                print(f"| {label} | {variant} | {size / 2**20:.1f} | "
                      f"{size / first['size']:.3f} | {changed * 100:.2f} % | "
                      f"{psnr(frames, first['frames']):.1f} | {feats['seconds']:.1f} | "
                      f"{doc['cache']['correspondence']['seconds']:.1f} | "
                      f"{'' if clipped is None else clipped} |", flush=True)


if __name__ == "__main__":
    sys.exit(main())
