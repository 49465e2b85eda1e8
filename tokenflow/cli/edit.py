"""``tf run``, ``tf invert`` and ``tf compare``: arguments and printing around
:func:`tokenflow.api.edit` and :func:`tokenflow.api.invert`."""

from __future__ import annotations

import json
from pathlib import Path

import click

from tokenflow import api
from tokenflow.api import EditError
from tokenflow.cli.app import cli
from tokenflow.cli.common import (
    common_input_options,
    fail,
    logger,
    manager_and_registry,
    output_size_option,
    parse_choices,
    say,
    setup_threads,
)
from tokenflow.cli.evaluate import require_plotting, scorer_instances


@cli.command()
@click.argument("video", type=click.Path())
@click.option("--prompt", required=True, help="The target prompt.")
@click.option("--editor", default=None, help="Editor stage (see tf stages).  [default: pnp]")
@click.option("--negative-prompt", default=None, help="Unconditional branch text.")
@click.option("--guidance", default=None, type=float, help="Classifier-free guidance scale (7.5).")
@click.option("--seed", default=None, type=int, help="Keyframe draws.  [default: 1]")
@click.option("--out", "out_dir", default=None, help="Output directory (default out/<video name>).")
@click.option("--overwrite", is_flag=True, help="Replace an existing output of a different run.")
@click.option("--output-size", default="source", show_default=True, callback=output_size_option,
              metavar="source|working|S|WxH",
              help="Size of edited.mp4, frames/, source.mp4 and side_by_side.mp4: the source's, "
                   "the working size (as edited), short side S, or WxH.")
@click.option("--dry-run", is_flag=True,
              help="Print the plan (stages, parameters and where they come from, cached or to "
                   "compute, bytes, UNet frame-evaluations) and exit: no weights load, nothing "
                   "is computed or written.")
@common_input_options
def run(video, prompt, editor, negative_prompt, guidance, seed, out_dir, overwrite, output_size,
        dry_run, model, revision, device, dtype, inversion_prompt, steps, inversion_steps,
        batch_size, n_frames, stride, size, unet_batch, cache_dir, cache_budget, options,
        stage_choices, quiet):
    """Edit VIDEO to follow --prompt with TokenFlow (inversion, keyframe edit, propagation)."""
    from tokenflow.outputs import output_dir_for

    setup_threads()
    choices = parse_choices(stage_choices)
    pm, registry = manager_and_registry()  # warns about broken plugins, even with --quiet
    try:
        result = api.edit(
            video, prompt=prompt, editor=editor, model=model, revision=revision, device=device,
            dtype=dtype, out=Path(out_dir) if out_dir else output_dir_for(video),
            overwrite=overwrite, cache_dir=cache_dir, options=list(options), stages=choices,
            inversion_prompt=inversion_prompt, negative_prompt=negative_prompt,
            guidance=guidance, seed=seed, steps=steps, inversion_steps=inversion_steps,
            batch_size=batch_size, frames=n_frames, stride=stride, size=size, pm=pm,
            registry=registry, unet_batch=unet_batch, cache_budget=cache_budget,
            log=logger(quiet), quiet=quiet, output_size=output_size, dry_run=dry_run)
    except EditError as exc:
        raise fail(exc) from None
    if dry_run:
        for line in result.plan.lines():
            click.echo(line)
        say(quiet, f"dry run ({result.seconds:.1f} s): no weights loaded, nothing computed or "
                   "written")
        return
    stats = result.results["blender"].stats
    if stats:
        per_step = stats["unet_frame_evals"] / max(1, stats["steps"])
        say(quiet, f"UNet frame-evaluations per editing step: {per_step:g} "
                   f"(K={stats['keyframes_per_step']}, N={stats['frames']})")
    click.echo(str(result.out))


@cli.command()
@click.argument("video", type=click.Path())
@click.option("--check/--no-check", default=True, show_default=True,
              help="Regenerate from the inverted noise and report PSNR per frame.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@common_input_options
def invert(video, check, as_json, model, revision, device, dtype, inversion_prompt, steps,
           inversion_steps, batch_size, n_frames, stride, size, unet_batch, cache_dir, cache_budget,
           options, stage_choices, quiet):
    """Run inversion and the feature store only; report reconstruction PSNR."""
    setup_threads()
    choices = parse_choices(stage_choices)
    pm, registry = manager_and_registry()
    try:
        result = api.invert(
            video, model=model, revision=revision, device=device, dtype=dtype, check=check,
            cache_dir=cache_dir, options=list(options), stages=choices,
            inversion_prompt=inversion_prompt, steps=steps, inversion_steps=inversion_steps,
            batch_size=batch_size, frames=n_frames, stride=stride, size=size, pm=pm,
            registry=registry, unet_batch=unet_batch, cache_budget=cache_budget,
            log=logger(quiet), quiet=quiet)
    except EditError as exc:
        raise fail(exc) from None
    report = {"keys": result.keys, "paths": result.paths}
    if check:
        report["psnr"] = result.psnr
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    for kind, path in report["paths"].items():
        click.echo(f"{kind:<10} {path}")
    if check:
        psnr = report["psnr"]
        click.echo("reconstruction PSNR (dB) per frame: "
                   + " ".join(f"{p:.1f}" for p in psnr["per_frame"]))
        click.echo(f"mean {psnr['mean']:.2f} dB, min {psnr['min']:.2f} dB "
                   f"(VAE alone, encode+decode: mean {psnr['vae_mean']:.2f} dB)")
@cli.command()
@click.argument("video", type=click.Path())
@click.option("--prompt", required=True, help="The target prompt.")
@click.option("--editor", "methods", multiple=True, metavar='"NAME [PARAM=VALUE ...]"',
              help="An editor to compare, with settings of its own; repeat it "
                   "(default: pnp and pnp-frames).")
@click.option("--negative-prompt", default=None, help="Unconditional branch text.")
@click.option("--guidance", default=None, type=float, help="Classifier-free guidance scale.")
@click.option("--seed", default=1, show_default=True, type=int, help="Keyframe draws.")
@click.option("--out", "out_dir", default=None, help="Output directory (default out/<video>-compare).")
@click.option("--overwrite", is_flag=True, help="Replace an existing output directory.")
@click.option("--scorer", "scorer_names", multiple=True,
              help="Fidelity scorers (default: every installed one that can run).")
@click.option("--clip", default=None, type=click.Path(), help="Local CLIP weights for the clip scorer.")
@click.option("--flow", "flow_method", default="dis", show_default=True,
              type=click.Choice(["dis", "farneback"]), help="Optical flow estimator (OpenCV).")
@click.option("--long-range", default=4, show_default=True, type=click.IntRange(1),
              help="k of the long-range warp error.")
@click.option("--output-size", default="working", show_default=True, callback=output_size_option,
              help="Size of the frames in the videos and sheets: working (as edited), source, a "
                   "short side S, or WxH. The metrics are measured at the working size.")
@common_input_options
def compare(video, prompt, methods, negative_prompt, guidance, seed, out_dir, overwrite,
            scorer_names, clip, flow_method, long_range, output_size, model, revision, device, dtype,
            inversion_prompt, steps, inversion_steps, batch_size, n_frames, stride, size,
            unet_batch, cache_dir, cache_budget, options, stage_choices, quiet):
    """Run several editors or settings on VIDEO (one shared cache) and compare them.

    Writes table.md and table.json (consistency, structure and fidelity metrics per method, the
    source's own as the floor), side_by_side.mp4 (source | each edit, labelled),
    contact_sheet.png (rows = methods, columns = evenly spaced frames), flicker_sheet.png
    (consecutive frames of each method, each over its change to the next frame beyond the
    source's motion: bright where it flickers) and metrics.png. The metrics are measured at the
    working size; --output-size resizes only the frames shown.
    """
    from tokenflow.arguments import check_size, check_video
    from tokenflow.eval.compare import evaluate_edit, parse_method, run_methods, write_comparison
    from tokenflow.outputs import output_dir_for

    setup_threads()
    require_plotting()  # metrics.png comes last: say now if it cannot be drawn
    try:
        root = api.cache_root(cache_dir)
        check_video(video)  # before torch and the model load
        check_size(size)
    except EditError as exc:
        raise fail(exc) from None
    pm, registry = manager_and_registry()
    try:
        parsed = [parse_method(m) for m in (methods or ("pnp", "pnp-frames"))]
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    labels = [m.label for m in parsed]
    if len(set(labels)) != len(labels):
        raise click.UsageError("the same --editor is given twice")
    for m in parsed:
        if m.editor not in registry.stages["editor"]:
            valid = ", ".join(sorted(registry.stages["editor"]))
            raise click.UsageError(f"unknown editor {m.editor!r}; installed: {valid}")
    out = Path(out_dir) if out_dir else output_dir_for(video).with_name(
        output_dir_for(video).name + "-compare")
    if out.exists() and not overwrite:
        raise click.ClickException(f"{out} exists; pass --overwrite to replace it")
    scorers = scorer_instances(pm, scorer_names, clip)
    choices = parse_choices(stage_choices)
    if "editor" in choices:
        raise click.UsageError("use --editor to choose the editors to compare")
    if choices:
        raise click.UsageError("tf compare compares editors; --stage is not supported here")
    try:
        source = api.prepare(video, model=model, revision=revision, device=device, dtype=dtype,
                             frames=n_frames, stride=stride, size=size, log=logger(quiet))
        results = run_methods(source, parsed, options=[tuple(o) for o in options],
                              prompt=prompt, negative_prompt=negative_prompt, guidance=guidance,
                              seed=seed, inversion_prompt=inversion_prompt, steps=steps,
                              inversion_steps=inversion_steps, batch_size=batch_size,
                              cache_dir=root, pm=pm, registry=registry, unet_batch=unet_batch,
                              cache_budget=cache_budget, log=logger(quiet), quiet=quiet)
    except EditError as exc:
        raise fail(exc) from None
    frames, loaded, clip_video = source.working, source.model, source.clip
    say(quiet, f"measuring {len(results)} edits against the source")
    from tokenflow.eval.metrics import video_flows

    pairs = [(t, t + k) for k in sorted({1, long_range}) for t in range(len(frames) - k)]
    flows = video_flows(frames, pairs, method=flow_method)
    source_doc = evaluate_edit(frames, frames, flow_method=flow_method, long_range=long_range,
                               source_flows=flows)
    for r in results:
        r.metrics = evaluate_edit(frames, r.frames, prompt=prompt, scorers=scorers,
                                  flow_method=flow_method, long_range=long_range,
                                  source_flows=flows)
    from tokenflow.outputs import output_entry, say_output_size

    output = output_entry(source, output_size)
    say_output_size(source, output, logger(quiet))
    title = f"{Path(video).name}: {prompt!r} ({len(frames)} frames, {steps} steps, {loaded.model_id})"
    written = write_comparison(out, frames, float(clip_video.fps), results, source_doc,
                               context={"title": title, "video": str(video), "prompt": prompt,
                                        "model": loaded.model_id, "frames": int(len(frames)),
                                        "steps": steps, "flow": flow_method,
                                        "long_range": long_range, "output_size": output},
                               flows=flows, size=(output["height"], output["width"]))
    if not quiet:
        from tokenflow.eval.compare import BELOW_LEGEND, BELOW_MARK

        table = written["table.md"].read_text().split("\n\n")[1]  # title, table, legend(s)
        click.echo(table)
        if BELOW_MARK in table:
            click.echo(BELOW_LEGEND)
        seen = set()
        for r in results:
            for note in r.metrics.get("notes", []):
                if note not in seen:
                    seen.add(note)
                    say(quiet, f"note: {note}")
    click.echo(str(out))

