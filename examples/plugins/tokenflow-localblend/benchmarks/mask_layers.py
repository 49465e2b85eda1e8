"""Which cross-attention layers of a model localise a word: ``localblend``'s mask read from one
layer (or a group) at a time, against the object's latent cells.

    python benchmarks/mask_layers.py [--frames 6] [--steps 10] [--size 96] [--threads 1]

Run from this package's folder (``tokenflow_localblend`` importable) with tokenflow installed.
On tokenflow's embedded model, a clip of its world (a red ball rolling on wood, ``size`` pixels
square) is edited to "a blue ball on sand" with ``words=ball``, ``threshold 0.5`` and ``dilate
0``, once per entry of ``mask_from``: each cross-attention layer of the UNet alone, each decoder
level, the two finest decoder levels with cross-attention, the default, and all layers. The
editor keeps every step's mask in its cache entry; the table gives its IoU with the ball's latent
cells (a cell is the ball's when at least half its pixels are), over every step and frame, at the
first (noisiest) step and at the last. Upstream
stages are computed once and shared.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np

TARGET = "a blue ball on sand"


def rolling_ball(n: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Frames of a red ball moving right on wood, and its masks."""
    from tokenflow import world

    scene = world.Scene("wood", (world.Thing("ball", "red", radius=0.24),), seed=11)
    drawn = [world.render(scene.with_thing(0, x=-0.22 + 0.44 * i / max(1, n - 1)), size, size)
             for i in range(n)]
    return np.stack([image for image, _ in drawn]), np.stack([masks[0] for _, masks in drawn])


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=6)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    from embedded import edit, setup  # this folder (the script's own, on sys.path)

    pm, model = setup(args.threads)
    import tokenflow_localblend.editor as plugin
    import zarr

    frames, balls = rolling_ball(args.frames, args.size)
    f = model.vae_scale_factor
    g = args.size // f
    cells = balls.reshape(len(balls), g, f, g, f).mean(axis=(2, 4)) >= 0.5

    layers = [name.removesuffix("attn2.processor")
              for name in model.unet.attn_processors if name.endswith("attn2.processor")]
    levels = sorted({".".join(name.split(".")[:2]) + "." for name in layers
                     if name.startswith("up_blocks.")})
    default = ",".join(plugin.MASK_FROM)
    finest = ",".join(levels[-2:])  # the two finest decoder levels with cross-attention
    entries = ([(name, name) for name in layers] + [(f"{level} (level)", level) for level in levels]
               + [(f"{finest} (two finest levels)", finest), (f"default ({default})", default),
                  ("all layers", ",".join(layers))])

    print(f"{model.label}; {args.frames} frames {args.size}x{args.size}, {args.steps} steps; "
          f"the ball covers {cells.mean():.0%} of the latent cells\n")
    print("| mask_from | IoU, every step | first step | last step | seconds |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="tf-mask-layers-") as cache:
        for label, prefixes in entries:
            start = time.perf_counter()
            results = edit(pm, model, frames, cache, args.steps, "localblend", TARGET,
                           [("editor.words", "ball"), ("editor.threshold", "0.5"),
                            ("editor.dilate", "0"), ("editor.mask_from", prefixes)])
            masks = np.asarray(zarr.open_group(str(results["editor"].path), mode="r")["mask"][...]) > 0.5
            per_step = [np.mean([iou(m, c) for m, c in zip(step, cells, strict=True)])
                        for step in masks]
            print(f"| {label} | {np.mean(per_step):.2f} | {per_step[0]:.2f} | {per_step[-1]:.2f} | "
                  f"{time.perf_counter() - start:.0f} |", flush=True)


if __name__ == "__main__":
    main()
