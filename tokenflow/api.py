"""One way to run an edit, for every front end: :func:`edit` (and :func:`invert`).

``tf run``, ``tf invert`` and ``tf compare`` are thin wrappers over these; a notebook, a batch
runner or a web UI calls them the same way::

    import tokenflow
    result = tokenflow.edit("clip.mp4", prompt="a blue checkered ball on wood", out="out/ball")
    result.frames                 # the edited frames, (N, H, W, 3) uint8
    result.record["keys"]         # what run.json holds
    result.dataset("features", group="8x8x64")   # any stage's store, with named dims

The steps, in order: :func:`prepare` (read and resize the video, load the model, check that the
frames fit in memory), :func:`plan_edit` (choose the stages, apply parameters, hash the cache
keys; a run that cannot work is refused here, before anything is computed), :func:`run_job`
(check the cache is writable and has room, then compute what is not cached) and, with ``out``,
the output folder (:mod:`tokenflow.outputs`). Every failure is an :class:`EditError` with a
one-line message; ``usage`` tells a bad request from a failed run.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tokenflow.oneline import first_line
from tokenflow.preflight import (
    EditError,
    auto_unet_batch,
    parse_bytes,
    human_bytes,  # noqa: F401  (re-exported: the CLI's size formatting)
    preflight,
    say,
)
from tokenflow.params import ParamError
from tokenflow.source import (  # noqa: F401  (re-exported: the public API and the CLI)
    Log,
    Source,
    described,
    prepare,
    quiet_libraries,
)
from tokenflow.stages import BLENDER, EDITOR, FEATURES, INVERSION, KINDS, RunConfig, StageError

#: Environment variable: the default stage-cache directory (else ``./cache``).
CACHE_ENV = "TOKENFLOW_CACHE_DIR"
#: Environment variable: at most one checkpoint of a long stage per that many seconds.
CHECKPOINT_ENV = "TOKENFLOW_CHECKPOINT_SECONDS"

Progress = Callable[[str, int, int], None]


def cache_root(value: str | os.PathLike | None) -> Path:
    """The stage-cache directory: ``value``, else ``$TOKENFLOW_CACHE_DIR``, else ``./cache``;
    refused if it is a file."""
    root = Path(value or os.environ.get(CACHE_ENV) or "cache")
    if root.exists() and not root.is_dir():
        raise EditError(f"--cache-dir {root} is a file, not a directory", usage=True)
    return root


# --------------------------------------------------------------------------------- planning


def stage_choices(stages: Mapping[str, str] | None, editor: str | None) -> dict[str, str]:
    """``{kind: name}`` of the stages picked instead of the defaults; ``editor`` is the
    editor's."""
    choices = dict(stages or {})
    unknown = set(choices) - set(KINDS)
    if unknown:
        raise EditError(f"unknown stage kind {sorted(unknown)[0]!r}; kinds: {', '.join(KINDS)}",
                        usage=True)
    if editor is not None:
        if choices.get(EDITOR, editor) != editor:
            raise EditError(f"--editor {editor} contradicts --stage editor={choices[EDITOR]}",
                            usage=True)
        choices[EDITOR] = editor
    return choices


def runtime_options(unet_batch: int, cache_budget=None) -> dict[str, Any]:
    """Knobs that do not change outputs: UNet batch (frames per UNet call), the cache budget
    (bytes, or a size such as ``"16G"``: above it a run says what shrinks the cache), and how
    often long stages checkpoint (env TOKENFLOW_CHECKPOINT_SECONDS: at most one checkpoint per
    that many seconds; default 0, every inversion step: a crash loses at most one step)."""
    knobs: dict[str, Any] = {"unet_batch": unet_batch}
    if cache_budget is not None:
        try:
            knobs["cache_budget"] = parse_bytes(cache_budget)
        except ValueError as exc:
            raise EditError(f"--cache-budget: {exc}", usage=True) from None
    every = os.environ.get(CHECKPOINT_ENV)
    if every:
        try:
            knobs["checkpoint_seconds"] = max(0.0, float(every))
        except ValueError:
            raise EditError(f"{CHECKPOINT_ENV}={every!r} is not a number of seconds",
                            usage=True) from None
    return knobs


def plugins(pm=None, registry=None, *, log: Log | None = None):
    """The plugin manager and the stage registry (given ones are used as they are); a plugin
    that failed to import is skipped with one warning line (to ``log``) naming it."""
    from tokenflow.manager import PluginLoadError, make_plugin_manager
    from tokenflow.registry import RegistryError, build_registry

    try:
        fresh = pm is None
        pm = make_plugin_manager() if fresh else pm
        registry = build_registry(pm) if registry is None else registry
    except (PluginLoadError, RegistryError) as exc:
        raise EditError(str(exc)) from exc
    if fresh:
        for message in pm.failures.values():
            say(log, f"warning: {message}; skipped")
    return pm, registry


def plan_edit(source: Source, *, prompt: str | None = None, editor: str | None = None,
              stages: Mapping[str, str] | None = None, options: Sequence[tuple[str, Any]] = (),
              inversion_prompt: str | None = None, negative_prompt: str | None = None,
              guidance: float | None = None, seed: int | None = 1, steps: int = 50,
              inversion_steps: int | None = None, batch_size: int = 8, until: str = BLENDER,
              cache_dir=None, pm=None, registry=None, unet_batch: int | None = None,
              cache_budget=None, quiet: bool = True, progress: Progress | None = None):
    """Plan an edit of ``source`` and hash its keys: a :class:`tokenflow.run.Job` (nothing is
    computed). Parameters come from the model's suggested defaults, then the dedicated
    arguments, then ``options`` (``-o KEY VALUE`` pairs); ``stages`` picks other installed
    stages (``{kind: name}``), ``editor`` the editor. ``until="features"`` plans inversion and
    the feature store only."""
    from tokenflow.arguments import flag_params
    from tokenflow.cache.store import video_name
    from tokenflow.manager import blame
    from tokenflow.plan import build_job

    choices = stage_choices(stages, editor)
    pm, registry = plugins(pm, registry)
    config = RunConfig(steps=steps, batch_size=batch_size)
    params = flag_params(prompt=prompt, inversion_prompt=inversion_prompt,
                         negative_prompt=negative_prompt, guidance=guidance, seed=seed,
                         inversion_steps=inversion_steps)
    try:
        job = build_job(pm, source.model, source.frames, config, cache=cache_root(cache_dir),
                        registry=registry, choices=choices, params=params,
                        options=[tuple(o) for o in options], until=until, quiet=quiet,
                        runtime=runtime_options(unet_batch or auto_unet_batch(
                            source.model, len(source.frames), batch_size,
                            tuple(s // source.model.vae_scale_factor
                                  for s in source.frames.shape[1:3])), cache_budget))
    except EditError:
        raise
    except (ParamError, StageError) as exc:
        raise EditError(str(exc), usage=True) from exc
    except Exception as exc:  # a plugin's bug while the run is planned: one line, named
        culprit = blame(pm, exc, registry)
        where = f" in plugin {culprit}" if culprit else ""
        raise EditError(f"planning the run failed{where}: {type(exc).__name__}: "
                        f"{first_line(str(exc))} (--debug shows the traceback)") from exc
    job.base.on_progress = progress
    job.base.video = video_name(source.clip.source)  # recorded in the cache entries' metadata
    return job


def prompt_notes(job) -> list[str]:
    """``note:`` lines on the prompt words of a planned job that its model cannot use (the
    vocabulary a checkpoint declares, :mod:`tokenflow.models.vocabulary`); none without one."""
    vocabulary = job.base.model.vocabulary
    if vocabulary is None:
        return []
    prompt_of = {kind: getattr(stage.params, "prompt", None) for kind, stage in job.stages.items()}
    source = prompt_of.get(INVERSION) or ""
    return vocabulary.notes(prompt_of.get(EDITOR) or "", source)


# --------------------------------------------------------------------------------- running


def run_job(job, log: Log | None = None) -> dict:
    """Preflight, then run a planned job; any error becomes an :class:`EditError` whose message
    names the stage and the plugin whose code raised it."""
    job.base.log = log
    try:
        preflight(job, log)
        return job.run()
    except EditError:
        raise
    except (StageError, ParamError) as exc:
        raise EditError(str(exc)) from exc
    except Exception as exc:  # a bug, in a plugin or in tokenflow: one line, named
        raise EditError(job.failure_line(exc)) from exc


# --------------------------------------------------------------------------------- results


@dataclass
class EditResult:
    """What :func:`edit` returns: the planned job, every stage's result, the source, and (with
    ``out``) the output folder. ``frames``, ``record`` and the stores are read on demand."""

    job: Any
    results: dict[str, Any]
    source: Source
    out: Path | None = None
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    #: The outputs' size, as ``run.json`` says it: ``{"width", "height", "as"}``.
    output: dict[str, Any] | None = None
    #: With ``dry_run``: what the run would do (:class:`tokenflow.plan_report.RunPlan`); then
    #: ``results`` is empty.
    plan: Any = None

    @property
    def keys(self) -> dict[str, str]:
        """Every stage's cache key, by kind."""
        return dict(self.job.keys)

    def store(self, kind: str):
        """The Zarr group of a stage's store (read only)."""
        if kind not in self.results:
            raise KeyError(f"no {kind} store in this run; stores: {', '.join(self.results)}")
        return self.job.base.cache.open(self.results[kind].path)

    def dataset(self, kind: str, group: str | None = None):
        """A stage's store (or one of its groups) as an ``xarray.Dataset`` with named dims."""
        import xarray as xr

        return xr.open_zarr(str(self.results[kind].path), group=group, consolidated=False)

    @property
    def frames(self) -> np.ndarray:
        """The edited frames at the working size, ``(N, H, W, 3)`` uint8 (the padding the UNet
        needed cropped off; ``edited.mp4`` has them at the output size)."""
        frames = np.asarray(self.store(BLENDER)["frames"][...])
        return np.ascontiguousarray(self.source.crop(frames))

    @property
    def record(self) -> dict[str, Any]:
        """The run record (what ``run.json`` holds): parameters, model, keys, timings."""
        from tokenflow.outputs import run_record

        return run_record(self.job, self.results, self.source, output=self.output,
                          seconds=self.seconds)


def edit(video, *, prompt: str, editor: str | None = None, model=None, out=None,
         overwrite: bool = False, cache_dir=None, options: Sequence[tuple[str, Any]] | Mapping
         = (), stages: Mapping[str, str] | None = None, inversion_prompt: str | None = None,
         negative_prompt: str | None = None, guidance: float | None = None, seed: int | None = 1,
         steps: int = 50, inversion_steps: int | None = None, batch_size: int = 8,
         frames: int | None = None, stride: int = 1, size=None, device=None, dtype=None,
         revision: str | None = None, unet_batch: int | None = None, cache_budget=None,
         pm=None, registry=None, progress: Progress | None = None, log: Log | None = None,
         quiet: bool = True, output_size="source", dry_run: bool = False) -> EditResult:
    """Edit ``video`` to follow ``prompt`` with TokenFlow, as ``tf run`` does.

    ``video``: a video file or frame folder, a :class:`tokenflow.video.Video`, or a
    :class:`Source` from :func:`prepare` (then ``model`` and the frame options are its); ``model``:
    None (the embedded model), a diffusers directory or hub id, or a loaded
    :class:`tokenflow.models.Model`; ``editor``: an installed editor (default ``pnp``);
    ``options``: stage parameters as ``{"KEY": value}`` or ``[(KEY, value)]`` (``-o``);
    ``stages``: ``{kind: name}``; ``cache_budget``: bytes or a size (``"16G"``) above which
    the run says what shrinks the cache. ``out``: write the output folder there (``edited.mp4``,
    ``frames/``, ``run.json``, ...); an existing folder holding another run is refused unless
    ``overwrite``. ``output_size``: the size of those outputs, ``"source"`` (default),
    ``"working"``, a short side or ``"WxH"``/``(W, H)``. ``progress(description, done,
    total)`` is called as long stages advance;
    ``log(line)`` receives notes; ``quiet=False`` shows tqdm bars on stderr. Raises
    :class:`EditError`; every check that needs neither torch nor the model
    (:mod:`tokenflow.arguments`) runs before they load. ``dry_run``: plan only, with the model
    described from its files (:func:`tokenflow.models.describe_model`: no weights loaded) and
    nothing computed or written; the result's ``plan`` says what the run would do.
    """
    from tokenflow.arguments import check_run, flag_params
    from tokenflow.outputs import check_output_dir, output_entry, say_output_size, write_outputs

    start = time.perf_counter()
    if not str(prompt).strip():
        raise EditError("--prompt is empty: describe the edited video, e.g. "
                        "--prompt 'a red car on a snowy road'", usage=True)
    output_spec = output_request(output_size)
    notes: list[str] = []

    def note(text: str) -> None:
        notes.append(text)
        say(log, text)

    root = cache_root(cache_dir)
    pm, registry = plugins(pm, registry, log=note)
    pairs = list(options.items()) if isinstance(options, Mapping) else list(options)
    out = Path(out) if out is not None else None
    check_run(  # every check that needs no model, before torch and the model load
        video, pm=pm, registry=registry, model=video.model if isinstance(video, Source) else model,
        revision=revision, choices=stage_choices(stages, editor), options=pairs,
        params=flag_params(prompt=prompt, inversion_prompt=inversion_prompt,
                           negative_prompt=negative_prompt, guidance=guidance, seed=seed,
                           inversion_steps=inversion_steps),
        steps=steps, batch_size=batch_size, size=size, out=out, overwrite=overwrite)
    if dry_run and not isinstance(video, Source):
        model = described(model, revision=revision, device=device, dtype=dtype)
    source = video if isinstance(video, Source) else prepare(
        video, model=model, revision=revision, device=device, dtype=dtype, frames=frames,
        stride=stride, size=size, log=note)
    output = output_entry(source, output_spec)
    if out is not None:
        say_output_size(source, output, note)
    if source.model.prompt_truncated(prompt):
        note(f"note: the prompt is longer than {source.model.tokenizer.model_max_length} tokens "
             "and was truncated")
    job = plan_edit(source, prompt=prompt, editor=editor, stages=stages, options=pairs,
                    inversion_prompt=inversion_prompt, negative_prompt=negative_prompt,
                    guidance=guidance, seed=seed, steps=steps, inversion_steps=inversion_steps,
                    batch_size=batch_size, cache_dir=root, pm=pm, registry=registry,
                    unet_batch=unet_batch, cache_budget=cache_budget, quiet=quiet,
                    progress=progress)
    for line in prompt_notes(job):
        note(line)
    if out is not None:
        try:
            check_output_dir(out, job.keys[BLENDER], overwrite=overwrite)
        except FileExistsError as exc:
            raise EditError(str(exc), usage=True) from exc
    if dry_run:
        from tokenflow.plan_report import describe_job

        return EditResult(job=job, results={}, source=source, out=out, notes=notes,
                          seconds=time.perf_counter() - start,
                          plan=describe_job(job, out))
    try:
        results = run_job(job, note)
        result = EditResult(job=job, results=results, source=source, out=out, notes=notes,
                            output=output)
        result.seconds = time.perf_counter() - start
        if out is not None:
            write_outputs(out, job, results, source, output=result.output,
                          overwrite=overwrite, seconds=result.seconds)
    except FileExistsError as exc:
        raise EditError(str(exc)) from exc
    return result


def output_request(value) -> str | int | tuple[int, int]:
    """A parsed output size (``"source"``, ``"working"``, a short side, ``(W, H)``), checked
    before anything loads; a bad one is a usage error."""
    from tokenflow.sizes import parse_output_size
    from tokenflow.video import VideoError

    if isinstance(value, tuple) or (isinstance(value, int) and not isinstance(value, bool)):
        value = "x".join(map(str, value)) if isinstance(value, tuple) else str(value)
    try:
        return parse_output_size(value)
    except VideoError as exc:
        raise EditError(f"--output-size: {exc}", usage=True) from None


@dataclass
class InvertResult:
    """What :func:`invert` returns: the job, the inversion's and feature store's results, and
    the reconstruction check (``psnr``: per frame, mean, min, and the VAE's own) if asked."""

    job: Any
    results: dict[str, Any]
    source: Source
    psnr: dict[str, Any] | None = None

    @property
    def keys(self) -> dict[str, str]:
        return {k: r.key for k, r in self.results.items()}

    @property
    def paths(self) -> dict[str, str]:
        return {k: str(r.path) for k, r in self.results.items()}


def invert(video, *, model=None, check: bool = True, cache_dir=None,
           options: Sequence[tuple[str, Any]] = (), stages: Mapping[str, str] | None = None,
           inversion_prompt: str | None = None, steps: int = 50,
           inversion_steps: int | None = None, batch_size: int = 8, frames: int | None = None,
           stride: int = 1, size=None, device=None, dtype=None, revision: str | None = None,
           unet_batch: int | None = None, cache_budget=None, pm=None, registry=None,
           progress: Progress | None = None, log: Log | None = None,
           quiet: bool = True) -> InvertResult:
    """Run inversion and the feature store only (as ``tf invert``); with ``check``, regenerate
    from the inverted noise and report the reconstruction PSNR per frame."""
    from tokenflow.arguments import check_run, flag_params

    root = cache_root(cache_dir)
    pm, registry = plugins(pm, registry, log=log)
    check_run(video, pm=pm, registry=registry, model=model, revision=revision,
              choices=stage_choices(stages, None), options=list(options), until=FEATURES,
              params=flag_params(inversion_prompt=inversion_prompt,
                                 inversion_steps=inversion_steps),
              steps=steps, batch_size=batch_size, size=size)
    source = prepare(video, model=model, revision=revision, device=device, dtype=dtype,
                     frames=frames, stride=stride, size=size, log=log)
    job = plan_edit(source, stages=stages, options=list(options), seed=None,
                    inversion_prompt=inversion_prompt, steps=steps,
                    inversion_steps=inversion_steps, batch_size=batch_size, until=FEATURES,
                    cache_dir=root, pm=pm, registry=registry, unet_batch=unet_batch,
                    cache_budget=cache_budget, quiet=quiet, progress=progress)
    for line in prompt_notes(job):
        say(log, line)
    results = run_job(job, log)
    result = InvertResult(job=job, results=results, source=source)
    if check:
        from tokenflow.editing.reconstruction import reconstruction_check

        result.psnr = reconstruction_check(job, results, crop=source.crop)
    return result


__all__ = ["EditError", "EditResult", "InvertResult", "Source", "described", "edit", "invert",
           "plan_edit", "prepare", "run_job"]
