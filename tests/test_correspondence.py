"""Tests for the ``nn`` correspondence helpers (docs/algorithm.md section 5)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tokenflow_plugins.nn_correspondence import nearest_tokens, reference_frames


@pytest.mark.parametrize("batch", [1, 2, 4, 16])
def test_nearest_tokens_recovers_permutation(batch):
    gen = torch.Generator().manual_seed(0)
    s, c, frames = 12, 16, 5
    ref = torch.randn(s, c, generator=gen)
    perms = torch.stack([torch.randperm(s, generator=gen) for _ in range(frames)])
    # positive per-token scales over four orders of magnitude: cosine similarity ignores them
    scales = torch.exp(torch.empty(frames, s, 1).uniform_(-4.6, 4.6, generator=gen))
    x = ref[perms] * scales
    x = x + 1e-4 * scales * torch.randn(frames, s, c, generator=gen)
    got = nearest_tokens(x, ref, batch=batch)
    assert got.shape == (frames, s) and got.dtype == torch.int64
    torch.testing.assert_close(got, perms, atol=0, rtol=0)


def test_nearest_tokens_is_cosine_not_dot_product():
    ref = torch.tensor([[1.0, 0.0], [10.0, 10.0], [0.0, -1.0]])
    frame = torch.tensor([[[1.0, 0.1], [0.1, 1.0], [0.2, -5.0], [-3.0, -3.1]]])
    # cosines: [1,.1] -> (0.995, 0.777, -0.1): 0; [.1,1] -> (0.1, 0.777, -0.995): 1;
    # [.2,-5] -> (0.04, -0.68, 0.999): 2; [-3,-3.1] -> (-0.69, -1.0, 0.72): 2
    # (a dot product would pick 1 for the first token)
    got = nearest_tokens(frame, ref)
    assert got.tolist() == [[0, 1, 2, 2]]
    # the reference may have a different number of tokens than the frame
    assert nearest_tokens(frame, ref[:2]).tolist() == [[0, 1, 0, 0]]


def test_reference_frames_chunk():
    keyframes = np.array([3, 9, 17])
    got = reference_frames(keyframes, 20, 8, "chunk")
    expected = np.array(
        [[3, 3]] * 8          # chunk 0: its own keyframe, twice
        + [[9, 3]] * 8        # chunk 1: [kf_1, kf_0]
        + [[17, 9]] * 4       # chunk 2 (short): [kf_2, kf_1]
    )
    assert got.shape == (20, 2)
    np.testing.assert_array_equal(got, expected)


def test_reference_frames_chunk_single_chunk():
    np.testing.assert_array_equal(reference_frames(np.array([2]), 5, 8, "chunk"), [[2, 2]] * 5)


def test_reference_frames_nearest():
    keyframes = np.array([3, 9, 17])
    got = reference_frames(keyframes, 20, 8, "nearest")
    expected = np.array([
        [3, 3], [3, 3], [3, 3],                                  # 0-2: before the first keyframe
        [3, 9],                                                  # 3: at a keyframe -> it and the next
        [3, 9], [3, 9], [3, 9], [3, 9], [3, 9],                  # 4-8: between 3 and 9
        [9, 17],                                                 # 9: at a keyframe
        [9, 17], [9, 17], [9, 17], [9, 17], [9, 17], [9, 17], [9, 17],  # 10-16
        [17, 17],                                                # 17: the last keyframe
        [17, 17], [17, 17],                                      # 18-19: after the last
    ])
    np.testing.assert_array_equal(got, expected)


def test_reference_frames_nearest_edges():
    # keyframes at both ends, adjacent keyframes
    got = reference_frames(np.array([0, 1, 7]), 8, 4, "nearest")
    expected = [[0, 1], [1, 7], [1, 7], [1, 7], [1, 7], [1, 7], [1, 7], [7, 7]]
    np.testing.assert_array_equal(got, expected)
    # one keyframe
    np.testing.assert_array_equal(reference_frames(np.array([2]), 4, 8, "nearest"),
                                  [[2, 2], [2, 2], [2, 2], [2, 2]])


def test_reference_frames_unknown_mode():
    with pytest.raises(ValueError):
        reference_frames(np.array([0]), 4, 8, "nope")
