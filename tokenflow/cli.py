"""The ``tf`` command line."""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path

import click

from . import __version__
from .stages import KINDS, ParamError, StageError, param_fields, type_label

CACHE_ENV = "TOKENFLOW_CACHE_DIR"


def _setup_threads() -> None:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def _cache_dir(value: str | None) -> Path:
    return Path(value or os.environ.get(CACHE_ENV) or "cache")


def _cache_root(value: str | None) -> Path:
    """The cache directory of a command that computes, refused early (before the model loads)
    if it is a file."""
    root = _cache_dir(value)
    if root.exists() and not root.is_dir():
        raise click.ClickException(f"--cache-dir {root} is a file, not a directory")
    return root


DEBUG_ENV = "TOKENFLOW_DEBUG"


def _debug() -> bool:
    return os.environ.get(DEBUG_ENV, "") not in ("", "0")


def _manager_and_registry(*, warn: bool = True):
    """The plugin manager and the stage registry; a plugin that failed to import is skipped
    with one warning line naming it and its distribution."""
    from .manager import PluginLoadError, make_plugin_manager
    from .registry import RegistryError, build_registry

    try:
        pm = make_plugin_manager()
        registry = build_registry(pm)
    except (PluginLoadError, RegistryError) as exc:
        if _debug():
            raise
        raise click.ClickException(str(exc)) from None
    if warn:
        for message in pm.failures.values():
            click.echo(f"warning: {message}; skipped", err=True)
    return pm, registry


def _say(quiet: bool, text: str) -> None:
    if not quiet:
        click.echo(text, err=True)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="tokenflow")
@click.option("--debug", is_flag=True, help=f"Show tracebacks instead of one-line errors "
                                            f"(also env {DEBUG_ENV}=1).")
def cli(debug: bool) -> None:
    """tokenflow: consistent text-driven video editing with a frozen diffusion model."""
    if debug:
        os.environ[DEBUG_ENV] = "1"


def common_input_options(f):
    options = [
        click.option("--model", "model", default=None, metavar="M",
                     help="Diffusers SD checkpoint: a local directory or a hub id. "
                          "Default: the embedded model (CPU-sized, knows tokenflow.world)."),
        click.option("--revision", default=None, help="Hub revision of --model."),
        click.option("--device", default=None, help="cpu, cuda, cuda:N or mps (default: best available)."),
        click.option("--dtype", default=None, help="float32 or float16 (default: float16 on CUDA, else float32)."),
        click.option("--inversion-prompt", default=None, help='Describes the source video (default "").'),
        click.option("--steps", default=50, show_default=True, type=click.IntRange(1, 1000),
                     help="Editing (denoising) steps."),
        click.option("--inversion-steps", default=None, type=click.IntRange(1, 1000),
                     help="DDIM inversion steps (default: the model's, else 500; the editing "
                          "grid must lie on the inversion grid)."),
        click.option("--batch-size", default=8, show_default=True, type=click.IntRange(1),
                     help="Frames per chunk (one keyframe per chunk per step)."),
        click.option("--frames", "n_frames", default=None, type=click.IntRange(1),
                     help="Use at most N frames."),
        click.option("--stride", default=1, show_default=True, type=click.IntRange(1),
                     help="Use every K-th frame."),
        click.option("--size", default=None,
                     help="Short side S, or WxH; rounded to multiples of 64 (default: model's native)."),
        click.option("--cache-dir", default=None, help=f"Stage cache (env {CACHE_ENV}, default ./cache)."),
        click.option("-o", "options", multiple=True, nargs=2, metavar="KEY VALUE",
                     help="Set a stage parameter: KIND.PARAM, NAME.PARAM or PARAM."),
        click.option("--stage", "stage_choices", multiple=True, metavar="KIND=NAME",
                     help="Use another installed stage for a kind, e.g. keyframes=random."),
        click.option("--quiet", "-q", is_flag=True, help="No progress bars or notes."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def _parse_choices(pairs) -> dict[str, str]:
    out = {}
    for pair in pairs:
        kind, sep, name = pair.partition("=")
        if not sep or kind not in KINDS:
            raise click.UsageError(f"--stage {pair!r}: expected KIND=NAME with KIND one of {', '.join(KINDS)}")
        out[kind] = name
    return out


def _quiet_libraries() -> None:
    """tokenflow shows its own progress; silence the libraries' bars and info chatter."""
    import diffusers
    import transformers

    for lib in (diffusers, transformers):
        lib.utils.logging.disable_progress_bar()
        lib.utils.logging.set_verbosity_error()


def _total_memory(device) -> tuple[int, str]:
    """Bytes of memory the run's device has, and what to call it."""
    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory, f"the GPU {device}"
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "this machine"
    except (AttributeError, OSError, ValueError):  # not a POSIX system: no check
        return 0, "this machine"


def _check_memory(loaded, n: int, height: int, width: int, size) -> None:
    """Refuse a working size whose frames cannot fit in memory.

    A lower bound, never an overestimate: the resized frames (uint8), and one frame through the
    VAE's first block (its input and output, ``block_out_channels[0]`` channels at full size).
    """
    import torch

    frames = n * height * width * 3
    vae = 2 * loaded.vae.config.block_out_channels[0] * height * width
    vae *= torch.finfo(loaded.dtype).bits // 8
    need = frames + vae
    have, where = _total_memory(loaded.device)
    if have and need > have:
        given = f"--size {size}" if size else f"the video's size (native {loaded.native_size})"
        raise click.ClickException(
            f"{given} makes {n} frames of {width}x{height}, which need at least {_human(need)} "
            f"of memory ({_human(frames)} for the frames, {_human(vae)} for the VAE on one "
            f"frame) and {where} has {_human(have)}; use a smaller --size (the model's native "
            f"size is {loaded.native_size}) or fewer --frames")


def _prepare(video, *, model, revision, device, dtype, n_frames, stride, size, quiet):
    """Load the video and the model, and resize the frames to the working resolution.

    Cheap checks first: the size and the video are read before the (slow) model is loaded.
    """
    from .models import ModelError, load_model, parse_dtype
    from .video import VideoError, parse_size, read_video, resize_frames, working_size

    try:
        requested = parse_size(size) if size else None
    except VideoError as exc:
        raise click.UsageError(f"--size: {exc}") from None
    try:
        clip = read_video(video, frames=n_frames, stride=stride)
    except VideoError as exc:
        raise click.ClickException(str(exc)) from None
    _quiet_libraries()
    try:
        torch_dtype = parse_dtype(dtype) if dtype else None
        loaded = load_model(model, device=device, dtype=torch_dtype, revision=revision)
    except ModelError as exc:
        raise click.ClickException(str(exc)) from None
    if model is None:
        _say(quiet, f"note: no --model given; using {loaded.label}")
    else:
        _say(quiet, f"model: {loaded.label}")
    try:
        height, width = working_size(clip.frames.shape[1], clip.frames.shape[2], requested,
                                     native=loaded.native_size)
    except VideoError as exc:
        raise click.ClickException(str(exc)) from None
    _check_memory(loaded, len(clip), height, width, size)
    frames = resize_frames(clip.frames, height, width)
    for note in clip.notes:
        _say(quiet, f"note: {note}")
    if n_frames is not None and len(clip) < n_frames:
        _say(quiet, f"note: --frames {n_frames} asked for more frames than the video has; "
                    f"using all {len(clip)}")
    if len(clip) == 1:
        _say(quiet, "note: the video has 1 frame: nothing to propagate, so this is a plain "
                    "edit of one image")
    sides = [requested] if isinstance(requested, int) else list(requested or ())
    if any(side % 64 for side in sides):
        _say(quiet, f"note: --size {size} rounded to multiples of 64: working size "
                    f"{width}x{height}")
    _say(quiet, f"video: {len(clip)} frames at {clip.fps:g} fps, "
                f"{clip.frames.shape[2]}x{clip.frames.shape[1]} -> {width}x{height}")
    return loaded, clip, frames


CHECKPOINT_ENV = "TOKENFLOW_CHECKPOINT_SECONDS"


def _runtime(unet_batch: int) -> dict:
    """Knobs that do not change outputs: UNet batch, and how often long stages checkpoint
    (env TOKENFLOW_CHECKPOINT_SECONDS: at most one checkpoint per that many seconds; default 0,
    every inversion step: a crash loses at most one step)."""
    knobs: dict = {"unet_batch": unet_batch}
    every = os.environ.get(CHECKPOINT_ENV)
    if every:
        try:
            knobs["checkpoint_seconds"] = max(0.0, float(every))
        except ValueError:
            raise click.UsageError(f"{CHECKPOINT_ENV}={every!r} is not a number of seconds") from None
    return knobs


def _build_job(pm, registry, loaded, frames, config, *, cache_dir, choices, params, options,
               until, quiet, unet_batch=None):
    """Plan the stages (the model's suggested defaults < flags < ``-o``) and hash their keys."""
    from .pipeline import build_job

    try:
        return build_job(pm, loaded, frames, config, cache=cache_dir, registry=registry,
                         choices=choices, params=params, options=options, until=until,
                         quiet=quiet, runtime=_runtime(unet_batch or config.batch_size))
    except (ParamError, StageError) as exc:
        if _debug():
            raise
        raise click.UsageError(str(exc)) from None
    except Exception as exc:  # a plugin's bug while the run is planned: one line, named
        if _debug():
            raise
        from .manager import blame

        culprit = blame(pm, exc, registry)
        where = f" in plugin {culprit}" if culprit else ""
        text = (str(exc).strip().splitlines() or [""])[0][:300]
        raise click.ClickException(f"planning the run failed{where}: {type(exc).__name__}: "
                                   f"{text} (--debug shows the traceback)") from None


def _free_bytes(path: Path) -> int:
    import shutil

    path = path.resolve()
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


#: Above this estimate, tf run mentions the option that keeps the feature store small.
LARGE_CACHE = 8 * 2**30


def _run_job(job, quiet: bool) -> dict:
    """Run a planned job; any error becomes one line (a plugin's names the plugin)."""
    try:
        return _checked_run(job, quiet)
    except click.ClickException:
        raise
    except (StageError, ParamError) as exc:
        if _debug():
            raise
        raise click.ClickException(str(exc)) from None
    except Exception as exc:  # a bug, in a plugin or in tokenflow: one line, named
        if _debug():
            raise
        raise click.ClickException(_failure_line(job, exc)) from None


def _checked_run(job, quiet: bool) -> dict:
    root = job.base.cache.root  # checked by _cache_root when the command started
    pending = job.pending()
    for kind in pending:  # before any work: every store to write must be writable
        folder = root / kind
        try:
            folder.mkdir(parents=True, exist_ok=True)
            probe = folder / f".write-probe-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise click.ClickException(
                f"the cache directory {folder} is not writable ({exc.strerror or exc}); "
                "pass another --cache-dir") from None
    if pending:
        need = job.estimate_bytes()
        _say(quiet, f"cache {job.base.cache.root}: computing {', '.join(pending)}; "
                    f"about {_human(need)} to write")
        free = _free_bytes(job.base.cache.root)
        hint = ("-o features.store_tokens false keeps the feature store small "
                "(tokens are then recomputed when read; see docs/cache.md)")
        if need > free:
            raise click.ClickException(f"the cache needs about {_human(need)} but only "
                                       f"{_human(free)} is free at {job.base.cache.root}; {hint}")
        if need > LARGE_CACHE and "features" in pending:
            _say(quiet, f"note: {hint}")
    else:
        _say(quiet, f"cache {job.base.cache.root}: every stage is cached")
    return job.run()


def _failure_line(job, exc: BaseException) -> str:
    """One line for an unexpected error in a run: the stage, the plugin whose code raised it."""
    from .manager import blame

    kind = getattr(job, "failed", None)
    stage = job.stages.get(kind) if kind else None
    what = f"{kind} stage {stage.name!r}" if stage is not None else "the run"
    if kind == "blender" and "editor" in job.stages:
        what = f"the editing loop (editor {job.stages['editor'].name!r}, blender {stage.name!r})"
    if getattr(job, "failed_hook", None):
        what = f"the {job.failed_hook} hook of {what}"
    culprit = blame(job.pm, exc, job.registry)
    where = f" in plugin {culprit}" if culprit else ""
    text = (str(exc).strip().splitlines() or [""])[0][:300]
    return (f"{what} failed{where}: {type(exc).__name__}: {text} (nothing partial was "
            f"cached; --debug shows the traceback)")


@cli.command()
@click.argument("video", type=click.Path())
@click.option("--prompt", required=True, help="The target prompt.")
@click.option("--editor", default=None, help="Editor stage (see tf stages).  [default: pnp]")
@click.option("--negative-prompt", default=None, help="Unconditional branch text.")
@click.option("--guidance", default=None, type=float, help="Classifier-free guidance scale (7.5).")
@click.option("--seed", default=1, show_default=True, type=int, help="Keyframe draws.")
@click.option("--out", "out_dir", default=None, help="Output directory (default out/<video name>).")
@click.option("--overwrite", is_flag=True, help="Replace an existing output of a different run.")
@common_input_options
def run(video, prompt, editor, negative_prompt, guidance, seed, out_dir, overwrite, model,
        revision, device, dtype, inversion_prompt, steps, inversion_steps, batch_size, n_frames,
        stride, size, cache_dir, options, stage_choices, quiet):
    """Edit VIDEO to follow --prompt with TokenFlow (inversion, keyframe edit, propagation)."""
    from .outputs import check_output_dir, output_dir_for, write_outputs
    from .stages import RunConfig

    _setup_threads()
    start = time.perf_counter()
    if not prompt.strip():
        raise click.UsageError("--prompt is empty: describe the edited video, e.g. "
                               "--prompt 'a red car on a snowy road'")
    cache_root = _cache_root(cache_dir)
    pm, registry = _manager_and_registry()
    choices = _parse_choices(stage_choices)
    if editor is not None:
        if choices.get("editor", editor) != editor:
            raise click.UsageError(f"--editor {editor} contradicts --stage editor={choices['editor']}")
        choices["editor"] = editor
    loaded, clip, frames = _prepare(video, model=model, revision=revision, device=device,
                                    dtype=dtype, n_frames=n_frames, stride=stride, size=size,
                                    quiet=quiet)
    if loaded.prompt_truncated(prompt):
        _say(quiet, f"note: the prompt is longer than {loaded.tokenizer.model_max_length} tokens "
                    "and was truncated")
    config = RunConfig(steps=steps, batch_size=batch_size)
    params = {
        "inversion": {"prompt": inversion_prompt, "inversion_steps": inversion_steps},
        "keyframes": {"seed": seed},
        "editor": {"prompt": prompt, "negative_prompt": negative_prompt, "guidance_scale": guidance},
    }
    job = _build_job(pm, registry, loaded, frames, config, cache_dir=cache_root,
                     choices=choices, params=params, options=options, until="blender", quiet=quiet)
    out = Path(out_dir) if out_dir else output_dir_for(video)
    try:
        check_output_dir(out, job.keys["blender"], overwrite=overwrite)
        results = _run_job(job, quiet)
        written = write_outputs(out, job, results, clip, frames, overwrite=overwrite,
                                seconds=time.perf_counter() - start)
    except FileExistsError as exc:
        raise click.ClickException(str(exc)) from None
    stats = results["blender"].stats
    if stats and not quiet:
        per_step = stats["unet_frame_evals"] / max(1, stats["steps"])
        _say(quiet, f"UNet frame-evaluations per editing step: {per_step:g} "
                    f"(K={stats['keyframes_per_step']}, N={stats['frames']})")
    click.echo(str(written))


@cli.command()
@click.argument("video", type=click.Path())
@click.option("--check/--no-check", default=True, show_default=True,
              help="Regenerate from the inverted noise and report PSNR per frame.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@common_input_options
def invert(video, check, as_json, model, revision, device, dtype, inversion_prompt, steps,
           inversion_steps, batch_size, n_frames, stride, size, cache_dir, options,
           stage_choices, quiet):
    """Run inversion and the feature store only; report reconstruction PSNR."""
    from .stages import RunConfig

    _setup_threads()
    cache_root = _cache_root(cache_dir)
    pm, registry = _manager_and_registry()
    loaded, _, frames = _prepare(video, model=model, revision=revision, device=device,
                                    dtype=dtype, n_frames=n_frames, stride=stride, size=size,
                                    quiet=quiet)
    config = RunConfig(steps=steps, batch_size=batch_size)
    params = {"inversion": {"prompt": inversion_prompt, "inversion_steps": inversion_steps}}
    job = _build_job(pm, registry, loaded, frames, config, cache_dir=cache_root,
                     choices=_parse_choices(stage_choices), params=params, options=options,
                     until="features", quiet=quiet)
    results = _run_job(job, quiet)
    report = {"keys": {k: r.key for k, r in results.items()},
              "paths": {k: str(r.path) for k, r in results.items()}}
    if check:
        from .quality import reconstruction_check

        report["psnr"] = reconstruction_check(job, results)
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


def _scorer_instances(pm, names, clip):
    from .scorers import make_scorers

    try:
        return make_scorers(pm, list(names) or None, {"clip": clip} if clip else {})
    except (StageError, ValueError) as exc:
        raise click.UsageError(str(exc)) from None


def _print_metrics(doc: dict, quiet: bool) -> None:
    from .compare import TABLE_METRICS

    agg = doc["aggregate"]
    for name, header, lower in TABLE_METRICS:
        if name in agg:
            scale = 1e3 if "warp" in name else 1.0
            value = agg[name]
            shown = "n/a" if value is None or math.isnan(value) else f"{value * scale:.4g}"
            click.echo(f"{header:<26} {shown:>10}   ({'lower' if lower else 'higher'} is better)")
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
        _say(quiet, f"note: {note}")


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
    from .compare import evaluate_edit, load_edit
    from .metrics import align
    from .video import VideoError, read_video

    _setup_threads()
    _quiet_libraries()
    try:
        edit = load_edit(edited)
        src = read_video(source).frames
        aligned, frames, how = align(src, edit.frames, stride=stride or edit.stride, start=start)
    except (VideoError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    prompt = prompt if prompt is not None else edit.prompt
    flows = None
    if true_flow:
        flows = _true_flows(true_flow, src.shape[1:3], frames.shape[1:3],
                            stride or edit.stride, start, len(frames), long_range)
    pm, _ = _manager_and_registry()
    scorers = _scorer_instances(pm, scorer_names, clip)
    doc = evaluate_edit(aligned, frames, prompt=prompt, scorers=scorers, flow_method=flow_method,
                        long_range=long_range, source_flows=flows)
    doc["alignment"] = how
    doc["flow"] = "true (" + str(true_flow) + ")" if true_flow else flow_method
    doc["prompt"] = prompt
    if plot:
        from .compare import PLOT_METRICS
        from .figures import plot_metrics

        plot_metrics({"edit": doc["per_frame"]}, PLOT_METRICS + [k for k in doc["per_frame"]
                                                                if k.startswith("score_")], plot,
                     title=f"{Path(edited).name} vs {Path(source).name}")
    if as_json:
        click.echo(json.dumps(doc, indent=2, default=float))
        return
    _say(quiet, f"alignment: {how}; flow: {doc['flow']}")
    _print_metrics(doc, quiet)


def _true_flows(path, source_hw, edit_hw, stride, start, n, long_range):
    """The known flows of the aligned frames, rescaled to the edit's size."""
    import cv2
    import numpy as np

    from .metrics import load_true_flow, true_flows

    try:
        known = load_true_flow(path)
    except (OSError, ValueError, KeyError) as exc:
        raise click.ClickException(f"--true-flow {path}: {exc}") from None
    sy, sx = edit_hw[0] / source_hw[0], edit_hw[1] / source_hw[1]

    def pick(a: int, b: int):
        flow = known.get((start + a * stride, start + b * stride))
        if flow is None:
            return None
        if flow.shape[:2] != tuple(edit_hw):
            flow = cv2.resize(flow, (edit_hw[1], edit_hw[0]), interpolation=cv2.INTER_LINEAR)
        return (flow * np.array([sx, sy], np.float32)).astype(np.float32)

    forward, backward = {}, {}
    for k in sorted({1, long_range}):
        for t in range(n - k):
            f, b = pick(t, t + k), pick(t + k, t)
            if f is None or b is None:
                raise click.ClickException(
                    f"--true-flow {path} has no flow between source frames "
                    f"{start + t * stride} and {start + (t + k) * stride}")
            forward[(t, t + k)], backward[(t + k, t)] = f, b
    return true_flows(forward, backward)


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
@common_input_options
def compare(video, prompt, methods, negative_prompt, guidance, seed, out_dir, overwrite,
            scorer_names, clip, flow_method, long_range, model, revision, device, dtype,
            inversion_prompt, steps, inversion_steps, batch_size, n_frames, stride, size,
            cache_dir, options, stage_choices, quiet):
    """Run several editors or settings on VIDEO (one shared cache) and compare them.

    Writes table.md and table.json (consistency, structure and fidelity metrics per method, the
    source's own as the floor), side_by_side.mp4 (source | each edit, labelled),
    contact_sheet.png (rows = methods, columns = evenly spaced frames) and metrics.png.
    """
    from .compare import evaluate_edit, parse_method, run_methods, write_comparison
    from .outputs import output_dir_for
    from .stages import RunConfig

    _setup_threads()
    cache_root = _cache_root(cache_dir)
    pm, registry = _manager_and_registry()
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
    scorers = _scorer_instances(pm, scorer_names, clip)
    loaded, clip_video, frames = _prepare(video, model=model, revision=revision, device=device,
                                         dtype=dtype, n_frames=n_frames, stride=stride, size=size,
                                         quiet=quiet)
    config = RunConfig(steps=steps, batch_size=batch_size)
    params = {
        "inversion": {"prompt": inversion_prompt, "inversion_steps": inversion_steps},
        "keyframes": {"seed": seed},
        "editor": {"prompt": prompt, "negative_prompt": negative_prompt, "guidance_scale": guidance},
    }
    choices = _parse_choices(stage_choices)
    if "editor" in choices:
        raise click.UsageError("use --editor to choose the editors to compare")
    if choices:
        raise click.UsageError("tf compare compares editors; --stage is not supported here")

    def on_job(job):
        return _run_job(job, quiet)

    try:
        results = run_methods(pm, loaded, frames, config, parsed, cache=cache_root,
                              params=params, options=[tuple(o) for o in options], quiet=quiet,
                              registry=registry, on_job=on_job)
    except (ParamError, StageError) as exc:
        raise click.UsageError(str(exc)) from None
    _say(quiet, f"measuring {len(results)} edits against the source")
    from .metrics import video_flows

    pairs = [(t, t + k) for k in sorted({1, long_range}) for t in range(len(frames) - k)]
    flows = video_flows(frames, pairs, method=flow_method)
    source_doc = evaluate_edit(frames, frames, flow_method=flow_method, long_range=long_range,
                               source_flows=flows)
    for r in results:
        r.metrics = evaluate_edit(frames, r.frames, prompt=prompt, scorers=scorers,
                                  flow_method=flow_method, long_range=long_range,
                                  source_flows=flows)
    title = f"{Path(video).name}: {prompt!r} ({len(frames)} frames, {steps} steps, {loaded.model_id})"
    written = write_comparison(out, frames, float(clip_video.fps), results, source_doc,
                               context={"title": title, "video": str(video), "prompt": prompt,
                                        "model": loaded.model_id, "frames": int(len(frames)),
                                        "steps": steps, "flow": flow_method,
                                        "long_range": long_range})
    if not quiet:
        click.echo(written["table.md"].read_text().split("\n\n", 1)[-1].rsplit("\n\n", 1)[0])
        seen = set()
        for r in results:
            for note in r.metrics.get("notes", []):
                if note not in seen:
                    seen.add(note)
                    _say(quiet, f"note: {note}")
    click.echo(str(out))


@cli.command()
def plugins() -> None:
    """List loaded plugins with their distributions and hooks."""
    from .manager import LOAD_PLUGINS_ENV

    pm, _ = _manager_and_registry(warn=False)
    for name, plugin in sorted(pm.list_name_plugin(), key=lambda p: p[0]):
        if plugin is None:  # blocked by TOKENFLOW_LOAD_PLUGINS
            click.echo(f"{name}  [blocked by {LOAD_PLUGINS_ENV}]")
            continue
        dist = pm.distributions.get(name, ("tokenflow (core)", __version__))
        hooks = sorted(h.name for h in pm.get_hookcallers(plugin) or [])
        click.echo(f"{name}  [{dist[0]} {dist[1]}]  hooks: {', '.join(hooks)}")
    for name, message in sorted(pm.failures.items()):
        click.echo(f"{name}  [FAILED] {message}")
    if pm.failures:
        raise click.ClickException(f"{len(pm.failures)} plugin(s) failed to import (listed above)")


def _plugin_distributions() -> dict[str, tuple[str, list[str]]]:
    """Normalised distribution name -> (version, its ``tokenflow`` entry-point names)."""
    import importlib
    from importlib.metadata import distributions

    from .manager import GROUP, _norm

    importlib.invalidate_caches()
    found: dict[str, tuple[str, list[str]]] = {}
    for dist in distributions():
        name = dist.metadata["name"]
        if not name:
            continue
        eps = [ep.name for ep in dist.entry_points if ep.group == GROUP]
        found[_norm(name)] = (dist.version, eps)
    return found


def _plugin_state() -> dict:
    """What this environment provides: plugin distributions, and what loading them gives."""
    from .manager import make_plugin_manager
    from .registry import build_registry

    state: dict = {"dists": {n: [v, eps] for n, (v, eps) in _plugin_distributions().items()},
                   "failures": {}, "blocked": [], "stages": {}, "error": None}
    try:
        pm = make_plugin_manager()
        state["failures"] = dict(pm.failures)
        state["blocked"] = [name for name, plugin in pm.list_name_plugin() if plugin is None]
        registry = build_registry(pm)
    except Exception as exc:  # noqa: BLE001 - reported, not raised: the install itself worked
        state["error"] = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return state
    for kind in KINDS:
        for name in sorted(registry.stages[kind]):
            state["stages"][f"{kind} {name}"] = registry.owner(kind, name).split(" (", 1)[0]
    return state


def _fresh_plugin_state() -> dict:
    """:func:`_plugin_state` as a new Python process sees it: what pip just did (an editable
    install's path, a removed package's files) takes effect only in a new interpreter."""
    import subprocess

    code = ("import sys; sys.path.pop(0); import json; from tokenflow.cli import _plugin_state; "
            "print(json.dumps(_plugin_state()))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=False)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise click.ClickException(f"could not inspect the environment after pip: {last}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _pip(args: list[str], quiet: bool) -> None:
    """Run pip of this environment; its output goes to stderr. One line if it fails."""
    import subprocess

    cmd = [sys.executable, "-m", "pip", *args]
    if quiet:
        cmd.append("--quiet")
    try:
        probe = subprocess.run([sys.executable, "-m", "pip", "--version"], capture_output=True,
                               check=False)
    except OSError as exc:
        raise click.ClickException(f"cannot run {sys.executable}: {exc}") from None
    if probe.returncode != 0:
        raise click.ClickException(f"pip is not available in this environment ({sys.executable}); "
                                   "install it with: python -m ensurepip")
    done = subprocess.run(cmd, stdout=sys.stderr, stderr=sys.stderr, check=False)
    if done.returncode != 0:
        raise click.ClickException(f"pip {args[0]} failed (exit {done.returncode}); see its "
                                   "output above")


def _target_name(target: str, path: Path) -> str | None:
    """The distribution name an install target stands for, if it can be told without pip."""
    import re

    import tomllib

    if path.is_dir():
        try:
            return tomllib.loads((path / "pyproject.toml").read_text())["project"]["name"]
        except (OSError, KeyError, ValueError):
            return None
    if path.is_file():  # name-version-....whl / name-version.tar.gz
        return path.name.split("-", 1)[0]
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", target)
    return match.group(1) if match else None


@cli.command()
@click.argument("target")
@click.option("-e", "--editable", is_flag=True, help="Install a local project in editable mode.")
@click.option("-U", "--upgrade", is_flag=True, help="Upgrade if already installed.")
@click.option("--quiet", "-q", is_flag=True, help="Less pip output.")
def install(target, editable, upgrade, quiet) -> None:
    """Install a plugin distribution into this environment with pip.

    TARGET is a local project directory, a wheel or sdist file, or a requirement (a name with an
    optional version, from your package index). After pip, the new plugins are imported and
    their stages listed; a plugin that fails to import is reported (and stays installed, so
    that `tf uninstall` can remove it).
    """
    from .manager import _norm

    path = Path(target).expanduser()
    looks_like_path = path.exists() or target.startswith((".", "/", "~")) or os.sep in target
    if looks_like_path and not path.exists():
        raise click.ClickException(f"{target} does not exist")
    if editable and not path.is_dir():
        raise click.UsageError("--editable needs a local project directory")
    before = _fresh_plugin_state()["dists"]
    args = ["install"] + (["--upgrade"] if upgrade else [])
    args += ["-e", str(path.resolve())] if editable else [str(path.resolve()) if path.exists() else target]
    _pip(args, quiet)
    state = _fresh_plugin_state()
    after = state["dists"]
    changed = {n: v for n, v in after.items() if before.get(n) != v and v[1]}
    if not changed:
        wanted = _norm(_target_name(target, path) or "")
        if after.get(wanted, ("", []))[1]:
            click.echo(f"{wanted} {after[wanted][0]} is already installed (--upgrade to update)",
                       err=True)
            return
        raise click.ClickException("pip installed nothing that provides tokenflow plugins (no "
                                   "entry points in the 'tokenflow' group); `pip uninstall` "
                                   "removes what it did install")
    failed = False
    for dist, (version, eps) in sorted(changed.items()):
        stages_of = [stage for stage, owner in state["stages"].items() if owner in eps]
        click.echo(f"installed {dist} {version}: plugins {', '.join(eps)}"
                   + (f"; stages: {', '.join(stages_of)}" if stages_of else ""))
        for ep in eps:
            if ep in state["failures"]:
                failed = True
                click.echo(f"error: {state['failures'][ep]} (tf uninstall {dist} removes it)",
                           err=True)
            elif ep in state["blocked"]:
                click.echo(f"note: {ep} is not loaded: TOKENFLOW_LOAD_PLUGINS does not list {dist}",
                           err=True)
    if state["error"]:
        failed = True
        click.echo(f"error: {state['error']}", err=True)
    if failed:
        raise SystemExit(1)


@cli.command()
@click.argument("name")
@click.option("--quiet", "-q", is_flag=True, help="Less pip output.")
def uninstall(name, quiet) -> None:
    """Remove the plugin distribution NAME from this environment with pip.

    Only distributions that provide tokenflow plugins are removed; tokenflow itself and other
    packages are refused (use pip for those).
    """
    from .manager import BUILTIN_DISTRIBUTION, _norm

    dist = _norm(name)
    if dist == BUILTIN_DISTRIBUTION:
        raise click.ClickException("tf uninstall removes plugins, not tokenflow itself "
                                   "(pip uninstall tokenflow does that)")
    installed = _plugin_distributions()
    if dist not in installed:
        plugins = sorted(n for n, (_, eps) in installed.items() if eps and n != BUILTIN_DISTRIBUTION)
        raise click.ClickException(f"{name} is not installed; installed plugin distributions: "
                                   f"{', '.join(plugins) or 'none'}")
    version, eps = installed[dist]
    if not eps:
        raise click.ClickException(f"{name} provides no tokenflow plugins; tf uninstall only "
                                   "removes plugin distributions (use pip for others)")
    _pip(["uninstall", "--yes", name], quiet)
    if dist in _fresh_plugin_state()["dists"]:
        raise click.ClickException(f"{name} is still installed after pip uninstall")
    click.echo(f"uninstalled {dist} {version}: plugins {', '.join(eps)}")


@cli.command()
@click.option("--json", "as_json", is_flag=True)
def stages(as_json) -> None:
    """List installed stages by kind, with their parameters, and the control extractors."""
    from .controls import control_extractors

    pm, registry = _manager_and_registry()
    doc = {}
    for kind in KINDS:
        doc[kind] = []
        for name, cls in sorted(registry.stages[kind].items()):
            fields = {p: {"type": type_label(h), "default": d}
                      for p, (h, d) in param_fields(cls.Params).items()}
            doc[kind].append({"name": name, "version": cls.version, "plugin": registry.owner(kind, name),
                              "summary": getattr(cls, "summary", ""), "params": fields})
    try:
        extractors = control_extractors(pm)
    except StageError as exc:
        raise click.ClickException(str(exc)) from None
    doc["control_extractors"] = [{"name": e.name, "version": e.version, "plugin": e.owner}
                                 for _, e in sorted(extractors.items())]
    from .scorers import collect_scorers

    try:
        classes, owners = collect_scorers(pm)
    except StageError as exc:
        raise click.ClickException(str(exc)) from None
    doc["scorers"] = [{"name": n, "version": getattr(c, "version", 1), "plugin": owners[n],
                       "summary": getattr(c, "summary", "")} for n, c in sorted(classes.items())]
    if as_json:
        click.echo(json.dumps(doc, indent=2, default=str))
        return
    for kind in KINDS:
        click.echo(f"{kind}:")
        for item in doc[kind]:
            click.echo(f"  {item['name']} (v{item['version']}, {item['plugin']}): {item['summary']}")
            for p, info in item["params"].items():
                click.echo(f"      {p}: {info['type']} = {info['default']!r}")
    click.echo("control extractors (-o control NAME):")
    for item in doc["control_extractors"]:
        click.echo(f"  {item['name']} (v{item['version']}, {item['plugin']})")
    click.echo("scorers (tf eval / tf compare --scorer NAME):")
    for item in doc["scorers"]:
        click.echo(f"  {item['name']} (v{item['version']}, {item['plugin']}): {item['summary']}")


@cli.group()
def cache() -> None:
    """Inspect or clean the stage cache."""


@cache.command("ls")
@click.option("--cache-dir", default=None)
@click.option("--json", "as_json", is_flag=True)
def cache_ls(cache_dir, as_json) -> None:
    """List complete cache entries: kind, name, key, size, params."""
    from .cache.store import StageCache

    entries = StageCache(_cache_dir(cache_dir)).entries()
    if as_json:
        click.echo(json.dumps([{"kind": e.kind, "name": e.name, "key": e.key, "size": e.size,
                                "path": str(e.path), "params": e.params} for e in entries], indent=2))
        return
    for e in entries:
        params = json.dumps(e.params, sort_keys=True)
        click.echo(f"{e.kind:<15}{e.name:<12}{e.key[:16]}  {_human(e.size):>9}  {params}")
    click.echo(f"{len(entries)} entries, {_human(sum(e.size for e in entries))}", err=True)


@cache.command("rm")
@click.argument("key", required=False)
@click.option("--all", "remove_all", is_flag=True, help="Remove every entry.")
@click.option("--cache-dir", default=None)
def cache_rm(key, remove_all, cache_dir) -> None:
    """Remove the entries whose key starts with KEY, or all of them."""
    from .cache.store import StageCache

    store = StageCache(_cache_dir(cache_dir))
    if remove_all == bool(key):
        raise click.UsageError("give a KEY (at least 4 characters) or --all")
    try:
        gone = store.clear() if remove_all else store.remove(key)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    if key and not gone:
        raise click.ClickException(f"no cache entry has a key starting with {key!r}")
    for e in gone:
        click.echo(f"removed {e.kind}/{e.name} {e.key[:16]}")


@cache.command("verify")
@click.option("--cache-dir", default=None)
@click.option("--remove", is_flag=True, help="Delete the broken stores (not a live run's partial store).")
def cache_verify(cache_dir, remove) -> None:
    """Check every cache entry: completeness marker, files against their stored sha256, arrays
    readable. Partial stores of interrupted runs are listed too (rerunning resumes them)."""
    from .cache.store import StageCache

    store = StageCache(_cache_dir(cache_dir))
    total = len(store.entries())
    problems = store.verify(remove=remove)
    partial = [(p, why) for p, why in problems if why.startswith("partial")]
    broken = [(p, why) for p, why in problems if not why.startswith("partial")]
    for path, why in partial:
        click.echo(f"partial  {path}: {why}")
    for path, why in broken:
        click.echo(f"{'removed' if remove else 'BROKEN'}  {path}: {why}")
    complete_broken = sum(not p.name.startswith(".") for p, _ in broken)
    click.echo(f"{total - complete_broken} of {total} entries intact; {len(broken)} broken"
               f"{' and removed' if remove and broken else ''}; {len(partial)} partial", err=True)
    if broken and not remove:
        raise SystemExit(1)


def main() -> None:
    """Console entry point: one clear line on errors, exit 130 on Ctrl-C.

    Click's own handling is bypassed (``standalone_mode=False``) because it prints a usage
    error's "Usage:" and "Try --help" lines above the error, and turns Ctrl-C into "Aborted!"
    with exit 1.
    """
    import errno

    try:
        code = cli.main(standalone_mode=False)
    except (KeyboardInterrupt, click.exceptions.Abort):
        click.echo("interrupted", err=True)
        sys.exit(130)
    except click.UsageError as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":  # bare `tf`: the help text, not an error
            exc.show()
            sys.exit(exc.exit_code)
        ctx = exc.ctx
        hint = f" ({ctx.command_path} --help)" if ctx is not None else ""
        click.echo(f"Error: {exc.format_message()}{hint}", err=True)
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except OSError as exc:
        if exc.errno != errno.EPIPE:  # output piped into a closed reader (| head): quiet
            raise
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no error at exit
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
