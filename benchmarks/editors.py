"""The editors side by side on one example clip and prompt, with the embedded model.

    python benchmarks/editors.py [--clip examples/clips/rolling_ball.mp4]
                                 [--prompt "a blue ball on sand"] [--frames 16]
                                 [--sheet docs/figures/editors.png]

Runs every editor on the same clip, prompt and shared stage cache (inversion, features,
keyframes and correspondences are computed once), then prints one table row per editor:

* mean |edit - pnp| and mean |edit - source| over all pixels (0-255 scale);
* colour: fraction of frames whose object has the colour the prompt names (tokenflow.world's
  rules);
* IoU: median object-mask IoU against the source frame (the layout is kept);
* background: fraction of frames whose background is still the source's kind;
* flicker: mean |frame t+1 - frame t| of the edit minus that of the source (0 = as steady as
  the source);
* seconds for the editing loop (the shared upstream stages are not counted; "cached" when the
  cache already held the edit).

It also writes a contact sheet PNG: one row per method (the source first), evenly spaced frames.
The ``controlnet`` rows use the model's suggested ControlNet (the embedded model ships a canny
ControlNet trained on its world) and the ``localblend`` row the example third-party plugin in
examples/plugins/tokenflow-localblend (registered from the source tree if it is not installed).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
ROOT = Path(__file__).resolve().parents[1]

#: (label, editor, -o options)
METHODS = [
    ("pnp", "pnp", []),
    ("pnp-frames", "pnp-frames", []),
    ("sdedit", "sdedit", []),
    ("controlnet", "controlnet", []),
    ("controlnet_sdedit_s1", "controlnet", [("editor.mode", "sdedit"), ("editor.strength", "1.0")]),
    ("sdedit_s1", "sdedit", [("editor.strength", "1.0")]),
    ("localblend", "localblend", [("editor.words", "ball")]),
]


def _localblend(pm) -> bool:
    """Make the example plugin available: installed, or registered from the source tree."""
    from tokenflow.registry import build_registry

    if "localblend" in build_registry(pm).stages["editor"]:
        return True
    src = ROOT / "examples" / "plugins" / "tokenflow-localblend"
    for candidate in (src / "src", src):
        if (candidate / "tokenflow_localblend" / "editor.py").is_file():
            sys.path.insert(0, str(candidate))
            import tokenflow_localblend.editor as module

            pm.register(module, name="tokenflow_localblend.editor")
            return True
    return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clip", type=Path,
                        default=ROOT / "examples" / "clips" / "rolling_ball.mp4")
    parser.add_argument("--source-prompt", default="a red ball on wood")
    parser.add_argument("--prompt", default="a blue ball on sand")
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--cache-dir", type=Path, default=None)
    parser.add_argument("--sheet", type=Path, default=ROOT / "docs" / "figures" / "editors.png")
    args = parser.parse_args()

    import torch
    import zarr

    from tokenflow.manager import make_plugin_manager
    from tokenflow.models import load_model
    from tokenflow.plan import build_job
    from tokenflow.stages import RunConfig
    from tokenflow.video import read_video, resize_frames
    from tokenflow import world  # world v2's rules, the example clips' world

    torch.set_num_threads(2)
    model = load_model(None, device="cpu")
    clip = read_video(args.clip, frames=args.frames)
    size = model.native_size
    frames = resize_frames(clip.frames, size, size)
    target = next(c for c in world.COLOURS if c in args.prompt.split())
    pm = make_plugin_manager()
    have_localblend = _localblend(pm)
    cache = args.cache_dir or Path(tempfile.mkdtemp(prefix="tf-editors-"))
    params = {"inversion": {"prompt": args.source_prompt}, "editor": {"prompt": args.prompt}}
    config = RunConfig(steps=args.steps, batch_size=8)

    # the upstream stages once (any editor would do)
    build_job(pm, model, frames, config, cache=cache, params=params, until="correspondence").run()
    src_bg = [world.background_kind(f) for f in frames]
    src_masks = [world.object_mask(f) for f in frames]
    src_flicker = np.abs(np.diff(frames.astype(np.float64), axis=0)).mean()

    outputs: dict[str, np.ndarray] = {}
    rows = []
    print(f"clip {args.clip.name}: {len(frames)} frames at {size}x{size}; "
          f"{args.source_prompt!r} -> {args.prompt!r}; {args.steps} steps; cache {cache}")
    header = ("| method | mean abs diff vs pnp | vs source | colour | IoU | background kept "
              "| flicker | seconds |")
    print(header)
    print("|" + "---|" * 8)
    for label, editor, options in METHODS:
        if editor == "localblend" and not have_localblend:
            print(f"| {label} | (not available: examples/plugins/tokenflow-localblend missing) |")
            continue
        job = build_job(pm, model, frames, config, cache=cache, choices={"editor": editor},
                        params=params, options=options)
        start = time.perf_counter()
        results = job.run()
        seconds = time.perf_counter() - start
        timing = "cached" if results["blender"].cached else f"{seconds:.1f}"
        out = np.asarray(zarr.open_group(str(results["blender"].path), mode="r")["frames"][...])
        outputs[label] = out
        ref = outputs.get("pnp", out).astype(np.float64)
        diff_pnp = np.abs(out.astype(np.float64) - ref).mean()
        diff_src = np.abs(out.astype(np.float64) - frames.astype(np.float64)).mean()
        colour = np.mean([world.object_colour(f) == target for f in out])
        iou = np.median([world.mask_iou(m, world.object_mask(f)) for m, f in zip(src_masks, out)])
        kept = np.mean([world.background_kind(f) == b for f, b in zip(out, src_bg)])
        flicker = np.abs(np.diff(out.astype(np.float64), axis=0)).mean() - src_flicker
        print(f"| {label} | {diff_pnp:.2f} | {diff_src:.2f} | {colour:.0%} | {iou:.3f} | "
              f"{kept:.0%} | {flicker:+.2f} | {timing} |")
        rows.append((label, out))
    from tokenflow.frame_figures import contact_sheet
    from tokenflow.video import write_png

    write_png(args.sheet, contact_sheet([("source", frames), *rows], 6))
    print(f"contact sheet: {args.sheet}")


if __name__ == "__main__":
    main()
