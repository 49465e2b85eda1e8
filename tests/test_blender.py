"""Tests for the ``tokenflow`` blender's weights and token gathering (docs/algorithm.md section 6)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tokenflow_plugins.tokenflow_blender import blend_weights, gather


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def test_reference_weights_hand_computed():
    # B = 8. Chunk i >= 1, offset o = s - 8i: p1 = 8i + 4, p2 = 8i - 4, d1 = |o - 4|, d2 = o + 4.
    # o: 0 -> 4/8, 1 -> 5/8, 2 -> 6/8, 3 -> 7/8, 4 -> 8/8, 5 -> 9/10, 6 -> 10/12, 7 -> 11/14.
    ratios = [4 / 8, 5 / 8, 6 / 8, 7 / 8, 8 / 8, 9 / 10, 10 / 12, 11 / 14]
    expected = [1.0] * 8 + [_sigmoid(r) for r in ratios] * 2
    frames = np.arange(24)
    got = blend_weights(frames, np.zeros((24, 2), dtype=np.int64), 8, "reference")
    assert got.shape == (24,)
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)
    # the example of the brief, spelled out: frame 8: p1 = 12, p2 = 4, d1 = d2 = 4
    assert got[8] == pytest.approx(_sigmoid(0.5))
    # frame 12 is chunk 1's centre: d1 = 0 -> sigmoid(1)
    assert got[12] == pytest.approx(_sigmoid(1.0))


def test_reference_weights_subset_and_short_chunk():
    # a chunk's frames alone give the same weights; centres use B // 2 even in a short last chunk
    got = blend_weights([16, 17, 18], np.zeros((3, 2), dtype=np.int64), 8, "reference")
    np.testing.assert_allclose(got, [_sigmoid(4 / 8), _sigmoid(5 / 8), _sigmoid(6 / 8)])
    # B = 5: chunk 1 = frames 5..9, p1 = 7, p2 = 2
    got = blend_weights([5, 7, 9], np.zeros((3, 2), dtype=np.int64), 5, "reference")
    np.testing.assert_allclose(got, [_sigmoid(3 / 5), _sigmoid(5 / 5), _sigmoid(7 / 9)])


def test_linear_weights():
    frames = np.array([3, 4, 5, 8, 9, 12, 2, 18, 6])
    refs = np.array([[3, 9], [3, 9], [3, 9], [3, 9], [9, 17], [9, 17], [3, 3], [17, 17], [6, 6]])
    got = blend_weights(frames, refs, 8, "linear")
    expected = [1.0, 5 / 6, 4 / 6, 1 / 6, 1.0, 5 / 8, 1.0, 1.0, 1.0]
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)


def test_unknown_weights():
    with pytest.raises(ValueError):
        blend_weights([0], np.zeros((1, 2), dtype=np.int64), 8, "cubic")


def test_gather_every_element():
    nb, k, s = 2, 2, 3
    # token value = 100 * branch + 10 * keyframe slot + token index
    tokens = torch.tensor([[[[100.0 * b + 10 * j + t] for t in range(s)] for j in range(k)]
                           for b in range(nb)])
    assert tokens.shape == (2, 2, 3, 1)
    slots = torch.tensor([[0, 1], [1, 1]])
    index = torch.tensor([[[2, 0, 1], [1, 1, 0]],
                          [[0, 0, 2], [2, 1, 0]]])
    w = torch.tensor([0.25, 0.5], dtype=torch.float64)
    out = gather(tokens, slots, index, w)
    assert out.shape == (nb * 2, s, 1) and out.dtype == tokens.dtype
    # frame 0: .25 * [2, 0, 1] + .75 * [11, 11, 10]; frame 1: .5 * [10, 10, 12] + .5 * [12, 11, 10]
    expected = torch.tensor([
        [8.75, 8.25, 7.75],       # branch 0, frame 0
        [11.0, 10.5, 11.0],       # branch 0, frame 1
        [108.75, 108.25, 107.75],  # branch 1, frame 0
        [111.0, 110.5, 111.0],    # branch 1, frame 1
    ])[..., None]
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)


def test_gather_matches_loop_on_random_tokens():
    gen = torch.Generator().manual_seed(0)
    nb, k, s, c, frames = 2, 3, 5, 4, 6
    tokens = torch.randn(nb, k, s, c, generator=gen)
    slots = torch.randint(k, (frames, 2), generator=gen)
    index = torch.randint(s, (frames, 2, s), generator=gen)
    w = torch.rand(frames, generator=gen)
    out = gather(tokens, slots, index, w)
    for b in range(nb):
        for f in range(frames):
            for t in range(s):
                want = (w[f] * tokens[b, slots[f, 0], index[f, 0, t]]
                        + (1 - w[f]) * tokens[b, slots[f, 1], index[f, 1, t]])
                torch.testing.assert_close(out[b * frames + f, t], want, atol=1e-6, rtol=1e-6)
