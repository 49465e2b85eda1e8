"""Checking a run's arguments before anything heavy loads: no torch, no model, no frames.

Everything that can be known from the arguments, the installed stages' parameter classes and the
checkpoint's files is checked here, so that a mistake is reported in about a second instead of
after torch and the model load: the video's path, ``--size``, the model's path, the output
folder, the stages and every parameter (``-o`` names, types and ranges, what the model's
``tokenflow.json`` suggests, what stages impose upstream), the stages' ``check`` methods that need
no model (:func:`tokenflow.plan.run_checks`), and the editing grid against the model's
scheduler. Every failure is an :class:`~tokenflow.preflight.EditError` with ``usage`` True (exit
2), but for a plugin's own bug.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tokenflow.oneline import first_line
from tokenflow.params import ParamError
from tokenflow.preflight import EditError
from tokenflow.stages import BLENDER, RunConfig, StageError


@dataclass
class CheckedRun:
    """What the checks found: the model's :class:`~tokenflow.models.checkpoints.Checkpoint`
    (None for a Hub model that is not on this machine), the stages planned from the arguments
    and where each parameter's value comes from (``{kind: {param: source}}``)."""

    checkpoint: Any
    stages: dict[str, Any]
    sources: dict[str, dict[str, str]] = field(default_factory=dict)


def flag_params(*, prompt: str | None = None, inversion_prompt: str | None = None,
                negative_prompt: str | None = None, guidance: float | None = None,
                seed: int | None = None, inversion_steps: int | None = None
                ) -> dict[str, dict[str, Any]]:
    """The stage parameters the dedicated flags set, ``{kind: {param: value}}`` (None: not
    given)."""
    return {
        "inversion": {"prompt": inversion_prompt, "inversion_steps": inversion_steps},
        "keyframes": {"seed": seed},
        "editor": {"prompt": prompt, "negative_prompt": negative_prompt, "guidance_scale": guidance},
    }


def check_video(video) -> None:
    """A video path that does not exist, cannot be read or is of an unsupported type (a usage
    error); anything but a path (frames already read) passes."""
    if not isinstance(video, (str, os.PathLike)):
        return
    from tokenflow.video import VideoError, check_source

    try:
        check_source(video)
    except VideoError as exc:
        raise EditError(str(exc), usage=True) from exc


def check_size(size) -> int | tuple[int, int] | None:
    """``size`` parsed (``"512"``, ``"768x512"``), or a usage error."""
    if not isinstance(size, str):
        return size
    from tokenflow.sizes import parse_size
    from tokenflow.video import VideoError

    try:
        return parse_size(size)
    except VideoError as exc:
        raise EditError(f"--size: {exc}", usage=True) from exc


def read_model(model, revision: str | None = None):
    """The model's :class:`~tokenflow.models.checkpoints.Checkpoint` read from its files (a
    loaded model's own), or None for a Hub model not on this machine; a usage error for a path
    that is not a checkpoint."""
    from tokenflow.models.checkpoints import ModelError, read_checkpoint

    if model is not None and not isinstance(model, (str, os.PathLike)):
        return getattr(model, "checkpoint", None)  # a loaded Model
    try:
        return read_checkpoint(model, revision)
    except ModelError as exc:
        raise EditError(str(exc), usage=True) from exc


def check_out(out, *, overwrite: bool) -> None:
    """The output folder: not a file, and not a folder of something else (unless ``overwrite``);
    whether it holds another run's outputs is known once the keys are."""
    if out is None:
        return
    from tokenflow.outputs import check_output_dir

    try:
        check_output_dir(Path(out), None, overwrite=overwrite)
    except FileExistsError as exc:
        raise EditError(str(exc), usage=True) from exc


def check_run(video, *, pm, registry, model=None, revision: str | None = None,
              choices: Mapping[str, str] | None = None,
              params: Mapping[str, Mapping[str, Any]] | None = None,
              options: list[tuple[str, Any]] = (), until: str = BLENDER, steps: int = 50,
              batch_size: int = 8, size=None, out=None, overwrite: bool = False) -> CheckedRun:
    """Every check of a run that needs neither torch nor the model's weights (see the module's
    docstring); the arguments are :func:`tokenflow.api.edit`'s (``choices``: ``{kind: name}``,
    ``params``: :func:`flag_params`). Raises :class:`EditError`."""
    from tokenflow.editing.grids import check_grid
    from tokenflow.manager import blame
    from tokenflow.plan import plan, run_checks

    check_video(video)
    check_size(size)
    check_out(out, overwrite=overwrite)
    checkpoint = read_model(model, revision)
    config = RunConfig(steps=steps, batch_size=batch_size)
    sources: dict[str, dict[str, str]] = {}
    if checkpoint is not None:
        try:
            check_grid(checkpoint.scheduler_config, steps)
        except ValueError as exc:
            raise EditError(str(exc), usage=True) from exc
    try:
        stages = plan(registry, config, choices=choices, params=params,
                      options=[tuple(o) for o in options], until=until,
                      defaults=checkpoint.defaults if checkpoint is not None else None,
                      sources=sources)
        run_checks(stages, pm=pm, config=config, checkpoint=checkpoint, before_model=True)
    except (ParamError, StageError) as exc:
        raise EditError(str(exc), usage=True) from exc
    except Exception as exc:  # a plugin's bug in its Params, upstream_params or check: named
        culprit = blame(pm, exc, registry)
        where = f" in plugin {culprit}" if culprit else ""
        raise EditError(f"checking the run's arguments failed{where}: {type(exc).__name__}: "
                        f"{first_line(str(exc))} (--debug shows the traceback)") from exc
    return CheckedRun(checkpoint=checkpoint, stages=stages, sources=sources)


__all__ = ["CheckedRun", "check_out", "check_run", "check_size", "check_video", "flag_params",
           "read_model"]
