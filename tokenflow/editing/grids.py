"""DDIM timestep grids from a scheduler config, without torch, and the rules a run's grids must
follow: checked before the model loads.

:func:`timestep_grid` computes the timesteps diffusers' ``DDIMScheduler.set_timesteps`` gives
(``timestep_spacing`` ``leading``, ``trailing`` or ``linspace``; the test suite compares the two).
A grid is usable when every timestep is one the model was trained on (``0 ..
num_train_timesteps - 1``): with Stable Diffusion's ``leading`` spacing and ``steps_offset`` 1, a
1000-step grid reaches timestep 1000 and is not. An inversion serves an editing grid when every
editing timestep is on the inversion grid; with ``leading`` spacing that means ``T //
inversion_steps`` divides ``T // steps`` and the inversion grid reaches the editing grid's
noisiest timestep, so for 50 editing steps on SD's schedule 100, 200, 250 or 500 inversion steps
work and 150 or 300 do not (:func:`check_inversion_grid` lists the counts that do).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

#: diffusers' defaults for the keys a scheduler config may lack.
_DEFAULTS = {"num_train_timesteps": 1000, "timestep_spacing": "leading", "steps_offset": 0}


def _setting(config: Mapping[str, Any], name: str) -> Any:
    value = config.get(name)
    return _DEFAULTS[name] if value is None else value


def _grid(config: Mapping[str, Any], steps: int) -> np.ndarray:
    """The grid as diffusers computes it, noisiest first, unchecked."""
    total = int(_setting(config, "num_train_timesteps"))
    spacing = _setting(config, "timestep_spacing")
    if spacing == "linspace":
        return np.linspace(0, total - 1, steps).round()[::-1].astype(np.int64)
    if spacing == "leading":
        ratio = total // steps
        return (np.arange(0, steps) * ratio).round()[::-1].astype(np.int64) \
            + int(_setting(config, "steps_offset"))
    if spacing == "trailing":
        return np.round(np.arange(total, 0, -total / steps)).astype(np.int64) - 1
    raise ValueError(f"timestep_spacing {spacing!r} is not supported (leading, trailing or linspace)")


def _problem(config: Mapping[str, Any], steps: int) -> str | None:
    """Why a ``steps``-step grid cannot run on this schedule, or None."""
    total = int(_setting(config, "num_train_timesteps"))
    if steps < 1:
        return "needs at least 1 step"
    if steps > total:
        return f"has more steps than the model's {total} training timesteps"
    grid = _grid(config, steps)
    if grid.max() >= total:
        return (f"reaches timestep {int(grid.max())}, past the last of the model's {total} "
                f"training timesteps ({total - 1})")
    if grid.min() < 0:
        return f"reaches timestep {int(grid.min())}, before the first training timestep (0)"
    return None


def timestep_grid(config: Mapping[str, Any], steps: int) -> list[int]:
    """The timesteps of a ``steps``-step DDIM grid, noisiest first, from a scheduler config (a
    dict such as ``model.scheduler.config``), as diffusers' ``DDIMScheduler`` computes them.
    :class:`ValueError` for a grid the model cannot run."""
    problem = _problem(config, steps)
    if problem is not None:
        raise ValueError(f"a {steps}-step grid {problem}")
    return [int(t) for t in _grid(config, steps)]


def _ranges(values: list[int]) -> str:
    """``1, 3-5, 9`` for [1, 3, 4, 5, 9]; the last two joined with ``or``."""
    runs: list[list[int]] = []
    for v in values:
        if runs and v == runs[-1][1] + 1:
            runs[-1][1] = v
        else:
            runs.append([v, v])
    parts = [f"{a}" if a == b else f"{a}-{b}" for a, b in runs]
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " or " + parts[-1]


def check_grid(config: Mapping[str, Any], steps: int, flag: str = "--steps") -> None:
    """:class:`ValueError` naming ``flag`` and the most steps the schedule allows, unless a
    ``steps``-step grid can run on it."""
    problem = _problem(config, steps)
    if problem is None:
        return
    most = next((n for n in range(min(steps, int(_setting(config, "num_train_timesteps"))), 0, -1)
                 if _problem(config, n) is None), 0)
    raise ValueError(f"{flag} {steps}: a {steps}-step grid {problem}; use at most {most} steps")


def inversion_steps_for(config: Mapping[str, Any], steps: int) -> list[int]:
    """Every inversion step count whose grid holds the ``steps``-step editing grid."""
    editing = set(timestep_grid(config, steps))
    total = int(_setting(config, "num_train_timesteps"))
    return [n for n in range(1, total + 1)
            if _problem(config, n) is None and editing <= set(_grid(config, n).tolist())]


def check_inversion_grid(config: Mapping[str, Any], steps: int, inversion_steps: int) -> None:
    """:class:`ValueError` unless an inversion of ``inversion_steps`` steps serves an editing
    grid of ``steps`` steps (every editing timestep on the inversion grid); the message lists
    the inversion step counts that do."""
    check_grid(config, inversion_steps, "--inversion-steps")
    missing = sorted(set(timestep_grid(config, steps)) - set(timestep_grid(config, inversion_steps)),
                     reverse=True)
    if not missing:
        return
    fitting = inversion_steps_for(config, steps)
    shown = ", ".join(map(str, missing[:3])) + (", ..." if len(missing) > 3 else "")
    raise ValueError(
        f"--inversion-steps {inversion_steps} does not fit --steps {steps}: editing timesteps "
        f"{shown} are not on the {inversion_steps}-step inversion grid (every editing timestep "
        f"must be one); on this model's schedule ({_setting(config, 'timestep_spacing')} spacing "
        f"of {_setting(config, 'num_train_timesteps')} timesteps) --steps {steps} works with "
        f"--inversion-steps {_ranges(fitting)}")


__all__ = ["check_grid", "check_inversion_grid", "inversion_steps_for", "timestep_grid"]
