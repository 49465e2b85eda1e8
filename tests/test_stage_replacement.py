"""Any stage can be replaced by a plugin: one small, realistic alternative per stage kind, each
registered for one test, run through the pipeline on the tiny model, with its effect checked
downstream; and the cache keys chain (replacing a kind re-keys it and what is downstream only).

The replacements use only tokenflow's public API (``from tokenflow import ...``: the layouts'
readers, the cache writers, the loop's ``EditStep``), as a third-party distribution would.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from tokenflow import (
    BLENDER,
    CHANNEL,
    CHUNK,
    CORRESPONDENCE,
    EDITOR,
    FEATURES,
    FRAME,
    HEIGHT,
    INVERSION,
    KEYFRAMES,
    KINDS,
    LATENT_DIMS,
    LAYER,
    REF,
    TIMESTEP,
    TOKEN,
    WIDTH,
    EditorOutput,
    EditRun,
    EditStep,
    Params,
    SourcePass,
    StageBase,
    StageContext,
    StageError,
    create_array,
    editing_grid,
    group_name,
    layer_shapes,
    read_timesteps,
    self_attention_layers,
    write_coord,
)
from tokenflow.cache.store import dir_size
from tokenflow.manager import make_plugin_manager
from tokenflow.plan import DEFAULT_STAGES
from tokenflow.run import Job
from tokenflow.testing import make_job, stage_plugin, synthetic_frames

N, B, STEPS = 8, 4, 4
K = N // B
PROMPT = "a blue ball"
#: ``make_job``'s settings in this module.
RUN = {"steps": STEPS, "batch_size": B,
       "params": {"inversion": {"inversion_steps": STEPS}, "editor": {"prompt": PROMPT}}}


# --------------------------------------------------------------------------------------------- inversion


@dataclass(frozen=True)
class NoiseInversionParams(Params):
    """``prompt``: the source branch's text; ``seed``: seeds the noise."""

    prompt: str = ""
    seed: int = 0


def seeded_noise(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float32)


class NoiseInversion(StageBase):
    """Forward noising ``x_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps`` with one seeded ``eps`` for every
    timestep (SDEdit's "inversion"), instead of DDIM inversion: no UNet call at all."""

    kind = INVERSION
    name = "noise"
    requires = ()
    reads_config = ("steps",)
    Params = NoiseInversionParams
    summary = "forward noising of the clean latents with a seeded noise"

    def run(self, ctx: StageContext) -> None:
        model, out = ctx.model, ctx.output
        timesteps = editing_grid(model, ctx.config.steps)  # noisiest first
        x0 = model.encode_frames(ctx.frames).to(torch.float32).cpu()
        eps = seeded_noise(tuple(x0.shape), self.params.seed)
        alphas = model.scheduler.alphas_cumprod.to(torch.float32)
        latents = torch.stack([alphas[t].sqrt() * x0 + (1 - alphas[t]).sqrt() * eps
                               for t in timesteps])
        write_coord(out, TIMESTEP, timesteps)
        write_coord(out, FRAME, range(x0.shape[0]))
        create_array(out, "latents", dims=(TIMESTEP, FRAME, *LATENT_DIMS), data=latents.numpy(),
                     chunks=(1,) + tuple(latents.shape[1:]))
        create_array(out, "x0", dims=(FRAME, *LATENT_DIMS), data=x0.numpy())
        create_array(out, "x_max", dims=(FRAME, *LATENT_DIMS), data=latents[0].numpy())
        out.attrs.update({"t_max": int(timesteps[0]), "prompt": self.params.prompt})


# --------------------------------------------------------------------------------------------- features


@dataclass(frozen=True)
class ConvOnlyParams(Params):
    """The two knobs PnP sets on a feature store (``conv_layers``, ``conv_t``)."""

    conv_layers: tuple[str, ...] = ("up_blocks.1.resnets.1",)
    conv_t: float = 0.8


class ConvOnlyFeatures(StageBase):
    """A small feature store: only the conv residuals PnP injects, in float32; no tokens (readers
    recompute them with a source pass, as for the built-in's ``store_tokens=false``)."""

    kind = FEATURES
    name = "conv-only"
    requires = (INVERSION,)
    reads_config = ("steps",)
    Params = ConvOnlyParams
    summary = "conv residuals only, float32; tokens recomputed when read"

    def run(self, ctx: StageContext) -> None:
        model, out = ctx.model, ctx.output
        source = SourcePass(model, ctx.inputs[INVERSION], self.params.conv_layers)
        timesteps, n = source.timesteps, int(source.latents.shape[1])
        shapes = layer_shapes(model.unet, tuple(int(s) for s in source.latents.shape[3:]))
        layers = self_attention_layers(model.unet)
        token_groups: dict[str, list[str]] = {}
        for layer in layers:
            _, channels, h, w = shapes[layer]
            token_groups.setdefault(group_name(h, w, channels), []).append(layer)
        conv_groups: dict[str, list[str]] = {}
        for path in self.params.conv_layers:
            channels, h, w = shapes[path]
            conv_groups.setdefault(group_name(h, w, channels), []).append(path)
        conv_steps = int(self.params.conv_t * len(timesteps))
        where: dict[str, str] = {}
        arrays: dict[str, tuple[zarr.Array, int]] = {}
        for gname in sorted(set(token_groups) | set(conv_groups)):
            g = out.create_group(gname)
            write_coord(g, TIMESTEP, timesteps)
            write_coord(g, FRAME, range(n))
            members = token_groups.get(gname, [])
            if members:
                write_coord(g, LAYER, members)
                write_coord(g, TOKEN, range(shapes[members[0]][0]))
                write_coord(g, CHANNEL, range(shapes[members[0]][1]))
                where.update({layer: gname for layer in members})
            paths = conv_groups.get(gname, [])
            if paths:
                channels, h, w = shapes[paths[0]]
                if not members:
                    write_coord(g, CHANNEL, range(channels))
                write_coord(g, "conv_timestep", timesteps[:conv_steps])
                write_coord(g, "conv_layer", paths)
                write_coord(g, HEIGHT, range(h))
                write_coord(g, WIDTH, range(w))
                arr = create_array(g, "conv", dims=("conv_timestep", FRAME, "conv_layer", CHANNEL,
                                                    HEIGHT, WIDTH),
                                   shape=(conv_steps, n, len(paths), channels, h, w),
                                   dtype="float32", chunks=(1, n, 1, channels, h, w))
                arrays.update({p: (arr, j) for j, p in enumerate(paths)})
                where.update({p: gname for p in paths})
        write_coord(out, TIMESTEP, timesteps)
        out.attrs.update({"layers": layers, "groups": where, "store_tokens": False,
                          "conv_layers": list(self.params.conv_layers), "n_frames": n})
        batch = int(ctx.options.get("unet_batch", ctx.config.batch_size))
        for i in range(conv_steps):
            for s0 in range(0, n, batch):
                frames = range(s0, min(s0 + batch, n))
                _, residuals = source.run(i, frames, conv=True)
                for path, value in residuals.items():
                    arr, j = arrays[path]
                    arr[i, s0:s0 + len(frames), j] = value.to(torch.float32).cpu().numpy()


# --------------------------------------------------------------------------------------------- keyframes


class MiddleKeyframes(StageBase):
    """The middle frame of every chunk, at every timestep (a deterministic sampler)."""

    kind = KEYFRAMES
    name = "middle"
    requires = (INVERSION,)
    reads_config = ("steps", "batch_size")
    summary = "the middle frame of each chunk"

    def run(self, ctx: StageContext) -> None:
        inv = ctx.inputs[INVERSION]
        timesteps = read_timesteps(inv)
        n, b = int(inv["latents"].shape[1]), ctx.config.batch_size
        starts = np.arange(0, n, b)
        middle = starts + np.minimum(b, n - starts) // 2
        keyframes = np.tile(middle, (len(timesteps), 1))
        write_coord(ctx.output, TIMESTEP, timesteps)
        write_coord(ctx.output, CHUNK, range(len(starts)))
        create_array(ctx.output, "keyframes", dims=(TIMESTEP, CHUNK), data=keyframes)


# --------------------------------------------------------------------------------------------- correspondence


class IdentityCorrespondence(StageBase):
    """No motion assumed: token i of a frame takes token i of its reference keyframes (the chunk's
    keyframe and the previous chunk's). Needs no features beyond the layer layout."""

    kind = CORRESPONDENCE
    name = "identity"
    requires = (FEATURES, KEYFRAMES)
    reads_config = ("steps", "batch_size")
    summary = "every token reads the same token of the reference keyframes"

    def run(self, ctx: StageContext) -> None:
        feats, out = ctx.inputs[FEATURES], ctx.output
        keyframes = np.asarray(ctx.inputs[KEYFRAMES]["keyframes"][...])
        timesteps = read_timesteps(feats)
        n = int(feats.attrs["n_frames"])
        chunk = np.arange(n) // ctx.config.batch_size
        refs = np.stack([keyframes[:, chunk], keyframes[:, np.maximum(chunk - 1, 0)]], axis=-1)
        write_coord(out, TIMESTEP, timesteps)
        write_coord(out, FRAME, range(n))
        write_coord(out, REF, [0, 1])
        create_array(out, "reference", dims=(TIMESTEP, FRAME, REF), data=refs)
        layers, groups = list(feats.attrs["layers"]), dict(feats.attrs["groups"])
        for gname in sorted({groups[layer] for layer in layers}):
            members = [layer for layer in layers if groups[layer] == gname]
            tokens = int(feats[gname][TOKEN].shape[0])
            g = out.require_group(gname)
            write_coord(g, TIMESTEP, timesteps)
            write_coord(g, FRAME, range(n))
            write_coord(g, LAYER, members)
            write_coord(g, REF, [0, 1])
            write_coord(g, TOKEN, range(tokens))
            index = np.broadcast_to(np.arange(tokens, dtype=np.int32),
                                    (len(timesteps), n, len(members), 2, tokens))
            create_array(g, "index", dims=(TIMESTEP, FRAME, LAYER, REF, TOKEN),
                         data=np.ascontiguousarray(index), chunks=(1, n, 1, 2, tokens))
        out.attrs["groups"] = {layer: groups[layer] for layer in layers}


# --------------------------------------------------------------------------------------------- editor


class ReconstructEditor(StageBase):
    """The identity edit: follows the inverted trajectory back to the clean latents, so the output
    is the source through the VAE (the floor any edit is compared with). It edits every frame
    itself (``propagates = False``): no keyframes, no correspondences, no blending, no UNet."""

    kind = EDITOR
    name = "reconstruct"
    requires = (INVERSION, FEATURES)
    reads_config = ("steps",)
    summary = "no edit: the inverted trajectory back to the source"
    propagates = False

    def conv_layers(self, run: EditRun) -> tuple[str, ...]:
        return ()

    def start(self, run: EditRun) -> dict:
        latents = np.asarray(run.ctx.inputs[INVERSION]["latents"][...], dtype=np.float32)
        return {"trajectory": torch.from_numpy(latents).to(run.x0.device)}

    def initial_latents(self, run: EditRun) -> torch.Tensor:
        return run.editor_state["trajectory"][0].clone()

    def edit_step(self, step: EditStep) -> EditorOutput:
        run, i = step.run, step.index
        trajectory = run.editor_state["trajectory"]
        nxt = trajectory[i + 1] if i + 1 < len(trajectory) else run.x0
        a = run.alpha(step.timestep)
        eps = (step.latents - a.sqrt() * run.x0) / (1 - a).sqrt()  # the noise this step removes
        return EditorOutput(tokens={}, model_output=eps, latents=nxt.clone())

    def predict(self, step: EditStep, frames, latents, *, provide=None) -> torch.Tensor:
        raise StageError("the reconstruct editor edits every frame itself; nothing to predict")


# --------------------------------------------------------------------------------------------- blender


class OwnKeyframeBlender(StageBase):
    """Each frame takes its tokens from its own chunk's keyframe only (no blending with the
    previous chunk's keyframe), through the correspondence store, then a DDIM step."""

    kind = BLENDER
    name = "own-keyframe"
    requires = (CORRESPONDENCE,)
    reads_config = ("steps", "batch_size")
    summary = "propagate from the chunk's own keyframe only"

    def blend_step(self, step: EditStep, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        run, corr = step.run, step.run.correspondence
        slot_of = {f: j for j, f in enumerate(step.keyframes)}
        new = torch.empty_like(step.latents)
        for frames in run.chunks():
            own = corr.references(step.index, frames)[:, 0]
            slots = torch.tensor([slot_of[int(f)] for f in own])

            def provide(layer: str, frames=frames, slots=slots) -> torch.Tensor | None:
                if layer not in tokens:
                    return None
                index = corr.index(step.index, layer, frames)[:, 0]  # (F, S)
                taken = tokens[layer][:, slots[:, None], index]      # (branches, F, S, C)
                return taken.reshape(-1, *taken.shape[2:])

            x = step.latents[frames]
            new[frames] = step.ddim(run.editor.predict(step, frames, x, provide=provide), x)
        return new


# --------------------------------------------------------------------------------------------- fixtures


#: kind -> (register hook, replacement class).
REPLACEMENTS: dict[str, tuple[str, type]] = {
    INVERSION: ("register_inversions", NoiseInversion),
    FEATURES: ("register_features", ConvOnlyFeatures),
    KEYFRAMES: ("register_keyframes", MiddleKeyframes),
    CORRESPONDENCE: ("register_correspondences", IdentityCorrespondence),
    EDITOR: ("register_editors", ReconstructEditor),
    BLENDER: ("register_blenders", OwnKeyframeBlender),
}


@pytest.fixture
def registered(tf_register):
    """Every replacement, one test plugin each; the registry with them."""
    registry = None
    for kind, (hook_name, cls) in REPLACEMENTS.items():
        registry = tf_register(stage_plugin(cls, hook=hook_name), name=f"test-{kind}-plugin")
    return registry


@pytest.fixture(scope="module")
def frames() -> np.ndarray:
    return synthetic_frames(N, height=64, width=64)


@pytest.fixture
def plan(registered, tf_plugin_manager, tf_tiny_model, frames: np.ndarray, module_cache: Path):
    """``plan(replacing=None, cache=None, options=())``: the run planned with the replacement of
    the kind ``replacing`` (the built-in stages otherwise) and every replacement registered, in
    ``cache`` (the module's shared cache unless given)."""

    def plan_job(replacing: str | None = None, *, cache: Path | None = None, options=()) -> Job:
        stages = {replacing: REPLACEMENTS[replacing][1].name} if replacing else None
        return make_job(tf_plugin_manager, tf_tiny_model, frames, cache=cache or module_cache,
                        stages=stages, options=options, **RUN)

    return plan_job


@dataclass
class Baseline:
    job: Job
    results: dict

    def store(self, kind: str) -> zarr.Group:
        return _open(self.results, kind)


@pytest.fixture(scope="module")
def baseline(tf_tiny_model, frames: np.ndarray, module_cache: Path) -> Baseline:
    """The built-in stages' run, in the shared cache (its upstream entries serve the others)."""
    job = make_job(make_plugin_manager(), tf_tiny_model, frames, cache=module_cache, **RUN)
    return Baseline(job, job.run())


def _open(results: dict, kind: str) -> zarr.Group:
    return zarr.open_group(str(results[kind].path), mode="r")


def _arr(group: zarr.Group, name: str) -> np.ndarray:
    return np.asarray(group[name][...])


def _arrays(group: zarr.Group) -> dict[str, tuple[str, ...]]:
    """Every array of a store (recursively) with its dimension names, in sorted order (a group
    lists its members in no fixed order)."""
    found = {}
    for path, node in sorted(group.members(max_depth=None), key=lambda m: m[0]):
        if isinstance(node, zarr.Array):
            found[path] = tuple(node.metadata.dimension_names)
    return found


# --------------------------------------------------------------------------------------------- tests


def test_noise_inversion_replaces_ddim(plan, tf_tiny_model, baseline: Baseline) -> None:
    job = plan(INVERSION)
    assert job.stages[INVERSION].name == "noise"
    results = job.run()
    inv, ddim = _open(results, INVERSION), baseline.store(INVERSION)
    # the layout of the built-in: same arrays, dims, shapes, timesteps and clean latents
    assert _arrays(inv) == _arrays(ddim)
    assert set(_arrays(inv)) == {TIMESTEP, FRAME, "latents", "x0", "x_max"}
    for name in ("latents", "x0", "x_max"):
        assert inv[name].shape == ddim[name].shape, name
    timesteps = read_timesteps(inv)
    assert timesteps == read_timesteps(ddim) == sorted(timesteps, reverse=True)
    assert len(timesteps) == STEPS and int(inv.attrs["t_max"]) == timesteps[0]
    x0 = _arr(inv, "x0")
    np.testing.assert_allclose(x0, _arr(ddim, "x0"), atol=1e-5)
    # forward noising: every timestep holds the same seeded noise; DDIM inversion's noise drifts
    alphas = tf_tiny_model.scheduler.alphas_cumprod.numpy().astype(np.float64)

    def noise(store: zarr.Group, i: int) -> np.ndarray:
        a = alphas[timesteps[i]]
        return (_arr(store, "latents")[i] - np.sqrt(a) * x0) / np.sqrt(1 - a)

    expected = seeded_noise(x0.shape, 0).numpy()
    for i in range(STEPS):
        np.testing.assert_allclose(noise(inv, i), expected, atol=1e-4)
    np.testing.assert_array_equal(_arr(inv, "x_max"), _arr(inv, "latents")[0])
    assert not np.allclose(noise(ddim, 0), noise(ddim, STEPS - 1), atol=1e-2)
    # downstream: the source branch ran on these latents, and the edit starts from them
    assert job.keys[FEATURES] != baseline.job.keys[FEATURES]
    features, ddim_features = _open(results, FEATURES), baseline.store(FEATURES)
    tokens = sorted(p for p in _arrays(features) if p.endswith("/tokens"))
    assert tokens and tokens == sorted(p for p in _arrays(ddim_features) if p.endswith("/tokens"))
    for path in tokens:
        mine, theirs = _arr(features, path).astype(np.float32), _arr(ddim_features, path)
        assert not np.allclose(mine, theirs.astype(np.float32), atol=1e-3), path
    edited = _arr(_open(results, EDITOR), "model_output")
    assert np.abs(edited - _arr(baseline.store(EDITOR), "model_output")).mean() > 1e-3
    out = _arr(_open(results, BLENDER), "frames").astype(float)
    assert np.abs(out - _arr(baseline.store(BLENDER), "frames")).mean() > 1.0


def test_conv_only_feature_store_equals_the_builtin_without_tokens(plan,
                                                                   baseline: Baseline) -> None:
    job = plan(FEATURES)
    # PnP's needs reach the replacement's knobs too
    assert job.stages[FEATURES].params == ConvOnlyParams(("up_blocks.1.resnets.1",), 0.8)
    results = job.run()
    builtin = plan(options=[("features.store_tokens", "false"), ("features.dtype", "float32")])
    reference = builtin.run()
    mine, theirs = _open(results, FEATURES), _open(reference, FEATURES)
    arrays = _arrays(mine)
    assert not [p for p in arrays if p.endswith("tokens")], "a conv-only store keeps no tokens"
    assert [p for p in _arrays(baseline.store(FEATURES)) if p.endswith("tokens")]
    convs = sorted(p for p in arrays if p.endswith("/conv"))
    assert convs and convs == sorted(p for p in _arrays(theirs) if p.endswith("/conv"))
    for path in convs:
        assert arrays[path] == _arrays(theirs)[path]
        assert mine[path].shape[0] == int(0.8 * STEPS)
        np.testing.assert_allclose(_arr(mine, path), _arr(theirs, path), atol=1e-5)
    # downstream reads recomputed tokens through the same reader: the same correspondences and edit
    for path in _arrays(_open(reference, CORRESPONDENCE)):
        np.testing.assert_array_equal(_arr(_open(results, CORRESPONDENCE), path),
                                      _arr(_open(reference, CORRESPONDENCE), path), err_msg=path)
    np.testing.assert_allclose(_arr(_open(results, BLENDER), "latents"),
                               _arr(_open(reference, BLENDER), "latents"), atol=1e-4)
    assert dir_size(results[FEATURES].path) < dir_size(baseline.results[FEATURES].path) / 2


def test_middle_keyframes_reach_the_editor_and_the_correspondences(plan,
                                                                   baseline: Baseline) -> None:
    job = plan(KEYFRAMES)
    results = job.run()
    middle = np.array([2, 6])
    expected = np.tile(middle, (STEPS, 1))
    np.testing.assert_array_equal(_arr(_open(results, KEYFRAMES), "keyframes"), expected)
    np.testing.assert_array_equal(_arr(_open(results, EDITOR), "keyframes"), expected)
    assert not (_arr(baseline.store(EDITOR), "keyframes") == expected).all()  # random differs
    refs = np.array([[2, 2]] * B + [[6, 2]] * B)  # own chunk's keyframe, previous chunk's
    np.testing.assert_array_equal(_arr(_open(results, CORRESPONDENCE), "reference"),
                                  np.tile(refs, (STEPS, 1, 1)))
    assert _arr(_open(results, BLENDER), "frames").shape == (N, 64, 64, 3)


def test_identity_correspondence_changes_what_is_propagated(plan, baseline: Baseline) -> None:
    job = plan(CORRESPONDENCE)
    results = job.run()
    corr, nn = _open(results, CORRESPONDENCE), baseline.store(CORRESPONDENCE)
    np.testing.assert_array_equal(_arr(corr, "reference"), _arr(nn, "reference"))
    indices = sorted(p for p in _arrays(corr) if p.endswith("/index"))
    assert indices == sorted(p for p in _arrays(nn) if p.endswith("/index"))
    some_nn_differs = False
    for path in indices:
        index = _arr(corr, path)
        assert index.shape == nn[path].shape
        np.testing.assert_array_equal(index, np.broadcast_to(np.arange(index.shape[-1]), index.shape))
        some_nn_differs |= not (_arr(nn, path) == index).all()
    assert some_nn_differs, "nn gives the identity field on this clip: the comparison says nothing"
    # the keyframes' edit is the same; the frames that read from them are not
    np.testing.assert_allclose(_arr(_open(results, EDITOR), "model_output")[0],
                               _arr(baseline.store(EDITOR), "model_output")[0], atol=1e-5)
    latents = _arr(_open(results, BLENDER), "latents")
    assert np.abs(latents - _arr(baseline.store(BLENDER), "latents")).max() > 1e-3


def test_reconstruct_editor_returns_the_source_through_the_vae(plan, tf_tiny_model,
                                                              baseline: Baseline) -> None:
    job = plan(EDITOR)
    # it propagates nothing: no keyframes, no correspondences are planned
    assert list(job.stages) == [INVERSION, FEATURES, EDITOR, BLENDER]
    results = job.run()
    assert results[BLENDER].stats["unet_frame_evals"] == 0
    x0 = _arr(baseline.store(INVERSION), "x0")
    latents = _arr(_open(results, BLENDER), "latents")
    np.testing.assert_array_equal(latents[-1], x0)
    np.testing.assert_array_equal(latents[:-1], _arr(baseline.store(INVERSION), "latents")[1:])
    out = _arr(_open(results, BLENDER), "frames")
    np.testing.assert_array_equal(out, tf_tiny_model.decode_latents(torch.from_numpy(x0)))
    np.testing.assert_array_equal(_arr(_open(results, EDITOR), "keyframes"),
                                  np.tile(np.arange(N), (STEPS, 1)))
    assert np.abs(out.astype(float) - _arr(baseline.store(BLENDER), "frames")).mean() > 1.0


def test_own_keyframe_blender_changes_only_the_frames_that_blended(plan,
                                                                   baseline: Baseline) -> None:
    job = plan(BLENDER)
    results = job.run()
    latents = _arr(_open(results, BLENDER), "latents")
    theirs = _arr(baseline.store(BLENDER), "latents")
    # step 0: same keyframe edit; the first chunk reads its own keyframe only in both blenders,
    # the second chunk mixed in the first chunk's keyframe in the built-in
    np.testing.assert_array_equal(_arr(_open(results, EDITOR), "keyframes"),
                                  _arr(baseline.store(EDITOR), "keyframes"))
    np.testing.assert_allclose(_arr(_open(results, EDITOR), "model_output")[0],
                               _arr(baseline.store(EDITOR), "model_output")[0], atol=1e-6)
    np.testing.assert_allclose(latents[0, :B], theirs[0, :B], atol=1e-6)
    assert np.abs(latents[0, B:] - theirs[0, B:]).max() > 1e-3
    assert np.abs(latents[-1] - theirs[-1]).max() > 1e-3


#: Kinds whose key must change when a kind is replaced: itself and everything downstream (the
#: editor's and the blender's keys include each other: the loop writes both stores).
DOWNSTREAM: dict[str, set[str]] = {
    INVERSION: set(KINDS),
    FEATURES: {FEATURES, CORRESPONDENCE, EDITOR, BLENDER},
    KEYFRAMES: {KEYFRAMES, CORRESPONDENCE, EDITOR, BLENDER},
    CORRESPONDENCE: {CORRESPONDENCE, EDITOR, BLENDER},
    EDITOR: {EDITOR, BLENDER},
    BLENDER: {EDITOR, BLENDER},
}


@pytest.mark.parametrize("kind", KINDS)
def test_replacing_a_kind_rekeys_it_and_downstream_only(plan, tmp_path: Path, kind: str) -> None:
    base = plan(cache=tmp_path).keys
    name = REPLACEMENTS[kind][1].name
    job = plan(kind, cache=tmp_path)
    assert job.stages[kind].name == name != DEFAULT_STAGES[kind]
    # the reconstruct editor propagates nothing, so keyframes and correspondences drop out
    planned = set(KINDS) - ({KEYFRAMES, CORRESPONDENCE} if kind == EDITOR else set())
    assert set(job.keys) == planned
    changed = {k for k in planned if job.keys[k] != base[k]}
    assert changed == DOWNSTREAM[kind] & planned
    assert not (tmp_path / "inversion").exists()  # planning computes nothing
