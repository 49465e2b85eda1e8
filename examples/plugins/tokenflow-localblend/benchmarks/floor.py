"""What ``localblend`` keeps and what it changes, end to end on tokenflow's embedded model, against
``pnp`` on the same edit.

    python benchmarks/floor.py [--frames 8] [--steps 10] [--mask-from PREFIXES] [--threads 1]

Run from this package's folder (``tokenflow_localblend`` importable) with tokenflow installed.
The first ``frames`` frames of ``examples/clips/rolling_ball.mp4`` at the model's size, source
"a red ball on wood", edited to each target with ``pnp`` and with ``localblend`` (word ``ball``;
its defaults, or ``--mask-from``). Columns: the floor, the mean absolute difference in 0-255
levels on the pixels more than 3 pixels away from the ball, against the source and against the
source's VAE round trip (what an edit that changed nothing decodes to); the background and the
ball as the rules of ``tokenflow.world`` read them. One Markdown table.
"""

from __future__ import annotations

import argparse
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[4]
TARGETS = ("a blue ball on sand", "a blue checkered ball on sand")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--mask-from", default=None, help="localblend's mask_from (default: its default)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    from embedded import SOURCE, edit, setup  # this folder (the script's own, on sys.path)

    pm, model = setup(args.threads)
    import torch
    import torch.nn.functional as F
    import zarr

    from tokenflow import world
    from tokenflow.sizes import working_size
    from tokenflow.video import read_video, resize_frames

    clip = read_video(ROOT / "examples" / "clips" / "rolling_ball.mp4").frames[:args.frames]
    frames = resize_frames(clip, *working_size(*clip.shape[1:3], None, native=model.native_size))
    balls = np.stack([world.object_masks(f)[0] for f in frames])
    away = ~(F.max_pool2d(torch.from_numpy(balls.astype(np.float32))[:, None], 7, stride=1,
                          padding=3)[:, 0].numpy() > 0)

    def describe(edited: np.ndarray, reference: np.ndarray, source: np.ndarray) -> list[str]:
        reads = [world.read_frame(f) for f in edited]
        backgrounds = Counter(r["background"] for r in reads)
        objects = [r["objects"][0] if r["objects"] else {"colour": None, "texture": None}
                   for r in reads]
        colours = Counter(o["colour"] for o in objects)
        textures = Counter(o["texture"] for o in objects)
        n = len(edited)
        background, b_count = backgrounds.most_common(1)[0]
        colour, c_count = colours.most_common(1)[0]
        kinds = ", ".join(f"{t} {c}" for t, c in textures.most_common())
        return [f"{np.abs(edited.astype(float) - source.astype(float))[away].mean():.1f}",
                f"{np.abs(edited.astype(float) - reference)[away].mean():.1f}",
                f"{background} in {b_count}/{n}", f"{colour} in {c_count}/{n} ({kinds})"]

    print(f"{model.label}; the first {len(frames)} frames of rolling_ball.mp4 at "
          f"{frames.shape[2]}x{frames.shape[1]}, {args.steps} steps, source {SOURCE!r}\n")
    print("| target, editor | floor vs source | floor vs VAE round trip | background read | ball read |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="tf-floor-") as cache:
        reference = None
        for target in TARGETS:
            for editor in ("pnp", "localblend"):
                options = [("editor.words", "ball")] if editor == "localblend" else []
                if editor == "localblend" and args.mask_from:
                    options.append(("editor.mask_from", args.mask_from))
                results = edit(pm, model, frames, cache, args.steps, editor, target, options)
                edited = np.asarray(zarr.open_group(str(results["blender"].path), mode="r")
                                    ["frames"][...])
                if reference is None:
                    x0 = np.asarray(zarr.open_group(str(results["inversion"].path), mode="r")["x0"][...])
                    reference = model.decode_latents(torch.from_numpy(x0)).astype(float)
                label = f'"{target}", `{editor}`' + (" (word `ball`)" if options else "")
                print("| " + " | ".join([label, *describe(edited, reference, frames)]) + " |",
                      flush=True)
        print("| " + " | ".join(["the source through the VAE alone",
                                 *describe(reference.round().astype(np.uint8), reference, frames)])
              + " |")


if __name__ == "__main__":
    main()
