"""Choose the embedded model's editing defaults by measurement (issue 13, item 3).

    python benchmarks/defaults_sweep.py [--settings model,f1.0,...] [--frames 12] [--steps 50]
                                        [--edits rolling_ball:texture,...] [--cache-dir DIR]

For every setting (a named set of ``-o`` options, :data:`SETTINGS`) and every edit of the example
clips (``benchmarks/consistency.py``'s ``CLIPS``: a texture edit and a background edit per clip),
runs TokenFlow (``pnp``) and per-frame PnP (``pnp-frames``) with the same options on the embedded
model, through one stage cache, and reads every edited frame with world v2's rules:

* ``hit``: frames of the per-frame edit where every object the prompt names shows its colour and
  texture kind (the ``attribute`` scorer; texture edits) or the background is the prompt's
  (``attribute-background``; background edits);
* ``kept``: frames of the per-frame edit where every source object's mask is found again with
  IoU >= 0.8;
* ``warp``: TokenFlow's warp error (t -> t+1, source flow) over per-frame PnP's.

A setting passes when, over all edits, hit >= 90 %, kept >= 90 % and warp <= 0.5 on every texture
and background edit. Prints one row per setting and edit, then one summary row per setting.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
ROOT = Path(__file__).resolve().parents[1]

sys.path.insert(0, str(ROOT / "benchmarks"))
from consistency import CLIPS  # noqa: E402 - the same clips and edits

#: The scorer that reads whether an edit of each kind shows.
SCORER = {"texture": "attribute", "background": "attribute-background"}
_CONV = ("features.conv_layers", "editor.conv_layers")


def _conv(*layers: str) -> list[tuple[str, str]]:
    value = ",".join(layers)
    return [(key, value) for key in _CONV]


#: name -> options on top of the model's own defaults.
SETTINGS: dict[str, list[tuple[str, str]]] = {
    "model": [],
    "g3": [("editor.guidance_scale", "3")],
    "g7.5": [("editor.guidance_scale", "7.5")],
    "attn0.25": [("editor.pnp_attn_t", "0.25")],
    "attn1.0": [("editor.pnp_attn_t", "1.0")],
    "f0.5": [("editor.pnp_f_t", "0.5")],
    "f1.0": [("editor.pnp_f_t", "1.0"), ("features.conv_t", "1.0")],
    "conv-fine": _conv("up_blocks.2.resnets.0"),
    "conv-both": _conv("up_blocks.1.resnets.1", "up_blocks.2.resnets.0"),
    "conv-coarse": _conv("up_blocks.0.resnets.1"),
    "conv-fine-all-steps": _conv("up_blocks.2.resnets.0") + [
        ("editor.pnp_attn_t", "1.0"), ("editor.pnp_f_t", "1.0"), ("features.conv_t", "1.0")],
}


def kept_objects(source: np.ndarray, edited: np.ndarray) -> list[bool]:
    """Per frame: every object of the source frame is found again in the edit with IoU >= 0.8."""
    from tokenflow.embedded.world2_checks import mask_iou, object_masks

    kept = []
    for src, out in zip(source, edited):
        found = object_masks(out)
        masks = object_masks(src)
        kept.append(bool(masks) and all(
            max((mask_iou(f, m) for f in found), default=0.0) >= 0.8 for m in masks))
    return kept


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--settings", default=",".join(SETTINGS))
    parser.add_argument("--edits", default=None, help="CLIP:KIND,... (default: every edit)")
    parser.add_argument("--frames", type=int, default=12, help="first N frames of each clip")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--cache-dir", type=Path, default=None)
    parser.add_argument("--model", default=None)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import torch

    from tokenflow.api import prepare
    from tokenflow.eval.compare import evaluate_edit, parse_method, run_methods
    from tokenflow.eval.metrics import video_flows
    from tokenflow.eval.scoring import make_scorers, score_all
    from tokenflow.manager import make_plugin_manager
    from tokenflow.models import load_model

    torch.set_num_threads(args.threads)
    model = load_model(args.model, device="cpu")
    pm = make_plugin_manager()
    scorers = {kind: make_scorers(pm, [name], {}) for kind, name in SCORER.items()}
    cache = args.cache_dir or Path(tempfile.mkdtemp(prefix="tf-sweep-"))
    chosen = None if args.edits is None else {tuple(e.split(":")) for e in args.edits.split(",")}
    methods = [parse_method("pnp"), parse_method("pnp-frames")]
    print(f"{model.label}; {args.frames} frames a clip, {args.steps} steps; cache {cache}\n")
    print("| setting | clip | edit | hit (per-frame) | kept (per-frame) | hit (TokenFlow) | "
          "warp TokenFlow / per-frame |")
    print("|---|---|---|---|---|---|---|")
    summary: dict[str, dict[str, list]] = {}
    sources = {}
    for setting in args.settings.split(","):
        options = SETTINGS[setting]
        for clip, (caption, edits) in CLIPS.items():
            path = ROOT / "examples" / "clips" / f"{clip}.mp4"
            if not path.exists():
                sys.exit(f"{path} is missing: python examples/make_clips.py")
            if clip not in sources:
                source = prepare(path, model=model, frames=args.frames)
                pairs = [(t, t + 1) for t in range(len(source.working) - 1)]
                sources[clip] = (source, video_flows(source.working, pairs, method="dis"))
            source, flows = sources[clip]
            for kind, prompt in edits.items():
                if chosen is not None and (clip, kind) not in chosen:
                    continue
                tokenflow, per_frame = run_methods(
                    source, methods, options=options, prompt=prompt, inversion_prompt=caption,
                    steps=args.steps, batch_size=8, cache_dir=cache, pm=pm)
                warp = [evaluate_edit(source.working, r.frames, source_flows=flows,
                                      long_range=1)["aggregate"]["warp_error"]
                        for r in (tokenflow, per_frame)]
                hit, hit_tf = (np.asarray(score_all(scorers[kind], r.frames, prompt, source.working)
                                          [0][SCORER[kind]]) >= 1 for r in (per_frame, tokenflow))
                kept = kept_objects(source.working, per_frame.frames)
                ratio = warp[0] / warp[1] if warp[1] else float("nan")
                row = summary.setdefault(setting, {"hit": [], "kept": [], "ratio": []})
                row["hit"] += list(hit)
                row["kept"] += kept
                row["ratio"].append(ratio)
                print(f"| {setting} | {clip} | {kind} | {100 * np.mean(hit):.0f} % | "
                      f"{100 * np.mean(kept):.0f} % | {100 * np.mean(hit_tf):.0f} % | {ratio:.2f} |",
                      flush=True)
    print("\n| setting | hit (per-frame) | kept (per-frame) | worst warp ratio | passes |")
    print("|---|---|---|---|---|")
    for setting, row in summary.items():
        hit, kept, worst = np.mean(row["hit"]), np.mean(row["kept"]), max(row["ratio"])
        ok = hit >= 0.9 and kept >= 0.9 and worst <= 0.5
        print(f"| {setting} | {100 * hit:.0f} % | {100 * kept:.0f} % | {worst:.2f} | "
              f"{'yes' if ok else 'no'} |")


if __name__ == "__main__":
    main()
