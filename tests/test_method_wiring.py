"""The method's wiring, observed where it takes effect: the attention state that the processors
and conv hooks read during every UNet call of the editing loop (ALGORITHM.md sections 4-6).

One spied run of the default stages (ddim, unet, random, nn, pnp, tokenflow) on the tiny
SD-shaped model serves every test here. For each UNet call of the loop the spy keeps what the
processors saw: branches, extended attention, the q/k and conv injections (tensors included),
whether propagation was on, the outputs the blender provided layer by layer, the outputs the
editor kept, and the latents and text the UNet was given.

The tiny model's LayerNorms are built with unit weights and zero biases, so all its norm1 tokens
have the same length and a dot product ranks them exactly as cosine similarity does. The run
here uses a copy whose LayerNorm affine parameters are seeded random values, as in a trained
model, so that the correspondence test can tell the two apart.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import zarr
from tokenflow_plugins.pnp import PnPEditor

from tokenflow.editing.attention import ConvHook, TokenFlowAttnProcessor, self_attention_layers
from tokenflow.cache.layouts import CorrespondenceReader, FeatureReader, layer_shapes
from tokenflow.editing.loop import EditRun
from tokenflow.manager import make_plugin_manager
from tokenflow.models import load_model
from tokenflow.testing import make_job, synthetic_frames

N, B, STEPS = 6, 3, 4
K = -(-N // B)
PROMPT = "a blue ball"
NEGATIVE = "ugly, blurry, low res, unrealistic, unaesthetic"
GUIDANCE = 7.5
PNP_ATTN_T, PNP_F_T = 0.5, 0.75
QK_STEPS = 2    # int(0.5 * 4): q/k injected at step indices 0 and 1
CONV_STEPS = 3  # int(0.75 * 4): conv residual injected at step indices 0, 1 and 2
HEIGHT = WIDTH = 64
#: ALGORITHM.md section 4, spelled out rather than imported from the plugin.
QK_LAYERS = [f"up_blocks.{b}.attentions.{a}.transformer_blocks.0.attn1"
             for b, a in ((1, 1), (1, 2), (2, 0), (2, 1), (2, 2), (3, 0), (3, 1), (3, 2))]
CONV_LAYER = "up_blocks.1.resnets.1"


@dataclass
class Call:
    """One UNet call of the editing loop, as the attention state described it."""

    kind: str            # "edit" (the editor's keyframe call) or "predict" (a blender chunk)
    step: int            # index on the editing grid (from the caller)
    frames: list[int]    # the frames of the call, once per branch
    timestep: int
    batch: int
    n_branches: int
    extended: bool
    inject: dict[str, torch.Tensor]
    conv: dict[str, torch.Tensor]
    provide: bool
    conv_hooks: set[str]
    latents: torch.Tensor
    text: torch.Tensor
    provided: list[tuple[str, torch.Tensor | None]] = field(default_factory=list)
    kept: dict[str, torch.Tensor] = field(default_factory=dict)
    output: torch.Tensor | None = None  # the UNet's raw output, branch-major


@dataclass
class Spied:
    calls: list[Call]
    call_unet: list[tuple[int, int]]  # (timestep, n_branches) of every EditRun.call_unet
    results: dict[str, Any]
    job: Any
    model: Any
    timesteps: list[int]
    keyframes: np.ndarray
    features: FeatureReader
    correspondence: CorrespondenceReader
    blender: zarr.Group
    editor: zarr.Group
    features_store: zarr.Group


def _affine_layernorms(model, seed: int = 7) -> None:
    """Seeded random LayerNorm affine parameters in every UNet transformer block."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.unet.modules():
            if isinstance(module, torch.nn.LayerNorm) and module.elementwise_affine:
                shape = module.weight.shape
                module.weight.copy_(torch.exp(0.5 * torch.randn(shape, generator=gen)))
                module.bias.copy_(0.3 * torch.randn(shape, generator=gen))


@pytest.fixture(scope="module")
def model(tf_tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TOKENFLOW_HASH_CACHE", str(tmp_path_factory.mktemp("wiring-hash-memo")))
        loaded = load_model(str(tf_tiny_model_dir), device="cpu", dtype=torch.float32)
    _affine_layernorms(loaded)
    # other weights than the files hold: another key, so that no cache could confuse the two
    loaded.key = hashlib.sha256(f"{loaded.key}:affine-layernorms-7".encode()).hexdigest()
    return loaded


def _job(model, frames, cache, options=()):
    """The default stages with the PnP fractions of this module."""
    return make_job(make_plugin_manager(), model, frames, cache=cache, steps=STEPS, batch_size=B,
                    params={"inversion": {"inversion_steps": STEPS}, "editor": {"prompt": PROMPT}},
                    options=[("editor.pnp_attn_t", str(PNP_ATTN_T)),
                             ("editor.pnp_f_t", str(PNP_F_T)), *options])


def _open(result) -> zarr.Group:
    return zarr.open_group(str(result.path), mode="r")


@pytest.fixture(scope="module")
def spied(model, tmp_path_factory: pytest.TempPathFactory) -> Spied:
    frames = synthetic_frames(N, height=HEIGHT, width=WIDTH)
    unet = model.unet
    calls: list[Call] = []
    call_unet_log: list[tuple[int, int]] = []
    context: list[tuple[str, int, list[int]]] = []
    edit_step, predict, call_unet = PnPEditor.edit_step, PnPEditor.predict, EditRun.call_unet
    forward = unet.forward

    def spy_edit_step(self, step):
        context.append(("edit", step.index, [int(f) for f in step.keyframes]))
        try:
            return edit_step(self, step)
        finally:
            context.pop()

    def spy_predict(self, step, frames, latents, **kwargs):
        context.append(("predict", step.index, [int(f) for f in frames]))
        try:
            return predict(self, step, frames, latents, **kwargs)
        finally:
            context.pop()

    def spy_call_unet(self, latents, t, text, **kwargs):
        call_unet_log.append((int(t), int(kwargs.get("n_branches", -1))))
        return call_unet(self, latents, t, text, **kwargs)

    def spy_forward(sample, timestep, *args, encoder_hidden_states=None, **kwargs):
        if not context:  # inversion, feature store and correspondence passes
            return forward(sample, timestep, *args, encoder_hidden_states=encoder_hidden_states,
                           **kwargs)
        kind, index, which = context[-1]
        states = {id(p.state): p.state for p in unet.attn_processors.values()
                  if isinstance(p, TokenFlowAttnProcessor)}
        assert len(states) == 1, "the self-attention processors do not share one state"
        (state,) = states.values()
        hooks = {name.removesuffix(".conv2") for name, m in unet.named_modules()
                 if name.endswith("conv2") for h in m._forward_hooks.values()
                 if isinstance(h, ConvHook) and h.state is state}
        call = Call(kind=kind, step=index, frames=which, timestep=int(timestep),
                    batch=int(sample.shape[0]), n_branches=state.n_branches,
                    extended=state.extended, inject=dict(state.inject), conv=dict(state.conv),
                    provide=state.provide is not None, conv_hooks=hooks,
                    latents=sample.detach().clone(), text=encoder_hidden_states.detach().clone())
        calls.append(call)
        real = state.provide
        if real is not None:
            def recording(layer: str):
                out = real(layer)
                call.provided.append((layer, None if out is None else out.detach().clone()))
                return out
            state.provide = recording
        try:
            out = forward(sample, timestep, *args, encoder_hidden_states=encoder_hidden_states,
                          **kwargs)
        finally:
            state.provide = real
        if state.keep is not None:
            call.kept = {k: v.detach().clone() for k, v in state.keep.items()}
        call.output = (out[0] if isinstance(out, tuple) else out.sample).detach().clone()
        return out

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(PnPEditor, "edit_step", spy_edit_step)
        mp.setattr(PnPEditor, "predict", spy_predict)
        mp.setattr(EditRun, "call_unet", spy_call_unet)
        mp.setattr(unet, "forward", spy_forward)
        job = _job(model, frames, tmp_path_factory.mktemp("wiring") / "cache")
        results = job.run()
    unet.__dict__.pop("forward", None)
    inv = _open(results["inversion"])
    feats = _open(results["features"])
    return Spied(
        calls=calls, call_unet=call_unet_log, results=results, job=job, model=model,
        timesteps=[int(t) for t in inv["timestep"][...]],
        keyframes=np.asarray(_open(results["keyframes"])["keyframes"][...]),
        features=FeatureReader(feats), correspondence=CorrespondenceReader(
            _open(results["correspondence"])),
        blender=_open(results["blender"]), editor=_open(results["editor"]), features_store=feats)


def _chunks() -> list[list[int]]:
    return [list(range(s, min(s + B, N))) for s in range(0, N, B)]


def _by_step(spied: Spied) -> dict[int, list[Call]]:
    out: dict[int, list[Call]] = {}
    for call in spied.calls:
        out.setdefault(call.step, []).append(call)
    return out


# -------------------------------------------------------------------------------------------- calls


def test_the_fractions_make_injection_windows_strictly_inside_the_grid() -> None:
    assert int(PNP_ATTN_T * STEPS) == QK_STEPS and int(PNP_F_T * STEPS) == CONV_STEPS
    assert 0 < QK_STEPS < CONV_STEPS < STEPS


def test_each_step_is_one_joint_keyframe_call_then_one_propagation_call_per_chunk(
        spied: Spied) -> None:
    assert not spied.results["blender"].cached
    by_step = _by_step(spied)
    assert sorted(by_step) == list(range(STEPS))
    assert len(spied.call_unet) == len(spied.calls) == STEPS * (1 + len(_chunks()))
    np.testing.assert_array_equal(np.asarray(spied.editor["keyframes"][...]), spied.keyframes)
    for i, calls in by_step.items():
        t = spied.timesteps[i]
        keyframes = [int(f) for f in spied.keyframes[i]]
        assert len(keyframes) == K
        assert [c.kind for c in calls] == ["edit"] + ["predict"] * len(_chunks()), i
        edit, *chunks = calls
        # the editor: the K keyframes drawn for this step, 2 branches, extended attention
        assert edit.frames == keyframes
        assert (edit.n_branches, edit.batch, edit.extended, edit.provide) == (2, 2 * K, True, False)
        # the blender: every chunk in order, 2 branches, plain attention, propagation on
        for call, chunk in zip(chunks, _chunks()):
            assert call.frames == chunk
            assert (call.n_branches, call.batch, call.extended, call.provide) == (
                2, 2 * len(chunk), False, True)
        assert {c.timestep for c in calls} == {t}
        assert [c for c in spied.call_unet if c[0] == t] == [(t, 2)] * len(calls)


def test_branches_are_uncond_then_cond_with_no_source_branch(spied: Spied) -> None:
    uncond, cond = spied.model.encode_prompts([NEGATIVE, PROMPT])
    for call in spied.calls:
        n = len(call.frames)
        assert call.text.shape[0] == 2 * n
        torch.testing.assert_close(call.text[:n], uncond.expand(n, -1, -1), rtol=0, atol=0)
        torch.testing.assert_close(call.text[n:], cond.expand(n, -1, -1), rtol=0, atol=0)


def test_every_call_starts_from_the_latents_the_blender_left_at_the_previous_step(
        spied: Spied) -> None:
    stored = np.asarray(spied.blender["latents"][...])
    for call in spied.calls:
        if call.step == 0:
            continue
        want = torch.from_numpy(stored[call.step - 1][call.frames])
        n = len(call.frames)
        torch.testing.assert_close(call.latents[:n], want, rtol=0, atol=0)
        torch.testing.assert_close(call.latents[n:], want, rtol=0, atol=0)


def _guided(call: Call) -> torch.Tensor:
    n = len(call.frames)
    uncond, cond = call.output[:n].double(), call.output[n:].double()
    return uncond + GUIDANCE * (cond - uncond)


def test_latents_after_each_step_are_a_ddim_step_of_the_guided_chunk_outputs(spied: Spied) -> None:
    """Section 4 CFG and section 6's DDIM step (eta 0), by hand in float64; the editor's store
    keeps the keyframes' guided output."""
    alphas = spied.model.scheduler.alphas_cumprod.double()
    stored = torch.from_numpy(np.asarray(spied.blender["latents"][...])).double()
    editor_out = torch.from_numpy(np.asarray(spied.editor["model_output"][...])).double()
    for i, (edit, *chunks) in _by_step(spied).items():
        t = spied.timesteps[i]
        a_t = alphas[t]
        a_next = alphas[spied.timesteps[i + 1]] if i + 1 < STEPS else alphas[0]
        torch.testing.assert_close(editor_out[i], _guided(edit), rtol=1e-5, atol=1e-5)
        for call in chunks:
            x = call.latents[:len(call.frames)].double()
            eps = _guided(call)
            x0 = (x - (1 - a_t).sqrt() * eps) / a_t.sqrt()
            want = a_next.sqrt() * x0 + (1 - a_next).sqrt() * eps
            torch.testing.assert_close(stored[i][call.frames], want, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------------------------- PnP


def test_qk_injection_in_exactly_the_eight_decoder_layers_during_the_first_steps(
        spied: Spied) -> None:
    layers = self_attention_layers(spied.model.unet)
    assert set(QK_LAYERS) <= set(layers) and len(set(QK_LAYERS)) == 8
    for call in spied.calls:
        if call.kind == "predict":
            assert call.inject == {}, f"step {call.step}: q/k injected in a propagation call"
            continue
        if call.step >= QK_STEPS:
            assert call.inject == {}, f"step {call.step}: q/k injected after pnp_attn_t"
            continue
        assert sorted(call.inject) == sorted(QK_LAYERS), call.step
        for layer in QK_LAYERS:
            want = spied.features.tokens(call.step, layer, call.frames)
            torch.testing.assert_close(call.inject[layer], want, rtol=0, atol=0)


def test_conv_injection_in_up_blocks_1_resnets_1_during_the_first_steps_of_every_call(
        spied: Spied) -> None:
    assert spied.features.conv_steps == CONV_STEPS
    for call in spied.calls:
        assert call.conv_hooks == {CONV_LAYER}
        if call.step >= CONV_STEPS:
            assert call.conv == {}, f"step {call.step}: conv injected after pnp_f_t"
            continue
        assert sorted(call.conv) == [CONV_LAYER], (call.kind, call.step)
        want = spied.features.conv(call.step, CONV_LAYER, call.frames)
        torch.testing.assert_close(call.conv[CONV_LAYER], want, rtol=0, atol=0)
    windows = {(c.kind, c.step) for c in spied.calls if c.conv}
    assert windows == {(kind, i) for kind in ("edit", "predict") for i in range(CONV_STEPS)}


# ----------------------------------------------------------------------------------- correspondence


def _store_tokens(store: zarr.Group, step: int, layer: str) -> np.ndarray:
    """(N, S, C) float64 tokens of ``layer`` read straight from the feature store's arrays
    (decoded here from int8 by the formula the store's ``encoding`` attribute gives)."""
    group = store[dict(store.attrs["groups"])[layer]]
    names = [str(x) for x in group["layer"][...]]
    i = names.index(layer)
    tokens = np.asarray(group["tokens"][step, :, i], dtype=np.float64)
    if group["tokens"].dtype == np.int8:  # the default encoding: tokens * scale + offset
        tokens = tokens * group["tokens_scale"][i] + group["tokens_offset"][i]
    return tokens


def test_correspondences_are_the_float64_cosine_argmax_to_the_chunk_references(
        spied: Spied) -> None:
    store, corr = spied.features_store, spied.correspondence
    layers = list(store.attrs["layers"])
    assert sorted(layers) == sorted(self_attention_layers(spied.model.unet))
    assert len(set(corr.groups[layer] for layer in layers)) >= 3  # every resolution group
    checked = mismatched = 0
    for i in range(STEPS):
        keyframes = [int(f) for f in spied.keyframes[i]]
        # section 5: [keyframe of the frame's chunk, keyframe of the previous chunk]
        refs = np.array([[keyframes[f // B], keyframes[max(f // B - 1, 0)]] for f in range(N)])
        np.testing.assert_array_equal(corr.references(i, range(N)), refs)
        for layer in layers:
            x = _store_tokens(store, i, layer)
            unit = x / np.linalg.norm(x, axis=-1, keepdims=True)
            got = corr.index(i, layer, range(N)).numpy()
            assert got.shape == (N, 2, x.shape[1]), layer
            for f in range(N):
                for r in range(2):
                    cos = unit[f] @ unit[refs[f, r]].T  # (S, S')
                    want = cos.argmax(axis=1)
                    chosen = got[f, r]
                    rows = np.arange(len(want))
                    # float32 in the stage vs float64 here: only a near-tie may pick another token
                    assert np.all(cos[rows, chosen] >= cos[rows, want] - 1e-5), (i, layer, f, r)
                    mismatched += int((chosen != want).sum())
                    checked += len(want)
            for c, kf in enumerate(keyframes):  # a keyframe reads itself token for token
                np.testing.assert_array_equal(got[kf, 0], np.arange(x.shape[1]), err_msg=layer)
                if c == 0:
                    np.testing.assert_array_equal(got[kf, 1], np.arange(x.shape[1]))
    assert mismatched <= checked // 1000, (mismatched, checked)


# ------------------------------------------------------------------------------------------ blender


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + np.exp(-x))


def _weight(f: int) -> float:
    """Section 6, released weights: w of the frame's own chunk keyframe (T1)."""
    i = f // B
    if i == 0:
        return 1.0
    d1, d2 = abs(f - (i * B + B // 2)), abs(f - ((i - 1) * B + B // 2))
    return _sigmoid(d2 / (d1 + d2))


def test_blender_provides_every_self_attention_layer_in_every_chunk_call(spied: Spied) -> None:
    unet = spied.model.unet
    layers = self_attention_layers(unet)
    shapes = layer_shapes(unet, (HEIGHT // spied.model.vae_scale_factor,
                                 WIDTH // spied.model.vae_scale_factor))
    by_step = _by_step(spied)
    for i, (edit, *chunks) in by_step.items():
        assert edit.provided == [] and sorted(edit.kept) == sorted(layers), i
        keyframes = edit.frames
        for call in chunks:
            asked = [layer for layer, _ in call.provided]
            assert sorted(asked) == sorted(layers), (i, call.frames)  # each layer, once
            for layer, out in call.provided:
                tokens, channels = shapes[layer][:2]
                assert out is not None, f"step {i}, frames {call.frames}: nothing for {layer}"
                assert tuple(out.shape) == (2 * len(call.frames), tokens, channels), layer
                # the value: the keyframes' kept outputs, gathered and blended (section 6)
                kept = edit.kept[layer].reshape(2, K, tokens, channels).double()
                index = spied.correspondence.index(i, layer, call.frames)
                refs = spied.correspondence.references(i, call.frames)
                want = torch.empty(2, len(call.frames), tokens, channels, dtype=torch.float64)
                for j, f in enumerate(call.frames):
                    w = _weight(f)
                    t1 = kept[:, keyframes.index(int(refs[j, 0])), index[j, 0]]
                    t2 = kept[:, keyframes.index(int(refs[j, 1])), index[j, 1]]
                    want[:, j] = w * t1 + (1 - w) * t2
                torch.testing.assert_close(out.double(), want.reshape(out.shape),
                                           rtol=1e-5, atol=1e-5)
                if call.frames[0] == 0:  # chunk 0: its keyframe gets its own edited output back
                    pos = call.frames.index(keyframes[0])
                    for b in range(2):
                        torch.testing.assert_close(out[b * len(call.frames) + pos],
                                                   edit.kept[layer][b * K], rtol=0, atol=0)
