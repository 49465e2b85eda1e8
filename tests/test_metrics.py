"""Tests for tokenflow.eval.metrics on constructed videos with known answers, and for the known-motion
clip generator examples/motion_clips.py."""

from __future__ import annotations

import importlib.util
import math
import sys
import time
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest

from tokenflow.eval.metrics import (
    FLOW_METHODS,
    Flows,
    Report,
    align,
    edge_agreement,
    estimate_flow,
    evaluate,
    flicker,
    flow_epe,
    load_true_flow,
    save_true_flow,
    true_flows,
    valid_mask,
    video_flows,
    warp,
    warp_error,
    warp_residual,
)
from tokenflow.video import VideoError, read_video, resize_frames
from tokenflow.embedded.world2 import Scene, Thing, render

ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- helpers


def _texture(size: int, seed: int = 0, sigma: float = 2.0) -> np.ndarray:
    """Smooth colour noise, uint8 (size, size, 3)."""
    noise = np.random.default_rng(seed).standard_normal((size, size, 3)).astype(np.float32)
    smooth = cv2.GaussianBlur(noise, (0, 0), sigma)
    return np.clip(128 + smooth / smooth.std() * 45, 0, 255).astype(np.uint8)


def _translating(n: int = 8, size: int = 96, v: tuple[int, int] = (2, 1), sigma: float = 2.0) -> np.ndarray:
    """Crops of a larger texture whose content moves by the integer ``v`` = (dx, dy) per frame."""
    tex, m = _texture(size + 64, sigma=sigma), 32
    return np.stack([tex[m - v[1] * t:m - v[1] * t + size, m - v[0] * t:m - v[0] * t + size]
                     for t in range(n)])


def _constant(h: int, w: int, d) -> np.ndarray:
    return np.broadcast_to(np.asarray(d, np.float32), (h, w, 2)).copy()


def _translation_flows(frames: np.ndarray, v, pairs) -> Flows:
    h, w = frames.shape[1:3]
    v = np.asarray(v, np.float32)
    return true_flows({(t, s): _constant(h, w, v * (s - t)) for t, s in pairs},  # keyed (from, to)
                      {(s, t): _constant(h, w, v * (t - s)) for t, s in pairs})


def _pairs(n: int, k: int = 4) -> list[tuple[int, int]]:
    return [(t, t + 1) for t in range(n - 1)] + [(t, t + k) for t in range(n - k)]


def _ball_clip(n: int = 6, size: int = 64) -> np.ndarray:
    """A red ball rolling over tiles (their grout lines and the ball's outline: edges for Canny)."""
    base = Scene("tiles", (Thing("ball", "red", x=-0.2, y=0.0, radius=0.22),))
    return np.stack([render(base.with_thing(0, x=-0.2 + 0.05 * i), size, size)[0] for i in range(n)])


@pytest.fixture(scope="module")
def mc():
    """examples/motion_clips.py as a module (examples/ is not a package)."""
    name = "tokenflow_examples_motion_clips"
    spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / "motion_clips.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up here
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(name, None)


# --------------------------------------------------------------------------- flow and warp


def test_warp_is_a_backward_warp():
    image = np.arange(5 * 6 * 3, dtype=np.uint8).reshape(5, 6, 3)
    out = warp(image, _constant(5, 6, (1, 0)))  # out[y, x] = image[y, x + 1]
    assert out.dtype == np.float32 and out.shape == image.shape
    assert np.array_equal(out[:, :-1], image[:, 1:].astype(np.float32))
    assert np.array_equal(out[:, -1], image[:, -1].astype(np.float32))  # border replicated
    half = warp(image, _constant(5, 6, (0, 0.5)))  # bilinear, halfway down
    assert np.allclose(half[:-1], (image[:-1].astype(np.float32) + image[1:]) / 2)
    many = np.random.default_rng(0).random((4, 4, 7)).astype(np.float32)  # > 4 channels
    assert np.allclose(warp(many, _constant(4, 4, (0, 1)))[:-1], many[1:])


def test_translation_true_flow_has_zero_warp_error_and_the_expected_mask():
    v = (2, 1)
    frames = _translating(v=v)
    pairs = _pairs(len(frames))
    flows = _translation_flows(frames, v, pairs)
    errors = warp_error(frames, flows, pairs)
    assert np.array_equal(errors, np.zeros(len(pairs)))  # integer shifts: exact copies
    for t, s in pairs:  # only pixels whose target leaves the frame are invalid
        expected = np.ones(frames.shape[1:3], bool)
        dx, dy = v[0] * (s - t), v[1] * (s - t)
        expected[:, frames.shape[2] - dx:] = False
        expected[frames.shape[1] - dy:, :] = False
        assert np.array_equal(flows.valid[(t, s)], expected)


@pytest.mark.parametrize("method", FLOW_METHODS)
def test_estimated_flow_recovers_a_translation(method):
    v = np.array([2.0, 1.0])
    frames = _translating(v=(2, 1))
    pairs = _pairs(len(frames))
    truth = _translation_flows(frames, v, pairs)
    est = video_flows(frames, pairs, method)
    assert est.source == method
    for t, s in pairs:
        interior = np.linalg.norm(est.forward[(t, s)] - v * (s - t), axis=-1)[8:-8, 8:-8]
        assert interior.mean() < 0.5, (method, (t, s), interior.mean())
        backward = np.linalg.norm(est.backward[(t, s)] + v * (s - t), axis=-1)[8:-8, 8:-8]
        assert backward.mean() < 0.5
        assert est.valid[(t, s)].mean() > 0.8
    assert np.all(flow_epe(truth, est, pairs) < 0.5)
    assert np.all(warp_error(frames, est, pairs) < 1e-4)
    # the estimator on its own: direction and sign
    single = estimate_flow(frames[0], frames[1], method)
    assert single.dtype == np.float32 and single.shape == (96, 96, 2)
    assert np.allclose(np.median(single[8:-8, 8:-8].reshape(-1, 2), axis=0), v, atol=0.1)


def test_estimate_flow_rejects_bad_input():
    a = np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(ValueError, match="unknown flow method 'raft'"):
        estimate_flow(a, a, "raft")
    with pytest.raises(ValueError, match="uint8"):
        estimate_flow(a.astype(np.float32), a)
    with pytest.raises(ValueError, match="differ in size"):
        estimate_flow(a, np.zeros((8, 9, 3), np.uint8))


def test_colour_flicker_has_a_large_warp_error_and_flicker_ratio():
    v = (1, 0)
    frames = _translating(n=8, v=v, sigma=4.0)
    pairs = _pairs(len(frames))
    gains = np.random.default_rng(1).uniform(0.4, 1.0, (len(frames), 1, 1, 3))
    flickered = np.clip(np.round(frames * gains), 0, 255).astype(np.uint8)
    truth = _translation_flows(frames, v, pairs)
    floor = warp_error(frames, video_flows(frames, pairs, "dis"), pairs)  # estimated flow
    assert np.all(warp_error(frames, truth, pairs) == 0)
    assert warp_error(flickered, truth, pairs).min() > 100 * floor.max()
    report = evaluate(frames, flickered)
    agg = report.aggregate
    assert agg["warp_error"] > 100 * agg["warp_error_source"]
    assert agg["warp_error_long"] > 100 * agg["warp_error_long_source"]
    assert agg["flicker_ratio"] > 2.0
    assert agg["flicker_ratio"] == pytest.approx(agg["flicker"] / agg["flicker_source"])


def test_warp_residual_shows_where_an_edit_flickers():
    from tokenflow.eval.compare import FLICKER_INVALID, FLICKER_WHITE, flicker_rows, residual_image

    v = (1, 0)
    frames = _translating(n=9, v=v, sigma=4.0)
    pairs = _pairs(len(frames), k=1)
    truth = _translation_flows(frames, v, pairs)
    flickered = frames.copy()
    flickered[1::2, 20:50, 10:40] //= 2  # every other frame darker in one square
    for t, s in pairs:
        residual = warp_residual(flickered, truth, (t, s))
        valid = truth.valid[(t, s)]
        assert residual.shape == frames.shape[1:3] and residual.dtype == np.float32
        assert np.array_equal(np.isnan(residual), ~valid)
        assert residual[valid].mean() == pytest.approx(warp_error(flickered, truth, [(t, s)])[0])
        square = np.zeros(valid.shape, bool)
        square[22:48, 12:38] = True  # inside the square, away from its moving edge
        assert residual[square].min() > 1e-3
        outside = np.ones(valid.shape, bool)
        outside[15:55, 5:45] = False
        assert np.nanmax(residual[outside & valid]) == 0  # the rest moves exactly as the source

    image = residual_image(np.array([[0.0, FLICKER_WHITE ** 2, 1.0, np.nan]], np.float32))
    assert image.dtype == np.uint8 and image.shape == (1, 4, 3)
    assert image[0, :3].tolist() == [[0, 0, 0], [255, 255, 255], [255, 255, 255]]
    assert tuple(image[0, 3]) == FLICKER_INVALID

    rows, picks = flicker_rows(frames, [("edit", flickered)], truth, columns=4)
    assert picks.tolist() == [2, 3, 4, 5]  # four consecutive frames from the middle of nine
    assert [label.split(":")[0] for label, _ in rows] == ["source", "source", "edit", "edit"]
    assert np.array_equal(rows[2][1], flickered[2:6])
    source_residual, edit_residual = rows[1][1], rows[3][1]
    assert source_residual[:, :, :, 0].max() <= FLICKER_INVALID[0]  # black or invalid-blue
    assert edit_residual[:, 30, 25].min() > 100  # bright in the square, every column
    with pytest.raises(ValueError, match="two frames"):
        flicker_rows(frames[:1], [], truth)


def test_identical_videos():
    video = _ball_clip()
    report = evaluate(video, video)
    per, agg = report.per_frame, report.aggregate
    assert all(edge_agreement(video, video) == 1) and cv2.Canny(video[0], 100, 200).any()
    assert per["structure_flow_epe"] == [0.0] * 5
    assert per["structure_edges"] == [1.0] * 6
    assert per["flicker_ratio"] == [1.0] * 5 and agg["flicker_ratio"] == 1.0
    assert per["warp_error"] == per["warp_error_source"]
    assert per["warp_error_long"] == per["warp_error_long_source"]
    assert len(per["warp_error"]) == 5 and len(per["warp_error_long"]) == 2
    assert 0.5 < agg["valid_fraction"] <= 1.0
    # ... and the same metrics do move for a different edit
    other = evaluate(video, np.ascontiguousarray(np.roll(video[::-1], (3, 5), axis=(1, 2))))  # reversed, moved
    assert other.aggregate["structure_edges"] < 0.8
    assert other.aggregate["structure_flow_epe"] > 0.2


def test_occlusion_band_is_invalid():
    """A textured square moves 4 px right over a static textured background."""
    size, side, x0, y0, step = 96, 24, 30, 36, 4
    bg, fg = _texture(size, seed=2), _texture(side, seed=3)
    frames = np.stack([bg.copy(), bg.copy()])
    frames[0, y0:y0 + side, x0:x0 + side] = fg
    frames[1, y0:y0 + side, x0 + step:x0 + step + side] = fg
    f01, f10 = np.zeros((size, size, 2), np.float32), np.zeros((size, size, 2), np.float32)
    f01[y0:y0 + side, x0:x0 + side] = (step, 0)
    f10[y0:y0 + side, x0 + step:x0 + step + side] = (-step, 0)
    rows = slice(y0 + 2, y0 + side - 2)

    covered = valid_mask(f01, f10)  # pixels of frame 0; the band in front is covered in frame 1
    assert not covered[rows, x0 + side:x0 + side + step].any()
    uncovered = valid_mask(f10, f01)  # pixels of frame 1; the band behind was hidden in frame 0
    assert not uncovered[rows, x0:x0 + step].any()
    for mask, left in ((covered, x0), (uncovered, x0 + step)):
        far = np.ones((size, size), bool)
        far[y0 - 3:y0 + side + 3, x0 - 3:x0 + side + step + 3] = False
        assert mask[far].all()
        assert mask[y0 + 3:y0 + side - 3, left + 3:left + side - 3].all()  # inside the square
        assert not mask[rows, left].any() and not mask[rows, left - 1].any()  # its edge: motion boundary
    # it is the forward-backward test that rejects the band, not the boundary test
    loose = valid_mask(f01, f10, alpha2=1e9, boundary=False)
    assert loose[rows, x0 + side:x0 + side + step].all()
    assert valid_mask(f01, f10, boundary=False)[rows, x0 + side + 1:x0 + side + step].sum() == 0
    # the estimated flow (DIS) finds most of the uncovered band too
    est = video_flows(frames, [(1, 0)])
    assert (~est.valid[(1, 0)][rows, x0:x0 + step]).mean() > 0.5


def test_flow_epe_flicker_and_edges_values():
    flow = np.random.default_rng(0).normal(size=(10, 12, 2)).astype(np.float32)
    a = Flows({(0, 1): flow}, {(0, 1): -flow}, {(0, 1): np.ones((10, 12), bool)}, "true")
    b = Flows({(0, 1): flow + np.array([3, 4], np.float32)}, {}, {}, "dis")
    assert flow_epe(a, b, [(0, 1)]) == pytest.approx([5.0])
    a.valid[(0, 1)][:] = False
    assert np.isnan(flow_epe(a, b, [(0, 1)])[0])
    with pytest.raises(ValueError, match="no flow for pairs"):
        flow_epe(a, b, [(1, 2)])

    frames = np.zeros((3, 4, 4, 3), np.uint8)
    frames[1] = 255
    frames[2, :2] = 255
    assert np.allclose(flicker(frames), [1.0, 0.5])
    assert flicker(frames[:1]).shape == (0,)

    video = _ball_clip(n=2)
    blank = np.full_like(video, 128)
    shifted = np.ascontiguousarray(np.roll(video, 1, axis=2))
    assert list(edge_agreement(blank, blank)) == [1.0, 1.0]
    assert list(edge_agreement(video, blank)) == [0.0, 0.0]
    assert np.all(edge_agreement(video, shifted, tolerance=1) > 0.95)
    assert np.all(edge_agreement(video, shifted, tolerance=0) < 0.6)


def test_short_videos_get_nan_and_a_note():
    video = _ball_clip(n=3)
    one = evaluate(video[:1], video[:1])
    assert math.isnan(one.aggregate["warp_error"]) and math.isnan(one.aggregate["flicker_ratio"])
    assert one.per_frame["warp_error"] == [] and one.aggregate["structure_edges"] == 1.0
    assert any("no frame pairs" in note for note in one.notes)
    three = evaluate(video, video, long_range=4)
    assert math.isnan(three.aggregate["warp_error_long"]) and three.per_frame["warp_error_long"] == []
    assert not math.isnan(three.aggregate["warp_error"])
    assert any("long_range 4" in note for note in three.notes)
    assert three.to_dict()["aggregate"]["warp_error_long"] is None
    with pytest.raises(ValueError, match="differ in shape"):
        evaluate(video, video[:2])
    with pytest.raises(ValueError, match="long_range"):
        evaluate(video, video, long_range=0)


def test_evaluate_uses_given_flows_and_is_fast():
    v = (1, 1)
    frames = _translating(n=24, size=128, v=v)
    pairs = _pairs(24)
    truth = _translation_flows(frames, v, pairs)
    report = evaluate(frames, frames, source_flows=truth)
    assert report.aggregate["warp_error_source"] == 0.0 and report.aggregate["warp_error_long"] == 0.0
    assert any("true" in note for note in report.notes)
    with pytest.raises(ValueError, match="source_flows"):
        evaluate(frames, frames, source_flows=_translation_flows(frames, v, pairs[:3]))
    for method in FLOW_METHODS:
        start = time.perf_counter()
        report = evaluate(frames, frames[::-1].copy(), flow_method=method)
        elapsed = time.perf_counter() - start
        assert isinstance(report, Report) and elapsed < 5.0, (method, elapsed)
        assert set(report.per_frame) == set(report.aggregate)


def test_true_flows_and_flow_files(tmp_path):
    h, w = 6, 8
    fwd, bwd = _constant(h, w, (1, 0)), _constant(h, w, (-1, 0))
    both = true_flows({(0, 1): fwd, (1, 0): bwd})  # reverse flows looked up in the same dict
    assert both.source == "true" and sorted(both.forward) == [(0, 1), (1, 0)]
    assert np.array_equal(both.backward[(0, 1)], bwd) and np.array_equal(both.backward[(1, 0)], fwd)
    assert both.valid[(0, 1)][:, :-1].all() and not both.valid[(0, 1)][:, -1].any()
    split = true_flows({(0, 1): fwd}, {(1, 0): bwd})
    assert list(split.forward) == [(0, 1)] and np.array_equal(split.valid[(0, 1)], both.valid[(0, 1)])
    with pytest.raises(ValueError, match=r"no reverse flow \(1, 0\)"):
        true_flows({(0, 1): fwd})
    with pytest.raises(ValueError, match=r"back has no reverse flow \(1, 0\)"):
        true_flows({(0, 1): fwd}, {(0, 1): bwd})

    path = save_true_flow(tmp_path / "sub" / "x.flow.npz", {(0, 1): fwd, (1, 0): bwd}, params="{}")
    loaded = load_true_flow(path)
    assert sorted(loaded) == [(0, 1), (1, 0)] and np.array_equal(loaded[(1, 0)], bwd)
    assert loaded[(0, 1)].dtype == np.float32
    assert [p.name for p in path.parent.iterdir()] == ["x.flow.npz"]  # no temporary left
    np.savez(tmp_path / "other.npz", a=np.zeros(3))
    with pytest.raises(ValueError, match="not a true-flow file"):
        load_true_flow(tmp_path / "other.npz")


# --------------------------------------------------------------------------- align


def test_align_frames_and_size():
    source = np.random.default_rng(0).integers(0, 256, (10, 32, 48, 3), dtype=np.uint8)
    edited = np.zeros((4, 16, 24, 3), np.uint8)
    src, out, text = align(source, edited, stride=2, start=1)
    assert out is edited
    assert np.array_equal(src, resize_frames(np.ascontiguousarray(source[[1, 3, 5, 7]]), 16, 24))
    assert text == "source frames 1..7 step 2 (4 of 10); source resized 48x32 -> 24x16"

    same, _, text = align(source, source)
    assert np.array_equal(same, source) and text == "none (same frames and size)"
    first, _, text = align(source, source[:3])  # a shorter edit: the first frames
    assert np.array_equal(first, source[:3]) and text == "source frames 0..2 step 1 (3 of 10)"
    last, _, _ = align(source, source[:2], stride=3, start=4)
    assert np.array_equal(last, source[[4, 7]])


def test_align_errors():
    source = np.zeros((5, 8, 8, 3), np.uint8)
    edited = np.zeros((4, 8, 8, 3), np.uint8)
    with pytest.raises(VideoError, match=r"^source too short: 5 frames with start 0 and stride 2 give 3, "
                                         r"but the edit has 4$"):
        align(source, edited, stride=2)
    with pytest.raises(VideoError, match="source too short"):
        align(source, edited, start=2)
    with pytest.raises(VideoError, match="stride must be an integer >= 1"):
        align(source, edited, stride=0)
    with pytest.raises(ValueError, match="uint8"):
        align(source.astype(np.float32), edited)


# --------------------------------------------------------------------------- known-motion clips


def _hidden(clip, flow: np.ndarray, t: int, s: int) -> np.ndarray:
    """Pixels of frame ``t`` whose surface point, where ``flow`` takes it in frame ``s``, is behind
    another surface there (by the clip's scene: who is seen at that exact point)."""
    world = clip.world()
    (scene_t, camera_t), (scene_s, camera_s) = world.frame(t), world.frame(s)
    ys, xs = np.mgrid[0:clip.height, 0:clip.width] + 0.5
    seen_t = scene_t.owner(*camera_t.to_world(xs, ys, clip.height, clip.width))
    seen_s = scene_s.owner(*camera_s.to_world(xs + flow[..., 0], ys + flow[..., 1], clip.height, clip.width))
    return seen_s != seen_t


# Measured with 6 frames, mean differences in uint8 levels on valid pixels: on objects at most
# 3.3 (pan), 4.1 (zoom), 2.8 (turn) and 2.0 (occlusion), all of it at their sharp outlines and
# texture edges (resampling anti-aliased edges; in the zoom, detail that grows); on the background
# at most 0.6. A flow half a pixel off leaves at least 5.7 on objects and 1.4 on the background;
# the turn lit from the side (world v2's default light) leaves 5.8 on objects.
@pytest.mark.parametrize("kind", ["pan", "zoom", "turn", "occlusion"])
def test_generator_true_flow_is_exact(mc, kind):
    clip = replace(mc.CLIPS[kind], frames=6)
    frames = mc.render_clip(clip)
    pairs = mc.flow_pairs(clip.frames, 4)
    known = true_flows({p: mc.true_flow(clip, *p) for p in pairs})
    for t, s in pairs:
        valid = known.valid[(t, s)]
        assert valid.mean() > 0.8, (t, s)
        on_object = mc.object_mask(clip, t)
        for flow, bounds in ((known.forward[(t, s)], (4.5, 0.8)),
                             (known.forward[(t, s)] + np.float32([0.5, 0.5]), None)):
            diff = np.abs(warp(frames[s], flow) - frames[t]).mean(-1)
            errors = diff[valid & on_object].mean(), diff[valid & ~on_object].mean()
            if bounds:
                assert errors[0] < bounds[0] and errors[1] < bounds[1], (t, s, errors)
            else:  # half a pixel off: caught
                assert errors[0] > 5.5 and errors[1] > 1.2, (t, s, errors)
    moving = [i for i, (dx, dy, da) in enumerate(clip.motions) if da]
    for i in moving:  # a turn is clockwise on screen: right of the centre moves down
        thing = clip.scene.things[i]
        col, row = (np.array([thing.x + 0.5 * thing.radius, thing.y]) * min(clip.height, clip.width)
                    + np.array([clip.width, clip.height]) / 2).astype(int)
        rate = clip.motions[i][1] * min(clip.height, clip.width)  # the object's own move down
        assert (known.forward[(0, 1)][row, col, 1] - rate) * np.sign(clip.motions[i][2]) > 0.1


def test_generator_pure_pan_gives_a_constant_flow_equal_to_the_pan(mc):
    scene = mc.CLIPS["pan"].scene
    for height, width, pan in ((48, 80, (2 / 48, -1 / 48)), (96, 72, (0.01, 0.004))):
        clip = mc.MotionClip(scene, frames=5, height=height, width=width, pan=pan)
        step = -np.array(pan) * min(height, width)  # pixels per frame; the picture moves against the camera
        for t, s in ((0, 1), (1, 0), (0, 4), (3, 1)):
            assert np.allclose(mc.true_flow(clip, t, s), step * (s - t), atol=1e-4), (height, width, t, s)
    frames = mc.render_clip(mc.MotionClip(scene, frames=2, height=48, width=80, pan=(2 / 48, -1 / 48)))
    a, b = frames.astype(int)
    assert np.abs(b[1:, :-2] - a[:-1, 2:]).max() <= 1  # 2 px left and 1 px down, exactly


def test_generator_occlusion_is_found_by_the_forward_backward_test(mc):
    clip = mc.CLIPS["occlusion"]
    px = min(clip.height, clip.width)
    pan_flow = -np.array(clip.pan) * px
    for t, s in ((8, 9), (10, 14), (14, 10), (12, 11)):
        flow, back = mc.true_flow(clip, t, s), mc.true_flow(clip, s, t)
        valid = valid_mask(flow, back)
        hidden = _hidden(clip, flow, t, s)
        seen = mc.surfaces(clip, t)
        assert hidden.sum() > 50, (t, s)
        assert not valid[hidden].any(), (t, s)
        # hidden points still get a flow: the box's covered pixels follow the box (fixed in the world)
        box = hidden & (seen == 0)
        assert box.sum() > 20 and np.allclose(flow[box], pan_flow * (s - t), atol=1e-4)
        ball = (seen == 1).astype(np.uint8)
        assert valid[cv2.erode(ball, np.ones((5, 5), np.uint8)) > 0].all()  # the ball's inside


def test_generator_dis_error_is_measured(mc, record_property):
    """DIS and Farneback against the true flow; the numbers are reported, the bounds only sane."""
    for kind in mc.KINDS:
        row = mc.measure(replace(mc.CLIPS[kind], frames=10), 4)
        record_property(kind, row)
        print(f"{kind}: {row}")
        for span in ("short", "long"):
            assert 0 < row[span]["epe_dis"] < 1.5, (kind, span, row)
            assert 0 < row[span]["warp_true"] < 5e-4, (kind, span, row)


def test_generator_files_roundtrip(mc, tmp_path):
    base = mc.CLIPS["occlusion"]
    clip = replace(base, frames=6, height=48, width=64)
    paths = mc.save_clip(clip, tmp_path, "occ", long_range=2)
    flows = mc.load_true_flow(paths["flow"])
    assert sorted(flows) == sorted(mc.flow_pairs(6, 2))
    for (t, s), flow in flows.items():
        assert flow.dtype == np.float32 and np.array_equal(flow, mc.true_flow(clip, t, s))
    with np.load(paths["flow"], allow_pickle=False) as data:
        assert all(data[k].dtype != object for k in data.files)
    assert mc.load_clip_params(paths["flow"]) == clip
    frames = mc.render_clip(clip)
    assert np.array_equal(read_video(paths["frames"]).frames, frames)  # PNGs are exact
    mp4 = read_video(paths["mp4"]).frames
    assert mp4.shape == frames.shape and np.abs(mp4.astype(int) - frames).mean() < 4
    shorter = replace(clip, frames=3)  # the same name again: no frame of the longer clip is left
    mc.save_clip(shorter, tmp_path, "occ", long_range=2)
    assert sorted(p.name for p in paths["frames"].iterdir()) == ["00000.png", "00001.png", "00002.png"]
    assert mc.load_clip_params(paths["flow"]) == shorter
    np.savez(tmp_path / "other.npz", pairs=np.zeros((0, 2)), flows=np.zeros((0, 1, 1, 2)))
    with pytest.raises(ValueError, match="not a motion clip"):
        mc.load_clip_params(tmp_path / "other.npz")


def test_generator_refuses_bad_clips_and_arguments(mc, tmp_path, capsys):
    scene = mc.CLIPS["occlusion"].scene
    with pytest.raises(ValueError, match="1 motions for 2 objects"):
        mc.MotionClip(scene, motions=((0.0, 0.0, 1.0),))
    with pytest.raises(ValueError, match="unknown background 'lava'"):
        mc.MotionClip(replace(scene, background="lava"))
    with pytest.raises(ValueError, match="unknown 'hexagon'"):
        mc.MotionClip(scene.with_thing(0, shape="hexagon"))
    with pytest.raises(SystemExit) as exit_info:
        mc.main(["--long-range", "0", "--out", str(tmp_path)])
    assert exit_info.value.code == 2
    assert "--long-range must be between 1 and 23, got 0" in capsys.readouterr().err
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    assert mc.main(["--out", str(blocked)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: cannot write the clips to")
    assert blocked.read_text() == "not a folder"
