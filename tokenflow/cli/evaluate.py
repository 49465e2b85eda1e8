"""``tf eval``: measure an edit against its source (temporal consistency, structure, fidelity)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import click

from tokenflow.cli.app import cli
from tokenflow.cli.common import manager_and_registry, say, setup_threads
from tokenflow.stages import StageError


def scorer_instances(pm, names, clip):
    from tokenflow.eval.scoring import make_scorers

    try:
        return make_scorers(pm, list(names) or None, {"clip": clip} if clip else {})
    except (StageError, ValueError) as exc:
        raise click.UsageError(str(exc)) from None


def print_metrics(doc: dict, quiet: bool) -> None:
    from tokenflow.eval.compare import TABLE_METRICS
    from tokenflow.eval.metrics import below_source

    agg = doc["aggregate"]
    low = below_source(agg)
    for name, header, lower in TABLE_METRICS:
        if name in agg:
            scale = 1e3 if "warp" in name else 1.0
            value = agg[name]
            shown = "n/a" if value is None or math.isnan(value) else f"{value * scale:.4g}"
            caveat = (f"; below the source's own {low[name] * scale:.4g}: lost detail can cause "
                      "that, see the note" if name in low else "")
            click.echo(f"{header:<26} {shown:>10}   ({'lower' if lower else 'higher'} is "
                       f"better{caveat})")
    for name in sorted(k for k in agg if k.startswith("score_")):
        label, value = name.removeprefix("score_"), agg[name]
        shown = "n/a" if value is None else f"{value:.4g}"
        click.echo(f"{'score ' + label:<26} {shown:>10}   (higher is better)")
    extra = sorted(k for k in agg if k not in {m for m, _, _ in TABLE_METRICS}
                   and not k.startswith("score_"))
    for name in extra:
        value = agg[name]
        shown = f"{value:.4g}" if isinstance(value, float) else "n/a"
        click.echo(f"{name:<26} {shown:>10}")
    for note in doc.get("notes", []):
        say(quiet, f"note: {note}")


def require_plotting() -> None:
    from tokenflow.eval.figures import require_matplotlib

    try:
        require_matplotlib()
    except RuntimeError as exc:
        raise click.ClickException(str(exc)) from None


@cli.command("eval")
@click.argument("source", type=click.Path())
@click.argument("edited", type=click.Path())
@click.option("--prompt", default=None,
              help="The edit's prompt, for the fidelity scorers (default: EDITED's run.json).")
@click.option("--json", "as_json", is_flag=True, help="Print the whole report as JSON.")
@click.option("--plot", default=None, type=click.Path(), help="Write per-frame metrics to this PNG.")
@click.option("--flow", "flow_method", default="dis", show_default=True,
              type=click.Choice(["dis", "farneback"]), help="Optical flow estimator (OpenCV).")
@click.option("--true-flow", default=None, type=click.Path(),
              help="The SOURCE's known flow (examples/motion_clips.py) instead of estimating it.")
@click.option("--long-range", default=4, show_default=True, type=click.IntRange(1),
              help="k of the long-range warp error (frame t to t+k).")
@click.option("--stride", default=None, type=click.IntRange(1),
              help="EDITED holds every K-th SOURCE frame (default: its run.json's, else 1).")
@click.option("--start", default=0, show_default=True, type=click.IntRange(0),
              help="The SOURCE frame EDITED's first frame is.")
@click.option("--scorer", "scorer_names", multiple=True,
              help="Fidelity scorers to use (default: every installed one that can run).")
@click.option("--clip", default=None, type=click.Path(), help="Local CLIP weights for the clip scorer.")
@click.option("--quiet", "-q", is_flag=True, help="No notes.")
def eval_(source, edited, prompt, as_json, plot, flow_method, true_flow, long_range, stride, start,
          scorer_names, clip, quiet):
    """Measure an edit against its source: temporal consistency, structure, fidelity.

    SOURCE and EDITED are videos or frame folders; EDITED may also be a `tf run` output
    directory (its lossless frames/, and the prompt and stride its run.json records). The two are
    aligned as follows: EDITED's frame i is SOURCE's frame START + i * STRIDE, and SOURCE is
    resized to EDITED's size; the alignment used is printed.
    """
    from tokenflow.eval.compare import evaluate_edit, load_edit
    from tokenflow.api import quiet_libraries
    from tokenflow.eval.metrics import align, aligned_true_flows
    from tokenflow.video import VideoError, read_video

    setup_threads()
    quiet_libraries()
    if plot:
        require_plotting()
    try:
        edit = load_edit(edited)
        src = read_video(source).frames
        aligned, frames, how = align(src, edit.frames, stride=stride or edit.stride, start=start)
    except (VideoError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    prompt = prompt if prompt is not None else edit.prompt
    flows = None
    if true_flow:
        try:
            flows = aligned_true_flows(true_flow, src.shape[1:3], frames.shape[1:3],
                                       stride or edit.stride, start, len(frames), long_range)
        except ValueError as exc:
            raise click.ClickException(str(exc)) from None
    pm, _ = manager_and_registry()
    scorers = scorer_instances(pm, scorer_names, clip)
    doc = evaluate_edit(aligned, frames, prompt=prompt, scorers=scorers, flow_method=flow_method,
                        long_range=long_range, source_flows=flows)
    doc["alignment"] = how
    doc["flow"] = "true (" + str(true_flow) + ")" if true_flow else flow_method
    doc["prompt"] = prompt
    if plot:
        from tokenflow.eval.compare import PLOT_METRICS
        from tokenflow.eval.figures import plot_metrics

        plot_metrics({"edit": doc["per_frame"]}, PLOT_METRICS + [k for k in doc["per_frame"]
                                                                if k.startswith("score_")], plot,
                     title=f"{Path(edited).name} vs {Path(source).name}")
    if as_json:
        click.echo(json.dumps(doc, indent=2, default=float))
        return
    say(quiet, f"alignment: {how}; flow: {doc['flow']}")
    print_metrics(doc, quiet)

