"""TokenFlow vs per-frame editing on every example clip: consistency, structure, fidelity.

    python benchmarks/consistency.py [--clips rolling_ball,box_pan,ball_zoom,crossing]
                                     [--edits texture,background] [--steps 50]
                                     [--methods "pnp;pnp-frames;sdedit"] [--cache-dir DIR]
                                     [--dtype bfloat16] [--frames-out DIR] [--against DIR]

For each example clip (examples/make_clips.py; its source caption) and each of its edits (a
texture edit and a background edit, below), runs each method on the embedded model through one
shared stage cache (at the model's working size, the clip's aspect kept, as ``tf run`` does) and
measures it against the source with tokenflow.eval.metrics (optical flow of the SOURCE, OpenCV
DIS): warp error t -> t+1 and t -> t+4 over non-occluded pixels, flicker ratio (edit's
frame-to-frame change over the source's), structure (flow endpoint error, edge F1) and fidelity
(the `attribute` and `attribute-background` scorers: the prompt's objects with their colours
and textures, and its background, by tokenflow.world's rules). Prints one Markdown table per
clip and edit and the means over them, and per clip and edit the PSNR of every method's frames
against the first method's (how far an option moves the output). ``--frames-out DIR`` keeps
every method's frames (``DIR/<clip>-<edit>/<method>.npz``); ``--against DIR`` adds the PSNR
against the first method's frames kept there by an earlier run (e.g. float32 against bfloat16).
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

#: clip -> (source caption: Scene.caption() of examples/make_clips.py, {edit: target prompt}).
#: A texture edit changes an object's texture (and colour), a background edit the background
#: alone. Prompts to revise once the model that knows world v2 is measured.
CLIPS: dict[str, tuple[str, dict[str, str]]] = {
    "rolling_ball": ("a red ball on wood", {
        "texture": "a blue striped ball on wood",
        "background": "a red ball on tiles"}),
    "box_pan": ("a blue checkered box on grass", {
        "texture": "a red striped box on grass",
        "background": "a blue checkered box on sand"}),
    "ball_zoom": ("a purple ringed ball on tiles", {
        "texture": "a yellow checkered ball on tiles",
        "background": "a purple ringed ball on wood"}),
    "crossing": ("a yellow striped triangle and a green dotted ball on sand", {
        "texture": "a yellow striped triangle and a red checkered ball on sand",
        "background": "a yellow striped triangle and a green dotted ball on grass"}),
}
EDITS = ("texture", "background")


def _psnr_line(clip: str, results, frames_out: Path | None, against: Path | None) -> str:
    """PSNR (dB) of every method's frames against the first method's (and ``against``'s)."""

    def psnr(a: np.ndarray, b: np.ndarray) -> float:  # over the whole video
        mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
        return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)

    def label(r) -> str:
        return r.method.label.replace(" ", "_").replace("/", "-")

    if frames_out is not None:
        (frames_out / clip).mkdir(parents=True, exist_ok=True)
        for r in results:
            np.savez_compressed(frames_out / clip / f"{label(r)}.npz", frames=r.frames)
    first = results[0]
    cells = [f"{r.method.label}: {psnr(first.frames, r.frames):.2f}" for r in results[1:]]
    if against is not None:
        files = sorted((against / clip).glob("*.npz"))
        if files:
            old = np.load(files[0])["frames"]
            cells += [f"{r.method.label} against {files[0].stem} of {against}: "
                      f"{psnr(old, r.frames):.2f}" for r in results]
    return f"PSNR dB against `{first.method.label}`: " + ("; ".join(cells) or "-") + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", default=",".join(CLIPS))
    parser.add_argument("--edits", default=",".join(EDITS))
    parser.add_argument("--methods", default="pnp;pnp-frames;sdedit")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--long-range", type=int, default=4)
    parser.add_argument("--cache-dir", type=Path, default=None)
    parser.add_argument("--dtype", default=None, help="the model's dtype (default float32)")
    parser.add_argument("--frames-out", type=Path, default=None)
    parser.add_argument("--against", type=Path, default=None)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    clips, edits = args.clips.split(","), args.edits.split(",")
    for given, known, what in ((clips, CLIPS, "clip"), (edits, EDITS, "edit")):
        unknown = [g for g in given if g not in known]
        if unknown:
            parser.error(f"unknown {what} {', '.join(unknown)}; known: {', '.join(known)}")

    import torch

    from tokenflow.api import prepare
    from tokenflow.eval.compare import (
        TABLE_METRICS,
        evaluate_edit,
        markdown,
        parse_method,
        run_methods,
        table_rows,
    )
    from tokenflow.eval.metrics import video_flows
    from tokenflow.eval.scoring import make_scorers
    from tokenflow.manager import make_plugin_manager
    from tokenflow.models import load_model

    torch.set_num_threads(args.threads)
    model = load_model(None, device="cpu", dtype=args.dtype)
    pm = make_plugin_manager()
    scorers = make_scorers(pm, ["attribute", "attribute-background"], {})
    methods = [parse_method(m) for m in args.methods.split(";") if m.strip()]
    cache = args.cache_dir or Path(tempfile.mkdtemp(prefix="tf-consistency-"))
    summary: dict[str, dict[str, list[float]]] = {}
    print(f"embedded model ({model.dtype}), short side {model.native_size}, {args.steps} steps, "
          f"batch 8, cache {cache}; flow: OpenCV DIS on the source; k = {args.long_range}\n")
    for name in clips:
        caption, prompts = CLIPS[name]
        path = ROOT / "examples" / "clips" / f"{name}.mp4"
        if not path.exists():
            sys.exit(f"{path} is missing: python examples/make_clips.py")
        source = prepare(path, model=model)
        frames = source.working  # the padding the UNet needs cropped off, as in the edits
        pairs = [(t, t + k) for k in sorted({1, args.long_range})
                 for t in range(len(frames) - k)]
        flows = video_flows(frames, pairs, method="dis")
        source_doc = evaluate_edit(frames, frames, long_range=args.long_range, source_flows=flows)
        for edit in edits:
            prompt = prompts[edit]
            results = run_methods(source, methods, options=[], prompt=prompt,
                                  inversion_prompt=caption, steps=args.steps, batch_size=8,
                                  cache_dir=cache, pm=pm)
            for r in results:
                r.metrics = evaluate_edit(frames, r.frames, prompt=prompt, scorers=scorers,
                                          long_range=args.long_range, source_flows=flows)
                for metric, value in r.metrics["aggregate"].items():
                    summary.setdefault(r.method.label, {}).setdefault(metric, []).append(value)
            header, rows = table_rows(source_doc, results)
            height, width = frames.shape[1:3]
            print(f"### {name}, {edit} edit ({len(frames)} frames, {width}x{height}): "
                  f"{caption!r} -> {prompt!r}\n")
            print(markdown(header, rows))
            print(_psnr_line(f"{name}-{edit}", results, args.frames_out, args.against))
    print("### mean over the clips and edits\n")
    shown = [m for m, _, _ in TABLE_METRICS] + ["score_attribute", "score_attribute-background"]
    print("| method | " + " | ".join(shown) + " |")
    print("|" + "---|" * (len(shown) + 1))
    for label, values in summary.items():
        cells = []
        for metric in shown:
            v = float(np.nanmean(values.get(metric, [np.nan])))
            cells.append(f"{v * (1e3 if 'warp' in metric else 1):.3g}")
        print(f"| {label} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
