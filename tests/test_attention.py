"""Tests for tokenflow.editing.attention: the TokenFlow self-attention processor, extended attention, PnP
injection, record/keep/provide, the conv hook, the install/restore context manager, and
tokenflow.cache.layouts.layer_shapes against a real forward pass (docs/algorithm.md sections 2, 4, 6)."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers.models.attention_processor import Attention, AttnProcessor2_0
from diffusers.models.resnet import ResnetBlock2D

from tokenflow.editing.attention import (
    AttentionState,
    ConvHook,
    TokenFlowAttnProcessor,
    extended_attention,
    self_attention_layers,
    tokenflow_attention,
)
from tokenflow.cache.layouts import layer_shapes

LAYER = "blk.attn1"
HEADS, DIM_HEAD, QUERY_DIM = 2, 4, 8


# --------------------------------------------------------------------------------------------- helpers


def _seeded(seed: int):
    gen = torch.Generator().manual_seed(seed)
    return lambda *shape: torch.randn(*shape, generator=gen)


@pytest.fixture
def attn() -> Attention:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        module = Attention(query_dim=QUERY_DIM, heads=HEADS, dim_head=DIM_HEAD)
        # Non-trivial output bias (diffusers may start some biases at zero).
        with torch.no_grad():
            module.to_out[0].bias.normal_()
    return module.eval()


def _tf_proc(attn: Attention, **state_fields) -> tuple[TokenFlowAttnProcessor, AttentionState]:
    state = AttentionState(**state_fields)
    proc = TokenFlowAttnProcessor(LAYER, state)
    attn.set_processor(proc)
    return proc, state


def _split_heads(x: torch.Tensor) -> torch.Tensor:
    """(S, HEADS*DIM_HEAD) -> (HEADS, S, DIM_HEAD), written out with explicit ops."""
    return torch.stack([x[:, h * DIM_HEAD:(h + 1) * DIM_HEAD] for h in range(HEADS)])


def _manual_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v for (S, d) queries and (S', d) keys/values, no SDPA."""
    scores = (q @ k.transpose(0, 1)) / math.sqrt(q.shape[-1])
    weights = torch.exp(scores - scores.max(dim=-1, keepdim=True).values)
    weights = weights / weights.sum(dim=-1, keepdim=True)
    return weights @ v


def _linear(module: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    out = x @ module.weight.transpose(0, 1)
    return out if module.bias is None else out + module.bias


def _manual_layer(attn: Attention, queries_from, keys_from, values_from, key_frames) -> torch.Tensor:
    """Full attention layer by hand for one frame: q from ``queries_from`` (S, C), keys/values from
    the concatenation of ``key_frames`` (lists of (S, C)) projected by to_k / to_v."""
    q = _split_heads(_linear(attn.to_q, queries_from))
    k = _split_heads(torch.cat([_linear(attn.to_k, f) for f in keys_from[key_frames]]))
    v = _split_heads(torch.cat([_linear(attn.to_v, f) for f in values_from[key_frames]]))
    heads = [_manual_attention(q[h], k[h], v[h]) for h in range(HEADS)]
    return _linear(attn.to_out[0], torch.cat(heads, dim=-1))


# --------------------------------------------------------------------------------------------- processor


@torch.no_grad()
def test_ordinary_mode_matches_diffusers_processor(attn):
    x = _seeded(1)(5, 7, QUERY_DIM)
    attn.set_processor(AttnProcessor2_0())
    expected = attn(x)
    _tf_proc(attn)
    got = attn(x)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)
    # and by hand, frame by frame (each frame attends to itself only)
    for f in range(5):
        manual = _manual_layer(attn, x[f], x, x, [f])
        torch.testing.assert_close(got[f], manual, atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_extended_attention_within_branch_by_hand(attn):
    nb, frames, tokens = 2, 3, 5
    x = _seeded(2)(nb * frames, tokens, QUERY_DIM)
    _tf_proc(attn, n_branches=nb, extended=True)
    got = attn(x)
    assert got.shape == (nb * frames, tokens, QUERY_DIM)
    for b in range(nb):
        same_branch = [b * frames + g for g in range(frames)]
        for f in range(frames):
            i = b * frames + f
            manual = _manual_layer(attn, x[i], x, x, same_branch)
            torch.testing.assert_close(got[i], manual, atol=1e-5, rtol=1e-5)
    # extended attention really differs from per-frame attention
    per_frame = torch.stack([_manual_layer(attn, x[i], x, x, [i]) for i in range(nb * frames)])
    assert (got - per_frame).abs().max() > 1e-3
    # branches do not mix: changing branch 1 leaves branch 0 untouched, and vice versa
    y = x.clone()
    y[frames:] = _seeded(3)(frames, tokens, QUERY_DIM)
    got_y = attn(y)
    torch.testing.assert_close(got_y[:frames], got[:frames], atol=0, rtol=0)
    assert (got_y[frames:] - got[frames:]).abs().max() > 1e-3
    z = x.clone()
    z[:frames] = _seeded(4)(frames, tokens, QUERY_DIM)
    torch.testing.assert_close(attn(z)[frames:], got[frames:], atol=0, rtol=0)


@torch.no_grad()
def test_extended_attention_function_by_hand():
    nb, frames, heads, tokens, dim = 3, 2, 2, 4, 5
    r = _seeded(5)
    q, k, v = r(nb * frames, heads, tokens, dim), r(nb * frames, heads, tokens, dim), r(nb * frames, heads, tokens, dim)
    got = extended_attention(q, k, v, nb)
    assert got.shape == q.shape
    for b in range(nb):
        rows = list(range(b * frames, (b + 1) * frames))
        for f in rows:
            for h in range(heads):
                keys = torch.cat([k[g, h] for g in rows])      # (frames*tokens, dim)
                values = torch.cat([v[g, h] for g in rows])
                expected = _manual_attention(q[f, h], keys, values)
                torch.testing.assert_close(got[f, h], expected, atol=1e-5, rtol=1e-5)
    # one branch with one frame is plain attention
    single = extended_attention(q[:1], k[:1], v[:1], 1)
    for h in range(heads):
        torch.testing.assert_close(single[0, h], _manual_attention(q[0, h], k[0, h], v[0, h]),
                                   atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("extended", [False, True])
@torch.no_grad()
def test_injection_queries_keys_from_source_values_own(attn, extended):
    nb, frames, tokens = 2, 3, 4
    r = _seeded(6)
    x = r(nb * frames, tokens, QUERY_DIM)
    src = r(frames, tokens, QUERY_DIM)
    _tf_proc(attn, n_branches=nb, extended=extended, inject={LAYER: src})
    got = attn(x)
    for b in range(nb):
        for f in range(frames):
            i = b * frames + f
            if extended:
                # keys of every source frame; values of every frame of this branch, same order
                keys = [src[g] for g in range(frames)]
                vals = [x[b * frames + g] for g in range(frames)]
            else:
                keys, vals = [src[f]], [x[i]]
            q = _split_heads(_linear(attn.to_q, src[f]))
            k = _split_heads(torch.cat([_linear(attn.to_k, t) for t in keys]))
            v = _split_heads(torch.cat([_linear(attn.to_v, t) for t in vals]))
            heads = [_manual_attention(q[h], k[h], v[h]) for h in range(HEADS)]
            manual = _linear(attn.to_out[0], torch.cat(heads, dim=-1))
            torch.testing.assert_close(got[i], manual, atol=1e-5, rtol=1e-5)
    # the two branches share q/k but keep their own values: outputs differ
    assert (got[:frames] - got[frames:]).abs().max() > 1e-3
    # a wrong number of source frames is an error
    _tf_proc(attn, n_branches=nb, extended=extended, inject={LAYER: src[:2]})
    with pytest.raises(RuntimeError):
        attn(x)


@torch.no_grad()
def test_injection_only_for_its_layer(attn):
    x = _seeded(7)(2, 3, QUERY_DIM)
    _tf_proc(attn)
    plain = attn(x)
    _tf_proc(attn, inject={"another.layer.attn1": _seeded(8)(2, 3, QUERY_DIM)})
    torch.testing.assert_close(attn(x), plain, atol=0, rtol=0)


@torch.no_grad()
def test_record_and_keep(attn):
    x = _seeded(9)(4, 6, QUERY_DIM)
    _, state = _tf_proc(attn, record={}, keep={})
    out = attn(x)
    assert set(state.record) == {LAYER} and set(state.keep) == {LAYER}
    torch.testing.assert_close(state.record[LAYER], x, atol=0, rtol=0)
    torch.testing.assert_close(state.keep[LAYER], out, atol=0, rtol=0)
    manual = torch.stack([_manual_layer(attn, x[f], x, x, [f]) for f in range(4)])
    torch.testing.assert_close(state.keep[LAYER], manual, atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_provide_skips_attention(attn):
    x = _seeded(10)(4, 6, QUERY_DIM)
    provided = torch.full((4, 6, QUERY_DIM), 3.25)
    calls = []
    handle = attn.to_q.register_forward_hook(lambda *a: calls.append(1))
    asked = []

    def provide(layer):
        asked.append(layer)
        return provided

    _, state = _tf_proc(attn, provide=provide, record={}, keep={})
    out = attn(x)
    assert asked == [LAYER]
    assert calls == [], "attention must be skipped when an output is provided"
    torch.testing.assert_close(out, provided, atol=0, rtol=0)
    torch.testing.assert_close(state.keep[LAYER], provided, atol=0, rtol=0)
    torch.testing.assert_close(state.record[LAYER], x, atol=0, rtol=0)

    # provide returning None falls back to ordinary attention
    _tf_proc(attn, provide=lambda layer: None)
    out = attn(x)
    assert calls == [1]
    handle.remove()
    manual = torch.stack([_manual_layer(attn, x[f], x, x, [f]) for f in range(4)])
    torch.testing.assert_close(out, manual, atol=1e-5, rtol=1e-5)

    # a provided output of the wrong shape is an error
    for bad in (torch.zeros(4, 5, QUERY_DIM), torch.zeros(3, 6, QUERY_DIM), torch.zeros(4, 6, 4)):
        _tf_proc(attn, provide=lambda layer, bad=bad: bad)
        with pytest.raises(RuntimeError):
            attn(x)


# --------------------------------------------------------------------------------------------- conv hook


@pytest.fixture
def resnet() -> ResnetBlock2D:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(11)
        block = ResnetBlock2D(in_channels=4, out_channels=6, temb_channels=5, groups=2,
                              output_scale_factor=2.0)
        with torch.no_grad():
            for p in block.parameters():  # no zero-initialised tensors
                p.add_(0.05 * torch.randn_like(p))
    assert block.conv_shortcut is not None
    return block.eval()


@torch.no_grad()
def test_conv_hook_records_residual(resnet):
    r = _seeded(12)
    x, temb = r(3, 4, 5, 5), r(3, 5)
    plain = resnet(x, temb)
    state = AttentionState(record_conv={})
    handle = resnet.conv2.register_forward_hook(ConvHook("res", state))
    out = resnet(x, temb)
    handle.remove()
    torch.testing.assert_close(out, plain, atol=0, rtol=0)  # recording changes nothing
    residual = plain * 2.0 - resnet.conv_shortcut(x)
    torch.testing.assert_close(state.record_conv["res"], residual, atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_conv_hook_replaces_residual_keeps_shortcut(resnet):
    r = _seeded(13)
    nb, frames = 2, 3
    x, temb = r(nb * frames, 4, 5, 5), r(nb * frames, 5)
    source = r(frames, 6, 5, 5)
    state = AttentionState(n_branches=nb, conv={"res": source}, record_conv={})
    handle = resnet.conv2.register_forward_hook(ConvHook("res", state))
    try:
        out = resnet(x, temb)
        shortcut = resnet.conv_shortcut(x)
        expected = (shortcut + torch.cat([source] * nb)) / 2.0
        torch.testing.assert_close(out, expected, atol=1e-6, rtol=1e-5)
        # the record is the block's own residual, from before the replacement
        state.conv = {}
        handle.remove()
        unhooked = resnet(x, temb)
        torch.testing.assert_close(state.record_conv["res"], unhooked * 2.0 - shortcut,
                                   atol=1e-5, rtol=1e-5)
        handle = resnet.conv2.register_forward_hook(ConvHook("res", state))
        state.conv = {"res": source}
        # each branch keeps its own shortcut: the branches differ by their shortcuts only
        torch.testing.assert_close(out[:frames] - out[frames:],
                                   (shortcut[:frames] - shortcut[frames:]) / 2.0, atol=1e-6, rtol=1e-5)
        # a wrong number of source frames is an error
        state.conv = {"res": source[:2]}
        with pytest.raises(RuntimeError):
            resnet(x, temb)
        # no source for this path: untouched
        state.conv = {"other": source}
        torch.testing.assert_close(resnet(x, temb), unhooked, atol=0, rtol=0)
    finally:
        handle.remove()


# --------------------------------------------------------------------------------------------- tiny UNet


@pytest.fixture(scope="module")
def unet():
    from tokenflow.testing.tiny import build_tiny_model

    return build_tiny_model()["unet"].eval()


def _unet_inputs(h: int = 16, w: int = 24, frames: int = 1):
    r = _seeded(14)
    return r(frames, 4, h, w), r(frames, 7, 64)


def _all_resnets(unet) -> list[str]:
    return [n for n, _ in unet.named_modules() if n.split(".")[-2:-1] == ["resnets"]]


def test_self_attention_layers_sd_layout(unet):
    layers = self_attention_layers(unet)
    assert len(layers) == 16 and len(set(layers)) == 16
    assert sum(p.startswith("down_blocks.") for p in layers) == 6
    assert sum(p.startswith("mid_block.") for p in layers) == 1
    assert sum(p.startswith("up_blocks.") for p in layers) == 9
    assert not any(p.startswith("up_blocks.0.") for p in layers)
    assert all(p.endswith(".transformer_blocks.0.attn1") for p in layers)
    assert "up_blocks.1.attentions.2.transformer_blocks.0.attn1" in layers


@torch.no_grad()
def test_tokenflow_attention_installs_and_restores(unet):
    x, emb = _unet_inputs()
    before = unet(x, 10, encoder_hidden_states=emb).sample
    original = dict(unet.attn_processors)
    conv_path = "up_blocks.1.resnets.1"
    conv2 = unet.get_submodule(f"{conv_path}.conv2")
    hooks_before = len(conv2._forward_hooks)
    state = AttentionState()
    with tokenflow_attention(unet, state, conv_layers=[conv_path]) as layers:
        assert sorted(layers) == sorted(self_attention_layers(unet))
        assert len(layers) == 16
        inside = unet.attn_processors
        assert set(inside) == set(original)
        for name, proc in inside.items():
            path = name.removesuffix(".processor")
            if path.endswith(".attn1"):
                assert isinstance(proc, TokenFlowAttnProcessor)
                assert proc.layer == path and proc.state is state
            else:
                assert path.endswith(".attn2")
                assert proc is original[name]
        assert len(conv2._forward_hooks) == hooks_before + 1
        # ordinary mode (empty state) gives the same UNet output
        during = unet(x, 10, encoder_hidden_states=emb).sample
        torch.testing.assert_close(during, before, atol=1e-5, rtol=1e-5)
        state.n_branches = 2  # leave some state behind: reset on exit
        state.extended = True
    assert state == AttentionState()
    for name, proc in unet.attn_processors.items():
        assert proc is original[name]
    assert len(conv2._forward_hooks) == hooks_before
    torch.testing.assert_close(unet(x, 10, encoder_hidden_states=emb).sample, before, atol=0, rtol=0)


@torch.no_grad()
def test_tokenflow_attention_restores_after_exception(unet):
    x, emb = _unet_inputs()
    before = unet(x, 10, encoder_hidden_states=emb).sample
    original = dict(unet.attn_processors)
    conv2 = unet.get_submodule("up_blocks.1.resnets.1.conv2")
    hooks_before = len(conv2._forward_hooks)
    state = AttentionState()
    with pytest.raises(ValueError, match="boom"):
        with tokenflow_attention(unet, state, conv_layers=["up_blocks.1.resnets.1"]):
            state.conv = {"up_blocks.1.resnets.1": torch.zeros(1, 64, 4, 6)}
            changed = unet(x, 10, encoder_hidden_states=emb).sample
            assert (changed - before).abs().max() > 1e-4  # the hook was live
            raise ValueError("boom")
    for name, proc in unet.attn_processors.items():
        assert proc is original[name]
    assert not any(isinstance(p, TokenFlowAttnProcessor) for p in unet.attn_processors.values())
    assert len(conv2._forward_hooks) == hooks_before
    assert state == AttentionState()
    torch.testing.assert_close(unet(x, 10, encoder_hidden_states=emb).sample, before, atol=0, rtol=0)


@torch.no_grad()
def test_layer_shapes_match_a_real_forward_pass(unet):
    h, w = 16, 24
    shapes = layer_shapes(unet, (h, w))
    resnets = _all_resnets(unet)
    attn_layers = self_attention_layers(unet)
    assert set(shapes) == set(attn_layers) | set(resnets)
    # hand-checked values (latent 16x24; channels 32, 64, 64, 64)
    assert shapes["down_blocks.0.attentions.0.transformer_blocks.0.attn1"] == (384, 32, 16, 24)
    assert shapes["down_blocks.1.attentions.1.transformer_blocks.0.attn1"] == (96, 64, 8, 12)
    assert shapes["down_blocks.2.attentions.0.transformer_blocks.0.attn1"] == (24, 64, 4, 6)
    assert shapes["mid_block.attentions.0.transformer_blocks.0.attn1"] == (6, 64, 2, 3)
    assert shapes["up_blocks.1.attentions.0.transformer_blocks.0.attn1"] == (24, 64, 4, 6)
    assert shapes["up_blocks.3.attentions.2.transformer_blocks.0.attn1"] == (384, 32, 16, 24)
    assert shapes["up_blocks.1.resnets.1"] == (64, 4, 6)
    assert shapes["up_blocks.0.resnets.0"] == (64, 2, 3)
    assert shapes["down_blocks.0.resnets.0"] == (32, 16, 24)
    # every layer against a recording of a real forward pass
    x, emb = _unet_inputs(h, w)
    state = AttentionState()
    with tokenflow_attention(unet, state, conv_layers=resnets):
        state.record, state.record_conv = {}, {}
        unet(x, 10, encoder_hidden_states=emb)
        record, record_conv = dict(state.record), dict(state.record_conv)
    assert set(record) == set(attn_layers)
    assert set(record_conv) == set(resnets)
    for path in attn_layers:
        tokens, channels, gh, gw = shapes[path]
        assert record[path].shape == (1, tokens, channels), path
        assert gh * gw == tokens, path
    for path in resnets:
        assert record_conv[path].shape == (1, *shapes[path]), path
