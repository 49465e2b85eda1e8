"""Tests for the ``random`` keyframe sampler (docs/algorithm.md section 3)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tokenflow_plugins.random_keyframes import draw_keyframes


def _released(n: int, b: int, steps: int, seed: int) -> np.ndarray:
    """The released draws: global RNG seeded once, then per timestep randint(B, (K,)) + arange;
    a last, shorter chunk of length L takes its draw modulo L."""
    k = -(-n // b)
    last = n - (k - 1) * b
    rows = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for _ in range(steps):
            draw = torch.randint(b, (k,))
            if last < b:
                draw[-1] = draw[-1] % last
            rows.append((draw + torch.arange(0, n, b)).tolist())
    return np.array(rows, dtype=np.int64)


@pytest.mark.parametrize("n,b,steps,seed", [(24, 8, 50, 1), (16, 4, 7, 123), (8, 8, 5, 0), (40, 8, 3, 9)])
def test_matches_released_draws_multiple_of_batch(n, b, steps, seed):
    got = draw_keyframes(n, b, steps, seed)
    assert got.shape == (steps, n // b) and got.dtype == np.int64
    np.testing.assert_array_equal(got, _released(n, b, steps, seed))


@pytest.mark.parametrize("n,b,steps,seed", [(21, 8, 50, 1), (10, 4, 20, 2), (5, 8, 10, 3), (9, 8, 30, 4)])
def test_matches_released_draws_short_last_chunk(n, b, steps, seed):
    got = draw_keyframes(n, b, steps, seed)
    k = -(-n // b)
    assert got.shape == (steps, k)
    np.testing.assert_array_equal(got, _released(n, b, steps, seed))


def test_released_first_draws_hand_checked():
    # the global generator's first draws for seed 1 give the first row directly
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        first = torch.randint(8, (3,)).numpy()
    np.testing.assert_array_equal(draw_keyframes(24, 8, 1, 1)[0], first + np.array([0, 8, 16]))


@pytest.mark.parametrize("n,b", [(24, 8), (21, 8), (9, 8), (3, 8), (17, 5), (1, 1)])
def test_every_keyframe_inside_its_chunk(n, b):
    got = draw_keyframes(n, b, 200, 7)
    k = -(-n // b)
    assert got.shape == (200, k)
    for c in range(k):
        lo, hi = c * b, min((c + 1) * b, n)
        assert got[:, c].min() >= lo and got[:, c].max() < hi, (c, lo, hi)
    # the draws cover the chunk (uniform over 200 steps hits every frame of a chunk of <= 8)
    for c in range(k):
        lo, hi = c * b, min((c + 1) * b, n)
        assert set(got[:, c].tolist()) == set(range(lo, hi))


def test_seeds():
    a, b = draw_keyframes(24, 8, 50, 1), draw_keyframes(24, 8, 50, 1)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, draw_keyframes(24, 8, 50, 2))
    # a new draw per timestep
    assert len({tuple(row) for row in a}) > 1


def test_global_rng_untouched():
    state = torch.random.get_rng_state()
    draw_keyframes(24, 8, 10, 1)
    assert torch.equal(state, torch.random.get_rng_state())


def test_invalid_arguments():
    with pytest.raises(ValueError):
        draw_keyframes(0, 8, 5, 1)
    with pytest.raises(ValueError):
        draw_keyframes(8, 0, 5, 1)
