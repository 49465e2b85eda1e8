"""Bounded extended attention (issue 11, goal 4): queries in pieces, and the keyframe call split
into UNet batches in lockstep (tokenflow.editing.lockstep), equal to one call over all keyframes
to float rounding; and the memory helpers (release_memory, the streaming video writer)."""

from __future__ import annotations

import platform
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tokenflow.cache.layouts import layer_shapes
from tokenflow.editing import attention as attention_module
from tokenflow.editing.attention import (
    AttentionState,
    chunked_attention,
    extended_attention,
    self_attention_layers,
    tokenflow_attention,
)
from tokenflow.editing.lockstep import unet_call


def _random(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.fixture
def count_sdpa(monkeypatch):
    """Counts calls of torch SDPA made by the attention module."""
    calls = []
    real = F.scaled_dot_product_attention

    def counted(q, k, v, *args, **kwargs):
        calls.append(tuple(q.shape))
        return real(q, k, v, *args, **kwargs)

    monkeypatch.setattr(attention_module.F, "scaled_dot_product_attention", counted)
    return calls


@pytest.mark.parametrize("rows_per_piece", [1, 7, 64, None])
def test_chunked_attention_equals_one_call(rows_per_piece, count_sdpa):
    q, k, v = (_random(2, 3, 64, 8, seed=s) for s in range(3))
    expected = F.scaled_dot_product_attention(q, k, v)
    count_sdpa.clear()
    per_row = 2 * 3 * 64 * 4  # batch x heads x keys x float32
    max_bytes = None if rows_per_piece is None else rows_per_piece * per_row
    out = chunked_attention(q, k, v, max_bytes)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    pieces = 1 if rows_per_piece is None else -(-64 // rows_per_piece)
    assert len(count_sdpa) == pieces
    assert all(shape[2] <= (rows_per_piece or 64) for shape in count_sdpa)


def test_extended_attention_in_pieces_equals_unchunked(count_sdpa):
    nb, frames, heads, tokens, dim = 2, 5, 2, 12, 4
    q, k, v = (_random(nb * frames, heads, tokens, dim, seed=s) for s in range(3))
    whole = extended_attention(q, k, v, nb)
    assert len(count_sdpa) == 1
    # a piece's matrix under 3 query rows' worth: 20 pieces of 3 rows for 60 queries per branch
    pieces = extended_attention(q, k, v, nb, max_bytes=3 * nb * heads * frames * tokens * 4)
    assert len(count_sdpa) == 1 + 20
    torch.testing.assert_close(pieces, whole, rtol=1e-5, atol=1e-6)
    # by hand for frame 3 of branch 1: its queries over the keys/values of the branch's frames
    rows = slice(frames, 2 * frames)
    keys = k[rows].transpose(0, 1).reshape(heads, frames * tokens, dim)
    values = v[rows].transpose(0, 1).reshape(heads, frames * tokens, dim)
    attn = torch.softmax(q[frames + 3] @ keys.transpose(1, 2) / dim ** 0.5, dim=-1)
    torch.testing.assert_close(pieces[frames + 3], attn @ values, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- the split UNet call


@pytest.fixture(scope="module")
def unet():
    from tokenflow.testing.tiny import build_tiny_model

    return build_tiny_model("sd21")["unet"].eval()


CONV = "up_blocks.1.resnets.1"


def _keyframe_call(unet, k: int, unet_batch: int, *, attention_bytes=None, extra=None,
                   perturb: int | None = None):
    """The editor's keyframe call on k keyframes: branches [uncond, cond], extended attention,
    q/k injected in two decoder layers, the conv residual injected, every output kept."""
    h, w = 8, 16
    x = _random(k, 4, h, w, seed=1)
    if perturb is not None:
        x[perturb] = _random(4, h, w, seed=7)
    x = x.repeat(2, 1, 1, 1)
    emb = _random(2, 7, 64, seed=2).repeat_interleave(k, dim=0)
    shapes = layer_shapes(unet, (h, w))
    layers = self_attention_layers(unet)
    inject = {layer: _random(k, *shapes[layer][:2], seed=3 + i)
              for i, layer in enumerate(layers[-2:])}
    conv = {CONV: _random(k, *shapes[CONV], seed=9)}
    state, keep, batches = AttentionState(), {}, []
    hook = unet.conv_in.register_forward_pre_hook(lambda m, a: batches.append(a[0].shape[0]))
    try:
        with torch.no_grad(), tokenflow_attention(unet, state, [CONV]):
            state.n_branches, state.extended, state.keep = 2, True, keep
            state.inject, state.conv = inject, conv
            state.attention_bytes = attention_bytes
            out = unet_call(unet, state, x, 981, emb, unet_batch=unet_batch, extra=extra)
    finally:
        hook.remove()
    return out, keep, batches


@pytest.mark.parametrize("unet_batch", [1, 2, 3])
def test_split_keyframe_call_equals_one_call(unet, unet_batch):
    k = 5
    whole, keep_whole, batches = _keyframe_call(unet, k, unet_batch=8)
    assert batches == [2 * k]
    split, keep_split, batches = _keyframe_call(unet, k, unet_batch=unet_batch,
                                                attention_bytes=2**16)
    sizes = [min(unet_batch, k - s) for s in range(0, k, unet_batch)]
    assert batches == [2 * s for s in sizes]  # one UNet pass per batch, both branches
    torch.testing.assert_close(split, whole, rtol=1e-4, atol=1e-5)
    assert sorted(keep_split) == sorted(keep_whole) and len(keep_whole) == 16
    for layer, value in keep_whole.items():
        torch.testing.assert_close(keep_split[layer], value, rtol=1e-4, atol=1e-5)


def test_split_call_keyframes_do_attend_to_each_other(unet):
    """Changing the last keyframe's latents changes the first keyframe's output, also when they
    sit in different UNet batches (the exchange of keys and values works)."""
    base, _, _ = _keyframe_call(unet, 4, unet_batch=2)
    other, _, _ = _keyframe_call(unet, 4, unet_batch=2, perturb=3)
    first = [0, 4]  # keyframe 0 in both branches
    assert (other[first] - base[first]).abs().max() > 1e-3
    torch.testing.assert_close(other[first], _keyframe_call(unet, 4, 8, perturb=3)[0][first],
                               rtol=1e-4, atol=1e-5)


def test_split_call_error_ends_every_batch(unet):
    """A batch that fails ends the call with its error; the suspended batches are unwound and
    the processors follow the caller's state again."""
    calls = []

    def extra(x, t, emb):
        calls.append(x.shape[0])
        if len(calls) == 2:
            raise ValueError("boom in batch 1")
        return {}

    with pytest.raises(ValueError, match="boom in batch 1"):
        _keyframe_call(unet, 5, unet_batch=2, extra=extra)
    assert calls == [4, 4]  # batch 2 never started
    out, _, batches = _keyframe_call(unet, 5, unet_batch=2)  # and the next call works
    assert batches == [4, 4, 2]


def test_state_bind():
    state, other = AttentionState(), AttentionState(n_branches=3)
    state.bind(other)
    assert state.current() is other
    state.reset()
    assert state.current() is state


# ----------------------------------------------------------------------------- memory helpers


GLIBC = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"


@pytest.mark.skipif(not GLIBC, reason="glibc's malloc_trim/mallopt")
def test_release_memory_gives_freed_heap_pages_back():
    from tokenflow.memory import release_memory

    blocks = [bytearray(64 * 1024) for _ in range(800)]  # below the mmap threshold: heap
    del blocks
    assert release_memory() is True  # 50 MB of free heap pages returned


@pytest.mark.skipif(not GLIBC, reason="glibc's mallopt")
def test_limit_arenas_respects_the_users_setting(monkeypatch):
    from tokenflow.memory import limit_arenas

    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert limit_arenas(2) is False  # the user's choice wins
    monkeypatch.delenv("MALLOC_ARENA_MAX")
    assert limit_arenas(8) is True  # (8 per core is glibc's own default order of magnitude)


def test_video_writer_chunks_equal_one_write(tmp_path):
    from tokenflow.testing import synthetic_frames
    from tokenflow.video import VideoError, VideoWriter, write_video

    frames = synthetic_frames(10, 32, 48)
    write_video(tmp_path / "one.mp4", frames, 8)
    with VideoWriter(tmp_path / "chunks.mp4", 8) as writer:
        for s in range(0, 10, 3):
            writer.write(frames[s:s + 3])
    assert (tmp_path / "one.mp4").read_bytes() == (tmp_path / "chunks.mp4").read_bytes()
    with pytest.raises(VideoError, match="in a video of 48x32"):
        with VideoWriter(tmp_path / "bad.mp4", 8) as writer:
            writer.write(frames[:2])
            writer.write(np.zeros((1, 16, 16, 3), np.uint8))
    assert not (tmp_path / "bad.mp4").exists()
    assert not list(tmp_path.glob(".*"))


def test_the_automatic_unet_batch_fits_a_call_in_a_fixed_budget_off_cuda():
    """Off CUDA the automatic UNet batch is sized by an upper bound of one frame's activations
    (whole chunks, at least one, never above the video): small models get whole videos, large
    ones fewer frames a call, and the count does not grow with the video past the budget."""
    from types import SimpleNamespace

    from tokenflow.preflight import (
        CPU_CALL_BYTES,
        CPU_MAX_UNET_BATCH,
        auto_unet_batch,
        frame_activation_bytes,
    )

    def model(channels):
        return SimpleNamespace(device=torch.device("cpu"), dtype=torch.float32,
                               unet=SimpleNamespace(config=SimpleNamespace(
                                   block_out_channels=channels)))

    embedded, wall, sd = model((32, 64, 64, 64)), model((32, 64, 128, 128)), \
        model((320, 640, 1280, 1280))
    assert frame_activation_bytes(wall, (16, 24)) == 64 * 16 * 24 * 352 * 4
    assert auto_unet_batch(embedded, 24, 8, (8, 8)) == 24  # the whole video
    assert auto_unet_batch(embedded, 256, 8, (8, 8)) == CPU_MAX_UNET_BATCH
    assert auto_unet_batch(wall, 16, 8, (16, 24)) == auto_unet_batch(wall, 256, 8, (16, 24)) == 16
    assert auto_unet_batch(sd, 40, 8, (64, 64)) == 8  # one chunk: never below it
    assert auto_unet_batch(wall, 5, 8, (16, 24)) == 8  # a short video: one (partial) chunk
    assert 16 * frame_activation_bytes(wall, (16, 24)) <= CPU_CALL_BYTES
