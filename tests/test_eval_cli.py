"""``tf eval`` and ``tf compare`` end to end: alignment, true flow, outputs, errors."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from tokenflow.cli import cli
from tokenflow.eval.compare import parse_method
from tokenflow.frame_figures import FOOTER, LABEL_WIDTH
from tokenflow.testing import synthetic_frames
from tokenflow.video import read_video, write_frames

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))
import motion_clips  # noqa: E402

ENV = {"HF_HUB_OFFLINE": "1", "TOKENFLOW_LOAD_PLUGINS": None, "TOKENFLOW_CACHE_DIR": None}


def _invoke(*args: str, env: dict | None = None):
    return CliRunner().invoke(cli, [str(a) for a in args], env={**ENV, **(env or {})})


def _json(result) -> dict:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def translate(tmp_path_factory) -> dict:
    """A known-motion clip (world v2's camera pan: a sub-pixel translation) as PNG frames plus
    its true flows."""
    clip = replace(motion_clips.CLIPS["pan"], frames=10, height=48, width=64)
    paths = motion_clips.save_clip(clip, tmp_path_factory.mktemp("motion"), "pan")
    return {"clip": clip, **paths}


def test_identical_videos_score_perfect_structure(translate) -> None:
    doc = _json(_invoke("eval", translate["frames"], translate["frames"], "--json"))
    agg = doc["aggregate"]
    assert agg["structure_flow_epe"] == 0.0 and agg["structure_edges"] == 1.0
    assert agg["flicker_ratio"] == 1.0
    assert agg["warp_error"] == pytest.approx(agg["warp_error_source"])
    assert doc["alignment"] == "none (same frames and size)"


def test_true_flow_gives_near_zero_warp_error_and_flicker_a_large_one(translate, tmp_path) -> None:
    true = _json(_invoke("eval", translate["frames"], translate["frames"], "--true-flow",
                         translate["flow"], "--json"))
    estimated = _json(_invoke("eval", translate["frames"], translate["frames"], "--json"))
    assert true["flow"].startswith("true")
    # bilinear resampling of anti-aliased edges only (measured 4.1e-4 at this size)
    assert true["aggregate"]["warp_error"] < 1e-3
    frames = read_video(translate["frames"]).frames
    rng = np.random.default_rng(0)
    gains = rng.uniform(0.6, 1.0, size=(len(frames), 1, 1, 3))
    flickering = tmp_path / "flicker"
    write_frames(flickering, np.clip(frames * gains, 0, 255).astype(np.uint8))
    bad = _json(_invoke("eval", translate["frames"], flickering, "--true-flow", translate["flow"],
                        "--json"))
    assert bad["aggregate"]["warp_error"] > 20 * true["aggregate"]["warp_error"]
    assert bad["aggregate"]["warp_error"] > 10 * estimated["aggregate"]["warp_error"]


def test_alignment_follows_stride_start_and_size(translate, tmp_path) -> None:
    frames = read_video(translate["frames"]).frames
    every_other = tmp_path / "every-other"
    small = np.stack([np.asarray(Image.fromarray(f).resize((32, 24), Image.BILINEAR))
                      for f in frames[1::2]])
    write_frames(every_other, small)
    doc = _json(_invoke("eval", translate["frames"], every_other, "--stride", "2", "--start", "1",
                        "--json", "--long-range", "2"))
    assert doc["alignment"] == "source frames 1..9 step 2 (5 of 10); source resized 64x48 -> 32x24"
    assert len(doc["per_frame"]["structure_edges"]) == len(small)
    # the edit is the source's own frames 1, 3, 5...: structure agrees closely
    assert doc["aggregate"]["structure_flow_epe"] < 0.5
    wrong = _json(_invoke("eval", translate["frames"], every_other, "--json", "--long-range", "2"))
    assert wrong["aggregate"]["structure_flow_epe"] > doc["aggregate"]["structure_flow_epe"]


def test_eval_errors_are_one_line(translate, tmp_path) -> None:
    for args in ((tmp_path / "nope.mp4", translate["frames"]),
                 (translate["frames"], translate["frames"], "--start", "50"),
                 (translate["frames"], translate["frames"], "--true-flow", tmp_path / "none.npz")):
        result = _invoke("eval", *args)
        assert result.exit_code == 1, result.output
        errors = [ln for ln in result.output.splitlines() if ln.startswith("Error:")]
        assert len(errors) == 1 and "Traceback" not in result.output, result.output


def test_eval_writes_a_plot(translate, tmp_path) -> None:
    plot = tmp_path / "m.png"
    result = _invoke("eval", translate["frames"], translate["frames"], "--plot", plot)
    assert result.exit_code == 0, result.output
    assert "warp err (x1e3)" in result.stdout and "edge F1" in result.stdout
    assert Image.open(plot).size[0] > 300


# --------------------------------------------------------------------------------------------- compare


def test_parse_method() -> None:
    m = parse_method("sdedit strength=0.5 blender.weights=linear")
    assert (m.editor, m.label) == ("sdedit", "sdedit strength=0.5 blender.weights=linear")
    assert m.options == [("editor.strength", "0.5"), ("blender.weights", "linear")]
    with pytest.raises(ValueError, match="PARAM=VALUE"):
        parse_method("sdedit strength")


@pytest.fixture(scope="module")
def compared(tmp_path_factory, tf_tiny_model_dir) -> dict:
    root = tmp_path_factory.mktemp("compare")
    clip = root / "clip"
    write_frames(clip, synthetic_frames(6, height=64, width=64))
    out = root / "cmp"
    env = {"TOKENFLOW_HASH_CACHE": str(root / "memo")}
    common = ["--model", tf_tiny_model_dir, "--steps", "4", "--inversion-steps", "4",
              "--batch-size", "3", "--size", "64", "--cache-dir", root / "cache", "-q"]
    result = _invoke("compare", clip, "--prompt", "a blue ball", "--editor", "pnp",
                     "--editor", "pnp-frames", "--editor", "sdedit strength=0.5", "--out", out,
                     *common, env=env)
    assert result.exit_code == 0, result.output
    return {"out": out, "clip": clip, "common": common, "env": env, "result": result}


def test_compare_writes_every_output(compared) -> None:
    out = compared["out"]
    doc = json.loads((out / "table.json").read_text())
    labels = [m["label"] for m in doc["methods"]]
    assert labels == ["pnp", "pnp-frames", "sdedit strength=0.5"]
    for m in doc["methods"]:
        assert {"warp_error", "flicker_ratio", "structure_edges"} <= set(m["metrics"]["aggregate"])
        assert m["stats"]["unet_frame_evals"] > 0
    evals = {m["label"]: m["stats"]["unet_frame_evals"] / m["stats"]["steps"] for m in doc["methods"]}
    assert evals == {"pnp": 2 * (2 + 6), "pnp-frames": 2 * 6, "sdedit strength=0.5": 2 * (2 + 6)}
    table = (out / "table.md").read_text()
    assert all(f"| {label} |" in table for label in labels) and "| source (itself) |" in table
    video = read_video(out / "side_by_side.mp4").frames
    assert video.shape[0] == 6 and video.shape[2] == 4 * 128  # source + 3 methods, 2x enlarged
    sheet = Image.open(out / "contact_sheet.png")
    assert sheet.size[1] == 4 * 128 + FOOTER  # one row per video, then the frame numbers
    assert Image.open(out / "metrics.png").size[0] > 300
    # six frames: 5 consecutive columns; per video a row of frames and a row of residuals
    flicker = Image.open(out / "flicker_sheet.png")
    assert flicker.size == (LABEL_WIDTH + 5 * 128, 2 * 4 * 128 + FOOTER)
    assert compared["result"].stdout.strip().splitlines()[-1] == str(out)


def test_compare_output_size_resizes_what_is_shown_not_what_is_measured(compared, tmp_path) -> None:
    out = tmp_path / "big"
    result = _invoke("compare", compared["clip"], "--prompt", "a blue ball", "--editor", "pnp",
                     "--editor", "pnp-frames", "--editor", "sdedit strength=0.5",
                     "--output-size", "160x200", "--out", out, *compared["common"],
                     env=compared["env"])
    assert result.exit_code == 0, result.output
    video = read_video(out / "side_by_side.mp4").frames
    assert video.shape[2] == 4 * 160  # 200 tall: no enlargement
    assert Image.open(out / "contact_sheet.png").size[1] == 4 * 200 + FOOTER
    assert Image.open(out / "flicker_sheet.png").size == (LABEL_WIDTH + 5 * 160,
                                                          2 * 4 * 200 + FOOTER)
    doc = json.loads((out / "table.json").read_text())
    first = json.loads((compared["out"] / "table.json").read_text())
    assert doc["output_size"] == {"width": 160, "height": 200, "as": "160x200"}
    assert [m["metrics"]["aggregate"] for m in doc["methods"]] == \
        [m["metrics"]["aggregate"] for m in first["methods"]]  # cached edits, same metrics
    bad = _invoke("compare", compared["clip"], "--prompt", "a blue ball", "--output-size", "0x5",
                  "--out", tmp_path / "bad", *compared["common"], env=compared["env"])
    assert bad.exit_code == 2 and "--output-size" in bad.output and "Traceback" not in bad.output
    assert not (tmp_path / "bad").exists()


def test_compare_shares_the_cache(compared) -> None:
    doc = json.loads((compared["out"] / "table.json").read_text())
    keys = [m["keys"] for m in doc["methods"]]
    assert keys[0]["inversion"] == keys[1]["inversion"] == keys[2]["inversion"]
    assert keys[0]["features"] == keys[2]["features"]
    assert len({k["editor"] for k in keys}) == 3


def test_compare_refuses_bad_requests(compared, tmp_path) -> None:
    base = ["compare", compared["clip"], "--prompt", "a blue ball", *compared["common"]]
    cases = [
        ([*base, "--out", compared["out"]], 1, "exists; pass --overwrite"),
        ([*base, "--editor", "pnp", "--editor", "pnp", "--out", tmp_path / "a"], 2, "twice"),
        ([*base, "--editor", "nosuch", "--out", tmp_path / "b"], 2, "unknown editor 'nosuch'"),
        ([*base, "--editor", "sdedit strength", "--out", tmp_path / "c"], 2, "PARAM=VALUE"),
    ]
    for args, code, needle in cases:
        result = _invoke(*args, env=compared["env"])
        assert result.exit_code == code, result.output
        errors = [ln for ln in result.output.splitlines() if ln.startswith("Error:")]
        assert len(errors) == 1 and needle in errors[0], result.output


def test_a_warp_error_below_the_sources_comes_with_its_caveat(translate, tmp_path) -> None:
    """An "edit" that lost all texture (flat grey) warps perfectly: tf eval says next to the
    figure and in a note that lost detail can cause a warp error below the source's own."""
    frames = read_video(translate["frames"]).frames
    flat = tmp_path / "flat"
    write_frames(flat, np.full_like(frames, 128))
    result = _invoke("eval", translate["frames"], flat)
    assert result.exit_code == 0, result.output
    line = next(x for x in result.stdout.splitlines() if x.startswith("warp err (x1e3)"))
    assert "below the source's own" in line and "lost detail" in line, line
    assert "is below the source's own" in result.output and "loses the source's detail" in result.output
    same = _invoke("eval", translate["frames"], translate["frames"])  # equal to, not below
    assert "below the source's own" not in same.output


def test_compare_marks_warp_errors_below_the_sources() -> None:
    from tokenflow.eval.compare import BELOW_MARK, MethodResult, table_rows

    source = {"aggregate": {"warp_error": 2e-3, "warp_error_long": 3e-3}}
    def result(label, warp):
        agg = {"warp_error": warp, "warp_error_source": 2e-3, "warp_error_long": 4e-3,
               "warp_error_long_source": 3e-3}
        return MethodResult(parse_method(label), np.zeros((1, 1, 1, 3), np.uint8), {}, {"steps": 1},
                            0.0, True, {"aggregate": agg})
    _, rows = table_rows(source, [result("pnp", 1e-3), result("pnp-frames", 2.5e-3)])
    assert rows[1][1] == "1" + BELOW_MARK and rows[1][2] == "4"  # t+1 below, t+k above
    assert rows[2][1] == "2.5"
