"""``benchmarks/fullsize.py`` without running it: its configs are SD 1.5's (parameter counts on
the ``meta`` device), its cache extrapolation scales only the dimensions that grow, and its
model directory is reused only when complete; ``build_tiny_model`` takes the overrides it uses."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def fullsize():
    sys.path.insert(0, str(BENCHMARKS))  # it imports its sibling measure.py
    try:
        spec = importlib.util.spec_from_file_location("fullsize_benchmark",
                                                      BENCHMARKS / "fullsize.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.path.remove(str(BENCHMARKS))


def test_the_configs_have_sd15s_published_parameter_counts(fullsize) -> None:
    assert fullsize.parameter_counts() == {"unet": 859_520_964, "vae": 83_653_863,
                                           "text_encoder": 123_060_480}
    assert fullsize.SD15_PARAMETERS == fullsize.parameter_counts()


def test_extrapolation_scales_frames_keyframes_and_timesteps_only(fullsize) -> None:
    arrays = [
        ("g/tokens", ("timestep", "frame", "layer", "token", "channel"), (2, 4, 5, 64, 8), 1000),
        ("g/conv", ("conv_timestep", "frame", "conv_layer", "channel", "y", "x"),
         (1, 4, 1, 8, 4, 4), 100),
        ("keyframes", ("timestep", "chunk"), (2, 2), 10),
        ("g/layer", ("layer",), (5,), 7),
    ]
    same = fullsize.dim_targets(4, 2, 2, conv_t=0.8)
    assert same == {"frame": 4, "keyframe": 2, "chunk": 2, "timestep": 2, "conv_timestep": 1}
    assert fullsize.extrapolate(arrays, 50, same) == 50 + 1000 + 100 + 10 + 7
    target = fullsize.dim_targets(40, 50, 8, conv_t=0.8)  # K = 5, 40 conv timesteps
    expected = 50 + 1000 * 25 * 10 + 100 * 40 * 10 + 10 * 25 * 2.5 + 7
    assert fullsize.extrapolate(arrays, 50, target) == pytest.approx(expected)


def test_frame_evaluation_counts_follow_the_issue_formulas(fullsize) -> None:
    assert fullsize.tokenflow_evals(40, 50, 50, 8) == {"inversion": 2000, "features": 2000,
                                                       "loop": 4500}
    assert fullsize.tokenflow_evals(5, 2, 2, 2)["loop"] == 2 * 2 * (5 + 3)  # a short last chunk
    assert fullsize.released_evals(40, 500, 50, 8) == 2 * 40 * 500 + 3 * 50 * 45


def test_the_model_directory_is_built_once_and_never_taken_half_built(fullsize, tmp_path) -> None:
    built = []

    def builder(path: Path, spec: dict) -> None:
        built.append(path.name)
        path.mkdir()
        (path / "weights").write_text(str(spec["seed"]))

    target = tmp_path / "sd15"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    stale = tmp_path / f"sd15.partial-{dead}"  # an interrupted build by a process now gone
    stale.mkdir()
    assert fullsize.ensure_model(target, builder=builder, log=lambda _: None) == target
    assert (target / "weights").read_text() == "0" and not stale.exists()
    fullsize.ensure_model(target, builder=builder, log=lambda _: None)
    assert len(built) == 1  # reused
    fullsize.ensure_model(target, seed=1, builder=builder, log=lambda _: None)
    assert len(built) == 2 and (target / "weights").read_text() == "1"  # another seed: rebuilt
    (target / fullsize.MARKER).unlink()  # no marker: not complete
    fullsize.ensure_model(target, seed=1, builder=builder, log=lambda _: None)
    assert len(built) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sd15"]

    def failing(path: Path, spec: dict) -> None:
        path.mkdir()
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        fullsize.ensure_model(tmp_path / "other", builder=failing, log=lambda _: None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sd15"]


def test_build_tiny_model_takes_text_encoder_and_scheduler_overrides() -> None:
    from tokenflow.testing.tiny import build_tiny_model

    parts = build_tiny_model(text_encoder={"num_hidden_layers": 1, "hidden_size": 32,
                                           "intermediate_size": 64},
                             scheduler={"beta_end": 0.02})
    assert parts["text_encoder"].config.num_hidden_layers == 1
    assert parts["text_encoder"].config.hidden_size == 32
    assert parts["scheduler"].config.beta_end == 0.02
    default = build_tiny_model()
    assert default["text_encoder"].config.num_hidden_layers == 2
    assert default["scheduler"].config.beta_end == 0.012
