"""What the commands share: thread settings, --debug, one-line errors, notes on stderr, the
input options of run/invert/compare."""

from __future__ import annotations

import os

import click

from tokenflow.api import CACHE_ENV, EditError
from tokenflow.stages import KINDS

DEBUG_ENV = "TOKENFLOW_DEBUG"


def setup_threads() -> None:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def debug() -> bool:
    """``tf --debug`` or ``TOKENFLOW_DEBUG=1``: tracebacks instead of one-line errors."""
    ctx = click.get_current_context(silent=True)
    if ctx is not None and ctx.find_root().params.get("debug"):
        return True
    return os.environ.get(DEBUG_ENV, "") not in ("", "0")


def fail(exc: EditError):
    """The click exception for an :class:`EditError` (usage errors exit 2); with --debug the
    exception that caused it (with its traceback), or the error itself."""
    if debug():
        return exc.__cause__ or exc
    return click.UsageError(str(exc)) if exc.usage else click.ClickException(str(exc))


def say(quiet: bool, text: str) -> None:
    if not quiet:
        click.echo(text, err=True)


def logger(quiet: bool):
    """Where the API's notes go: stderr, unless quiet."""
    return None if quiet else (lambda text: click.echo(text, err=True))


def manager_and_registry(*, warn: bool = True):
    """The plugin manager and the stage registry; a plugin that failed to import is skipped
    with one warning line naming it and its distribution."""
    from tokenflow.api import plugins

    try:
        return plugins(log=(lambda text: click.echo(text, err=True)) if warn else None)
    except EditError as exc:
        raise fail(exc) from None


def _size_option(ctx, param, value):
    """A size such as 16G, checked before anything loads."""
    if value is None:
        return None
    from tokenflow.preflight import parse_bytes

    try:
        return parse_bytes(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def output_size_option(ctx, param, value):
    """An output size (source, working, S or WxH), checked before anything loads."""
    from tokenflow.sizes import parse_output_size
    from tokenflow.video import VideoError

    try:
        return parse_output_size(value)
    except VideoError as exc:
        raise click.BadParameter(str(exc)) from None


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
        click.option("--size", default=None, metavar="S|WxH",
                     help="Working size: short side S with the source's aspect (e.g. 512: "
                          "1920x1080 -> 910x512), or exactly WxH (e.g. 768x432). Default: the "
                          "model's native size. Frames are padded to the UNet's multiples "
                          "(64 for SD) and cropped back after decoding."),
        click.option("--unet-batch", default=None, type=click.IntRange(1),
                     help="Frames per UNet call (memory and speed only, not the result; "
                          "default: as many whole chunks as the device holds). The keyframe "
                          "call on more keyframes runs in lockstep batches of this size."),
        click.option("--cache-dir", default=None, help=f"Stage cache (env {CACHE_ENV}, default ./cache)."),
        click.option("--cache-budget", default=None, callback=_size_option, metavar="SIZE",
                     help="Say what shrinks the cache when a run would write more than SIZE "
                          "(e.g. 16G; default 16G)."),
        click.option("-o", "options", multiple=True, nargs=2, metavar="KEY VALUE",
                     help="Set a stage parameter: KIND.PARAM, NAME.PARAM or PARAM."),
        click.option("--stage", "stage_choices", multiple=True, metavar="KIND=NAME",
                     help="Use another installed stage for a kind, e.g. keyframes=random."),
        click.option("--quiet", "-q", is_flag=True, help="No progress bars or notes."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def parse_choices(pairs) -> dict[str, str]:
    out = {}
    for pair in pairs:
        kind, sep, name = pair.partition("=")
        if not sep or kind not in KINDS:
            raise click.UsageError(f"--stage {pair!r}: expected KIND=NAME with KIND one of {', '.join(KINDS)}")
        out[kind] = name
    return out


