"""Timestep grids without torch (``tokenflow.editing.grids``): the same timesteps as diffusers'
DDIMScheduler; a grid past the last training timestep (1000 steps on SD's schedule) is refused
with the most steps that run; an inversion that does not hold the editing grid is refused with the
real rule and the inversion step counts that work (150 and 300 do not for 50 editing steps)."""

from __future__ import annotations

import pytest
from diffusers import DDIMScheduler

from tokenflow.editing.grids import (
    check_grid,
    check_inversion_grid,
    inversion_steps_for,
    timestep_grid,
)
from tokenflow.models import SD_SCHEDULER_CONFIG

STEP_COUNTS = [1, 2, 3, 7, 49, 50, 51, 99, 100, 150, 300, 333, 500, 501, 998, 999]


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("offset", [0, 1])
def test_grids_are_diffusers_grids(spacing: str, offset: int) -> None:
    config = {**SD_SCHEDULER_CONFIG, "timestep_spacing": spacing, "steps_offset": offset}
    scheduler = DDIMScheduler.from_config(config)
    for steps in STEP_COUNTS + [1000]:
        scheduler.set_timesteps(steps)
        expected = [int(t) for t in scheduler.timesteps]
        if max(expected) >= 1000 or min(expected) < 0:  # diffusers gives it; no model runs it
            with pytest.raises(ValueError, match="past the last|before the first"):
                timestep_grid(config, steps)
        else:
            assert timestep_grid(config, steps) == expected, steps


def test_1000_steps_on_sds_schedule_are_refused_with_the_most_that_run() -> None:
    with pytest.raises(ValueError) as info:
        check_grid(SD_SCHEDULER_CONFIG, 1000)
    assert str(info.value) == ("--steps 1000: a 1000-step grid reaches timestep 1000, past the last "
                               "of the model's 1000 training timesteps (999); use at most 999 steps")
    check_grid(SD_SCHEDULER_CONFIG, 999)
    with pytest.raises(ValueError, match="--inversion-steps 1000: .* use at most 999 steps"):
        check_inversion_grid(SD_SCHEDULER_CONFIG, 50, 1000)
    trailing = {**SD_SCHEDULER_CONFIG, "timestep_spacing": "trailing"}
    assert timestep_grid(trailing, 1000)[0] == 999  # another schedule runs all 1000


@pytest.mark.parametrize("inversion_steps", [150, 300, 400, 48])
def test_an_inversion_grid_that_misses_editing_timesteps_says_the_real_rule(
        inversion_steps: int) -> None:
    with pytest.raises(ValueError) as info:
        check_inversion_grid(SD_SCHEDULER_CONFIG, 50, inversion_steps)
    message = str(info.value)
    assert message.startswith(f"--inversion-steps {inversion_steps} does not fit --steps 50: "
                              "editing timesteps 981")
    assert "every editing timestep must be one" in message
    assert message.endswith("--steps 50 works with --inversion-steps 50, 99-100, 197-200, "
                            "246-250, 491-500 or 981-999")
    assert "multiple" not in message


def test_the_listed_inversion_step_counts_are_exactly_those_that_work() -> None:
    editing = set(timestep_grid(SD_SCHEDULER_CONFIG, 50))
    fitting = inversion_steps_for(SD_SCHEDULER_CONFIG, 50)
    assert {100, 200, 250, 500} <= set(fitting) and not {150, 300, 1000} & set(fitting)
    for n in range(1, 1000):
        holds = editing <= set(timestep_grid(SD_SCHEDULER_CONFIG, n))
        assert holds == (n in fitting), n
        if holds:
            check_inversion_grid(SD_SCHEDULER_CONFIG, 50, n)
