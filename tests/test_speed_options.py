"""Speed options that change outputs (docs/benchmarks.md, "Speed options that change outputs"):
each does what it says when on, and is off by default.

* ``blender.reuse_keyframes``: the propagation calls hold no keyframe; the keyframes step with the
  keyframe call's own prediction; a step costs 2·N frame-evaluations instead of 2·(N+K).
* ``editor.cfg_from`` / ``editor.cfg_until``: outside the window every call of a step has one
  branch, the conditional one, and its output is integrated as it is (no guidance).

A spy on ``EditRun.call_unet`` records every UNet call of the editing loop; the runs share one
cache, so the upstream stages are computed once for the module.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import zarr
from tokenflow_plugins.tokenflow_blender import TokenFlowBlendParams

from tokenflow.editing.editors import PnPParams, TextParams
from tokenflow.editing.loop import EditRun
from tokenflow.manager import make_plugin_manager
from tokenflow.params import ParamError
from tokenflow.testing import make_job, synthetic_frames

N, B, STEPS = 7, 3, 4          # a last chunk of one frame: with reuse it has nothing to predict
K = -(-N // B)
PROMPT = "a blue ball"


@dataclass
class Call:
    timestep: int
    n_branches: int
    frames: int          # frames of the call (per branch)
    provide: bool        # a propagation call (the blender's)
    latents: torch.Tensor
    text: torch.Tensor


@dataclass
class Run:
    calls: list[Call]
    stats: dict[str, Any]
    timesteps: list[int]
    keyframes: np.ndarray
    latents: np.ndarray        # blender: (steps, N, c, h, w) after each step
    model_output: np.ndarray   # editor: (steps, K, c, h, w)
    frames: np.ndarray
    keys: dict[str, str]
    job: Any


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("speed-options") / "cache"


@pytest.fixture(scope="module")
def frames() -> np.ndarray:
    return synthetic_frames(N, height=64, width=64)


def _job(model, frames, cache, options=(), editor=None):
    return make_job(make_plugin_manager(), model, frames, cache=cache, steps=STEPS, batch_size=B,
                    editor=editor, params={"inversion": {"inversion_steps": STEPS},
                                           "editor": {"prompt": PROMPT}},
                    options=list(options))


def _run(model, frames, cache, options=(), editor=None) -> Run:
    calls: list[Call] = []
    call_unet = EditRun.call_unet

    def spy(self, latents, t, text, **kwargs):
        calls.append(Call(timestep=int(t), n_branches=int(kwargs["n_branches"]),
                          frames=int(latents.shape[0]), provide=kwargs.get("provide") is not None,
                          latents=latents.detach().clone(), text=text.detach().clone()))
        return call_unet(self, latents, t, text, **kwargs)

    job = _job(model, frames, cache, options, editor)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(EditRun, "call_unet", spy)
        results = job.run()
    assert not results["blender"].cached
    blender = zarr.open_group(str(results["blender"].path), mode="r")
    editor_store = zarr.open_group(str(results["editor"].path), mode="r")
    keyframes = zarr.open_group(str(results.get("keyframes").path), mode="r") \
        if "keyframes" in results else None
    return Run(calls=calls, stats=dict(blender.attrs["stats"]),
               timesteps=[int(t) for t in blender["timestep"][...]],
               keyframes=np.asarray(keyframes["keyframes"][...]) if keyframes is not None
               else np.empty(0),
               latents=np.asarray(blender["latents"][...]),
               model_output=np.asarray(editor_store["model_output"][...]),
               frames=np.asarray(blender["frames"][...]), keys=dict(job.keys), job=job)


@pytest.fixture(scope="module")
def default(tf_tiny_model, frames, cache) -> Run:
    return _run(tf_tiny_model, frames, cache)


@pytest.fixture(scope="module")
def reuse(tf_tiny_model, frames, cache) -> Run:
    return _run(tf_tiny_model, frames, cache, [("blender.reuse_keyframes", "true")])


@pytest.fixture(scope="module")
def window(tf_tiny_model, frames, cache) -> Run:
    # int(0.25 * 4) = 1, int(0.75 * 4) = 3: guidance at step indices 1 and 2 only
    return _run(tf_tiny_model, frames, cache, [("editor.cfg_from", "0.25"),
                                               ("editor.cfg_until", "0.75")])


def _per_step(run: Run) -> dict[int, list[Call]]:
    out: dict[int, list[Call]] = {}
    for call in run.calls:
        out.setdefault(run.timesteps.index(call.timestep), []).append(call)
    return out


# ----------------------------------------------------------------------------------- the default


def test_by_default_every_call_has_two_branches_and_propagation_covers_every_frame(
        default: Run) -> None:
    for i, calls in _per_step(default).items():
        assert [c.n_branches for c in calls] == [2] * len(calls), i
        assert [c.frames for c in calls if c.provide] == [3, 3, 1], i
    assert default.stats["unet_frame_evals"] == 2 * STEPS * (N + K)
    assert default.stats["unet_calls"] == STEPS * (1 + K)


def test_opt_in_fields_at_their_default_stay_out_of_the_key() -> None:
    assert TokenFlowBlendParams().key_dict() == {"weights": "reference"}
    assert set(TextParams().key_dict()) == {"prompt", "negative_prompt", "guidance_scale"}
    assert "cfg_until" not in PnPParams().key_dict()
    assert PnPParams(cfg_until=0.5).key_dict()["cfg_until"] == 0.5
    assert TokenFlowBlendParams(reuse_keyframes=True).key_dict()["reuse_keyframes"] is True
    assert "reuse_keyframes" in TokenFlowBlendParams().as_dict()  # run.json shows it


def test_the_options_change_the_editor_and_blender_keys_only(default: Run, reuse: Run,
                                                             window: Run) -> None:
    for other in (reuse, window):
        changed = {k for k in default.keys if default.keys[k] != other.keys[k]}
        assert changed == {"editor", "blender"}


# ------------------------------------------------------------------------------ keyframe reuse


def test_reuse_leaves_the_keyframes_out_of_every_propagation_call(reuse: Run) -> None:
    chunks = [list(range(s, min(s + B, N))) for s in range(0, N, B)]
    for i, calls in _per_step(reuse).items():
        keyframes = [int(f) for f in reuse.keyframes[i]]
        edit, *predict = calls
        assert (edit.provide, edit.frames, edit.n_branches) == (False, K, 2)
        # one call per chunk that has a frame besides its keyframe; the 1-frame chunk has none
        assert [c.provide for c in predict] == [True] * 2
        assert [c.frames for c in predict] == [B - 1, B - 1], i
        expected = [f for chunk in chunks for f in chunk if f not in keyframes]
        got = torch.cat([c.latents for c in predict])
        before = torch.from_numpy(reuse.latents[i - 1]) if i else None
        if before is not None:  # the calls hold exactly the non-keyframes, in order
            torch.testing.assert_close(got, before[expected], rtol=0, atol=0)


def test_reuse_counts_two_frame_evaluations_per_frame_and_step(reuse: Run) -> None:
    assert reuse.stats["unet_frame_evals"] == 2 * STEPS * N
    assert reuse.stats["unet_calls"] == STEPS * (1 + 2)


def test_reuse_steps_the_keyframes_with_the_keyframe_calls_prediction(reuse: Run,
                                                                      default: Run) -> None:
    sched = reuse.job.base.model.scheduler
    from diffusers import DDIMScheduler

    ddim = DDIMScheduler.from_config(sched.config)
    ddim.set_timesteps(STEPS)
    for i in range(1, STEPS):
        keyframes = [int(f) for f in reuse.keyframes[i]]
        x = torch.from_numpy(reuse.latents[i - 1][keyframes])
        eps = torch.from_numpy(reuse.model_output[i])
        want = ddim.step(eps, reuse.timesteps[i], x, eta=0.0, return_dict=False)[0]
        torch.testing.assert_close(torch.from_numpy(reuse.latents[i][keyframes]), want)
    # and the default propagates into the keyframes instead: not the same latents
    i = 1
    keyframes = [int(f) for f in default.keyframes[i]]
    x = torch.from_numpy(default.latents[i - 1][keyframes])
    eps = torch.from_numpy(default.model_output[i])
    own = ddim.step(eps, default.timesteps[i], x, eta=0.0, return_dict=False)[0]
    assert not torch.allclose(torch.from_numpy(default.latents[i][keyframes]), own, atol=1e-5)


# --------------------------------------------------------------------------------- CFG window


def test_outside_the_window_every_call_has_one_branch_with_the_target_prompt(
        window: Run, tf_tiny_model) -> None:
    _, cond = tf_tiny_model.encode_prompts(["ugly, blurry, low res, unrealistic, unaesthetic",
                                            PROMPT])
    per_step = _per_step(window)
    for i, calls in per_step.items():
        branches = 2 if i in (1, 2) else 1
        assert [c.n_branches for c in calls] == [branches] * (1 + K), i
        for c in calls:
            assert c.text.shape[0] == branches
            torch.testing.assert_close(c.text[-1], cond, rtol=0, atol=0)


def test_the_window_counts_one_frame_evaluation_per_frame_outside_it(window: Run) -> None:
    assert window.stats["unet_frame_evals"] == (2 * 2 + 1 * 2) * (N + K)


def test_an_empty_window_makes_the_guidance_scale_irrelevant(tf_tiny_model, frames,
                                                             cache) -> None:
    """No guided step at all: the edit is the conditional branch's alone, whatever the scale;
    with guidance on, the scale matters."""
    none = [("editor.cfg_from", "0"), ("editor.cfg_until", "0")]
    a = _run(tf_tiny_model, frames, cache, [*none, ("editor.guidance_scale", "7.5")])
    b = _run(tf_tiny_model, frames, cache, [*none, ("editor.guidance_scale", "2")])
    np.testing.assert_array_equal(a.latents, b.latents)
    assert a.stats["unet_frame_evals"] == STEPS * (N + K)
    c = _run(tf_tiny_model, frames, cache, [("editor.guidance_scale", "2")])
    assert not np.allclose(c.latents, a.latents)


def test_the_window_applies_to_the_per_frame_editors_too(tf_tiny_model, frames, cache) -> None:
    run = _run(tf_tiny_model, frames, cache, [("editor.cfg_until", "0.5")], editor="pnp-frames")
    branches = [c.n_branches for c in run.calls]
    per_step = len(branches) // STEPS
    assert branches == [2] * (2 * per_step) + [1] * (2 * per_step)
    assert run.stats["unet_frame_evals"] == (2 + 2 + 1 + 1) * N


@pytest.mark.parametrize("options", [[("editor.cfg_from", "0.6"), ("editor.cfg_until", "0.4")],
                                     [("editor.cfg_until", "1.5")],
                                     [("editor.cfg_from", "-0.1")]])
def test_a_bad_window_is_a_one_line_error(options, tf_tiny_model, frames, cache) -> None:
    with pytest.raises(ParamError, match="cfg_from .* cfg_until") as err:
        _job(tf_tiny_model, frames, cache, options)
    assert "\n" not in str(err.value)


def test_a_bad_window_is_refused_by_the_sdedit_editor_too(tf_tiny_model, frames, cache) -> None:
    with pytest.raises(ParamError, match="cfg_from"):
        _job(tf_tiny_model, frames, cache, [("editor.cfg_from", "0.9"),
                                            ("editor.cfg_until", "0.1")], editor="sdedit")
