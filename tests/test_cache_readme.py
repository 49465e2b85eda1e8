"""cache/README.md's xarray recipe runs as written, without a warning, on the stores of a ``tf
run`` of ``examples/clips/rolling_ball.mp4`` on the embedded model (a few steps and frames)."""

from __future__ import annotations

import json
import os
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import zarr
from helpers import cli_env

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "cache" / "README.md"
LAYER = "up_blocks.2.attentions.0.transformer_blocks.0.attn1"


def recipe_blocks() -> list[str]:
    """The python code blocks of cache/README.md."""
    return re.findall(r"^```python\n(.*?)^```", README.read_text(), re.S | re.M)


@pytest.fixture(scope="module")
def ran(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The directory where ``tf run examples/clips/rolling_ball.mp4`` ran with the default --out and
    --cache-dir (out/rolling_ball, cache/), as the recipe expects."""
    from click.testing import CliRunner

    from tokenflow.cli import cli

    where = tmp_path_factory.mktemp("readme")
    before = os.getcwd()
    os.chdir(where)
    try:
        result = CliRunner().invoke(
            cli, ["run", str(ROOT / "examples" / "clips" / "rolling_ball.mp4"),
                  "--prompt", "a red ball",
                  "--steps", "2", "--inversion-steps", "2", "--frames", "4", "--batch-size", "2",
                  "-q"], env=cli_env(where))
    finally:
        os.chdir(before)
    assert result.exit_code == 0, result.output
    assert (where / "out" / "rolling_ball" / "run.json").is_file()
    return where


def test_the_readme_has_a_recipe() -> None:
    (block,) = recipe_blocks()
    assert 'attrs["groups"][layer]' in block and 'group="64x64x320"' not in block


def test_the_recipe_runs_as_written_on_the_embedded_model_without_a_warning(
        ran: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    from tokenflow.cache.layouts import FeatureReader

    monkeypatch.chdir(ran)
    namespace: dict = {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # whatever pytest's configuration filters
        for block in recipe_blocks():
            exec(compile(block, str(README), "exec"), namespace)  # noqa: S102 - our own docs
    assert [str(w.message) for w in caught] == []
    assert "12x12x64" in capsys.readouterr().out  # print(tree) shows the groups

    run = json.loads((ran / "out" / "rolling_ball" / "run.json").read_text())
    assert run["model"]["id"] == "embedded"
    assert namespace["group"] == "12x12x64" and namespace["grid"].shape == (12, 12, 64)
    # the recipe's decoding equals what tokenflow reads
    reader = FeatureReader(zarr.open_group(run["cache"]["features"]["path"], mode="r"))
    np.testing.assert_allclose(namespace["grid"].reshape(144, 64),
                               reader.tokens(0, LAYER, [0])[0].numpy(), atol=1e-6)
    keyframes = zarr.open_group(run["cache"]["keyframes"]["path"], mode="r")["keyframes"][0]
    assert set(namespace["refs"].tolist()) <= set(keyframes.tolist())
    assert namespace["taken"].shape == (144,) and 0 <= namespace["taken"].min() <= \
        namespace["taken"].max() < 144
    frames = zarr.open_group(run["cache"]["blender"]["path"], mode="r")["frames"]
    np.testing.assert_array_equal(namespace["first"], frames[0])
