"""The stage cache: keys, atomic Zarr entries, per-stage hits and misses through ``tf run``,
xarray readability of every store, and ``tf cache ls|rm``."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import zarr
from helpers import CliWorld, cli_env

from tokenflow.cache.keys import canonical_json, stage_key
from tokenflow.cache.store import META, StageCache, create_array, dir_size, safe_name
from tokenflow.params import Params
from tokenflow.stages import KINDS, RunConfig
from tokenflow.testing import synthetic_frames
from tokenflow.video import write_frames

STEPS, FRAMES, BATCH = 4, 6, 3
RUN_ARGS = ["--steps", str(STEPS), "--inversion-steps", str(STEPS), "--frames", str(FRAMES),
            "--batch-size", str(BATCH), "--size", "64", "-q"]
PROMPT = "a blue ball"


# --------------------------------------------------------------------------------------------- keys

BASE_KEY = dict(
    kind="editor",
    name="pnp",
    version=1,
    params={"prompt": "a blue ball", "guidance_scale": 7.5, "layers": ["a", "b"]},
    upstream={"inversion": "11" * 32, "features": "22" * 32},
    inputs={"model": "m" * 64, "video": "v" * 64, "config": {"steps": 4, "batch_size": 3}},
)


def test_stage_key_is_a_stable_sha256_whatever_the_dict_order() -> None:
    key = stage_key(**BASE_KEY)
    assert re.fullmatch(r"[0-9a-f]{64}", key)
    reordered = dict(
        BASE_KEY,
        params={"layers": ["a", "b"], "guidance_scale": 7.5, "prompt": "a blue ball"},
        upstream={"features": "22" * 32, "inversion": "11" * 32},
        inputs={"config": {"batch_size": 3, "steps": 4}, "video": "v" * 64, "model": "m" * 64},
    )
    assert stage_key(**reordered) == key
    assert stage_key(**BASE_KEY) == key  # no hidden state between calls


@pytest.mark.parametrize(
    "field, value",
    [
        ("params", {**BASE_KEY["params"], "prompt": "a red box"}),
        ("params", {**BASE_KEY["params"], "guidance_scale": 7.0}),
        ("params", {**BASE_KEY["params"], "layers": ["b", "a"]}),
        ("params", {**BASE_KEY["params"], "extra": None}),
        ("upstream", {**BASE_KEY["upstream"], "inversion": "12" * 32}),
        ("upstream", {**BASE_KEY["upstream"], "keyframes": "33" * 32}),
        ("inputs", {**BASE_KEY["inputs"], "video": "w" * 64}),
        ("inputs", {**BASE_KEY["inputs"], "model": "n" * 64}),
        ("inputs", {**BASE_KEY["inputs"], "config": {"steps": 5, "batch_size": 3}}),
        ("version", 2),
        ("name", "pnp-frames"),
        ("kind", "blender"),
    ],
)
def test_stage_key_changes_with_any_input(field: str, value) -> None:
    assert stage_key(**{**BASE_KEY, field: value}) != stage_key(**BASE_KEY)


def test_stage_key_of_a_params_dataclass_equals_that_of_its_fields() -> None:
    @dataclass(frozen=True)
    class P(Params):
        prompt: str = "a blue ball"
        guidance_scale: float = 7.5
        layers: tuple[str, ...] = ("a", "b")

    assert stage_key(**{**BASE_KEY, "params": P()}) == stage_key(**BASE_KEY)
    assert stage_key(**{**BASE_KEY, "params": P(guidance_scale=8.0)}) != stage_key(**BASE_KEY)


def test_canonical_json_is_sorted_and_compact() -> None:
    assert canonical_json({"b": 1, "a": [1, (2, 3)], "c": {"z": None, "y": True}}) == (
        '{"a":[1,[2,3]],"b":1,"c":{"y":true,"z":null}}'
    )
    assert canonical_json({"n": np.int64(3), "f": np.float32(0.5)}) == '{"f":0.5,"n":3}'


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf"), np.float32("nan"),
                                 {"nested": [1.0, float("nan")]}])
def test_canonical_json_rejects_non_finite_numbers(bad) -> None:
    with pytest.raises(ValueError):
        canonical_json(bad)
    with pytest.raises(ValueError):
        stage_key(**{**BASE_KEY, "params": {"x": bad}})


# --------------------------------------------------------------------------------------------- StageCache

KEY_A = "a" * 64
KEY_B = "b" * 64


def _temps(cache: StageCache) -> list[Path]:
    if not cache.root.is_dir():
        return []
    return sorted(p for p in cache.root.rglob(".*") if ".tmp-" in p.name)


def _write(cache: StageCache, kind: str, name: str, key: str, value: int = 0, **kw) -> Path:
    with cache.writer(kind, name, key, **kw) as group:
        create_array(group, "data", dims=("frame",), data=np.full(3, value))
    return cache.path(kind, name, key)


def test_writer_commits_atomically(tf_cache: StageCache) -> None:
    final = tf_cache.path("inversion", "ddim", KEY_A)
    assert final == tf_cache.root / "inversion" / f"ddim-{KEY_A[:16]}.zarr"
    with tf_cache.writer("inversion", "ddim", KEY_A, params={"prompt": "x"}, version=3) as group:
        create_array(group, "data", dims=("frame",), data=np.arange(3))
        assert not final.exists()
        assert tf_cache.lookup("inversion", "ddim", KEY_A) is None
        assert tf_cache.entries() == []
        (tmp,) = _temps(tf_cache)
        assert tmp.parent == final.parent and tmp.name.startswith(".") and tmp.is_dir()
    assert tf_cache.lookup("inversion", "ddim", KEY_A) == final
    assert _temps(tf_cache) == []
    meta = StageCache.meta(final)
    assert meta is not None
    assert (meta["complete"], meta["key"], meta["kind"], meta["name"], meta["version"],
            meta["params"]) == (True, KEY_A, "inversion", "ddim", 3, {"prompt": "x"})
    np.testing.assert_array_equal(tf_cache.open(final)["data"][...], np.arange(3))
    (entry,) = tf_cache.entries()
    assert (entry.kind, entry.name, entry.key, entry.path) == ("inversion", "ddim", KEY_A, final)
    assert entry.size == dir_size(final) > 0


def test_writer_exception_leaves_nothing(tf_cache: StageCache) -> None:
    final = tf_cache.path("features", "unet", KEY_A)
    with pytest.raises(RuntimeError, match="boom"):
        with tf_cache.writer("features", "unet", KEY_A) as group:
            create_array(group, "data", dims=("frame",), data=np.arange(3))
            assert _temps(tf_cache)
            raise RuntimeError("boom")
    assert not final.exists()
    assert tf_cache.lookup("features", "unet", KEY_A) is None
    assert _temps(tf_cache) == []
    assert list(final.parent.iterdir()) == []
    assert tf_cache.entries() == []


def test_writer_exception_keeps_an_existing_complete_entry(tf_cache: StageCache) -> None:
    final = _write(tf_cache, "features", "unet", KEY_A, value=1)
    with pytest.raises(KeyError):
        with tf_cache.writer("features", "unet", KEY_A) as group:
            create_array(group, "data", dims=("frame",), data=np.full(3, 2))
            raise KeyError("stop")
    assert tf_cache.lookup("features", "unet", KEY_A) == final
    np.testing.assert_array_equal(tf_cache.open(final)["data"][...], np.full(3, 1))
    assert _temps(tf_cache) == []


@pytest.mark.parametrize(
    "attrs",
    [
        None,  # a group with no tokenflow attrs at all (interrupted before marking)
        {"complete": False, "kind": "keyframes", "name": "random", "key": KEY_A},
        {"complete": "true", "kind": "keyframes", "name": "random", "key": KEY_A},
        {"kind": "keyframes", "name": "random", "key": KEY_A},
    ],
)
def test_partial_entry_is_not_a_hit_and_is_replaced(tf_cache: StageCache, attrs) -> None:
    final = tf_cache.path("keyframes", "random", KEY_A)
    group = zarr.open_group(str(final), mode="w", zarr_format=3)
    create_array(group, "stale", dims=("frame",), data=np.arange(4))
    if attrs is not None:
        group.attrs[META] = attrs
    assert final.is_dir()
    assert StageCache.meta(final) is None
    assert tf_cache.lookup("keyframes", "random", KEY_A) is None
    assert tf_cache.entries() == []
    assert tf_cache.remove(KEY_A[:8]) == []  # only complete entries are listed or removed
    _write(tf_cache, "keyframes", "random", KEY_A, value=5)
    assert tf_cache.lookup("keyframes", "random", KEY_A) == final
    store = tf_cache.open(final)
    assert "stale" not in store and "data" in store
    assert [e.key for e in tf_cache.entries()] == [KEY_A]


def test_a_directory_that_is_not_zarr_is_not_a_hit(tf_cache: StageCache) -> None:
    final = tf_cache.path("keyframes", "random", KEY_A)
    final.mkdir(parents=True)
    (final / "junk.txt").write_text("not a store")
    assert tf_cache.lookup("keyframes", "random", KEY_A) is None
    assert tf_cache.entries() == []


def test_complete_entry_recording_another_key_is_not_a_hit(tf_cache: StageCache) -> None:
    final = _write(tf_cache, "editor", "pnp", KEY_A)
    group = zarr.open_group(str(final), mode="r+")
    group.attrs[META] = {**group.attrs[META], "key": KEY_B}
    assert tf_cache.lookup("editor", "pnp", KEY_A) is None
    # Two keys sharing the 16-character path prefix land on the same path: only the recorded
    # key is a hit.
    other = KEY_A[:16] + "0" * 48
    final2 = _write(tf_cache, "blender", "tokenflow", KEY_A)
    assert tf_cache.path("blender", "tokenflow", other) == final2
    assert tf_cache.lookup("blender", "tokenflow", other) is None
    assert tf_cache.lookup("blender", "tokenflow", KEY_A) == final2


def test_writer_for_a_colliding_key_replaces_the_other_entry(tf_cache: StageCache) -> None:
    other = KEY_A[:16] + "0" * 48
    _write(tf_cache, "blender", "tokenflow", KEY_A, value=1)
    final = _write(tf_cache, "blender", "tokenflow", other, value=2)
    assert tf_cache.lookup("blender", "tokenflow", other) == final
    np.testing.assert_array_equal(tf_cache.open(final)["data"][...], np.full(3, 2))


def test_remove_by_prefix_and_clear(tf_cache: StageCache) -> None:
    k1, k2, k3 = "1234" + "0" * 60, "1299" + "0" * 60, "abcd" + "e" * 60
    p1 = _write(tf_cache, "inversion", "ddim", k1)
    p2 = _write(tf_cache, "features", "unet", k2)
    p3 = _write(tf_cache, "keyframes", "random", k3)
    with pytest.raises(ValueError):
        tf_cache.remove("123")
    assert tf_cache.remove("ffff") == []
    gone = tf_cache.remove("12340")
    assert [e.key for e in gone] == [k1] and not p1.exists() and p2.exists()
    gone = tf_cache.remove("ABCDE")  # keys are hex: prefixes are case-insensitive
    assert [e.key for e in gone] == [k3] and not p3.exists()
    assert [e.key for e in tf_cache.entries()] == [k2]
    leftover = tf_cache.root / "features" / ".unet-x.tmp-1-deadbeef.zarr"
    leftover.mkdir()
    (tf_cache.root / "README.md").write_text("keep me")
    gone = tf_cache.clear()
    assert [e.key for e in gone] == [k2]
    assert not p2.exists() and not leftover.exists()
    assert tf_cache.entries() == []
    assert (tf_cache.root / "README.md").read_text() == "keep me"
    assert tf_cache.clear() == []


def test_clear_and_entries_of_a_missing_root(tmp_path: Path) -> None:
    cache = StageCache(tmp_path / "nowhere")
    assert cache.entries() == [] and cache.clear() == []
    assert not cache.root.exists()


@pytest.mark.parametrize("name", ["a/b", "../../escape", "a\\b", "..", ".hidden", "x y:z*"])
def test_names_with_path_separators_are_sanitised(tf_cache: StageCache, name: str) -> None:
    safe = safe_name(name)
    assert safe and not safe.startswith(".")
    assert re.fullmatch(r"[A-Za-z0-9._-]+", safe)
    path = _write(tf_cache, name, name, KEY_A)
    assert path.parent.parent == tf_cache.root
    assert path.name == f"{safe}-{KEY_A[:16]}.zarr"
    assert path.resolve().is_relative_to(tf_cache.root.resolve())
    assert tf_cache.lookup(name, name, KEY_A) == path
    (entry,) = tf_cache.entries()
    assert (entry.kind, entry.name) == (name, name)  # the metadata keeps the real names


@pytest.mark.parametrize("video", ["../../evil.mp4", "/tmp/a/..hidden.mp4", "clips/x y:z*.mp4",
                                   "../", "a/b/../../../c.mp4", ".."])
def test_output_dirs_from_video_names_stay_under_out(video: str) -> None:
    from tokenflow.outputs import output_dir_for

    out = output_dir_for(video)
    assert out.parent == Path("out") and ".." not in out.parts, out
    assert out.name and not out.name.startswith(".") and re.fullmatch(r"[A-Za-z0-9._-]+", out.name)


def test_safe_name_keeps_plain_names() -> None:
    for plain in ("pnp", "pnp-frames", "tokenflow", "nn_v2", "a.b"):
        assert safe_name(plain) == plain


# --------------------------------------------------------------------------------------------- CLI runs


@dataclass(kw_only=True)
class World(CliWorld):
    """The module's ``tf`` world, with a second clip and a second model; ``run`` returns the
    run.json of a run that must succeed."""

    clip2: Path
    model2: Path

    def run(self, *extra: str, out: Path | None = None, **kwargs) -> dict:
        out = out or self.root / f"out-{uuid.uuid4().hex[:8]}"
        result = super().run(*extra, out=out, catch_exceptions=False, **kwargs)
        assert result.exit_code == 0, result.output
        return json.loads((out / "run.json").read_text())


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, tf_tiny_model_dir: Path) -> World:
    from tokenflow.testing.tiny import save_tiny_model

    root = tmp_path_factory.mktemp("cache-cli")
    write_frames(root / "clip", synthetic_frames())
    write_frames(root / "clip2", synthetic_frames(seed=1))
    model2 = save_tiny_model(root / "model2", "sd15", seed=1)
    return World(root=root, clip=root / "clip", clip2=root / "clip2", model=Path(tf_tiny_model_dir),
                 model2=model2, cache=root / "cache", env=cli_env(root), settings=RUN_ARGS,
                 prompt=PROMPT)


@dataclass
class Baseline:
    first: dict
    second: dict


@pytest.fixture(scope="module")
def baseline(world: World) -> Baseline:
    first = world.run()
    second = world.run()
    return Baseline(first, second)


def cached(doc: dict) -> dict[str, bool]:
    return {kind: info["cached"] for kind, info in doc["cache"].items()}


def changed_keys(doc: dict, base: dict) -> set[str]:
    return {kind for kind in KINDS if doc["keys"][kind] != base["keys"][kind]}


def expect(recomputed: set[str]) -> dict[str, bool]:
    return {kind: kind not in recomputed for kind in KINDS}


def test_first_run_computes_every_stage(baseline: Baseline) -> None:
    assert cached(baseline.first) == expect(set(KINDS))
    for kind in KINDS:
        assert Path(baseline.first["cache"][kind]["path"]).is_dir()
        assert baseline.first["keys"][kind][:16] in baseline.first["cache"][kind]["path"]


def test_same_command_is_a_hit_for_every_stage(baseline: Baseline) -> None:
    assert cached(baseline.second) == expect(set())
    assert baseline.second["keys"] == baseline.first["keys"]
    assert baseline.second["cache"]["blender"]["stats"] == baseline.first["cache"]["blender"]["stats"]


def test_new_prompt_recomputes_only_editor_and_blender(world: World, baseline: Baseline) -> None:
    doc = world.run(prompt="a red box")
    assert cached(doc) == expect({"editor", "blender"})
    assert changed_keys(doc, baseline.first) == {"editor", "blender"}
    assert doc["stages"]["editor"]["params"]["prompt"] == "a red box"


def test_new_seed_recomputes_from_keyframes_on(world: World, baseline: Baseline) -> None:
    doc = world.run("--seed", "7")
    recomputed = {"keyframes", "correspondence", "editor", "blender"}
    assert cached(doc) == expect(recomputed)
    assert changed_keys(doc, baseline.first) == recomputed
    assert doc["stages"]["keyframes"]["params"]["seed"] == 7


def test_another_video_recomputes_everything(world: World, baseline: Baseline) -> None:
    doc = world.run(video=world.clip2)
    assert cached(doc) == expect(set(KINDS))
    assert changed_keys(doc, baseline.first) == set(KINDS)


def test_another_model_recomputes_everything(world: World, baseline: Baseline) -> None:
    doc = world.run(model=world.model2)
    assert doc["model"]["key"] != baseline.first["model"]["key"]
    assert cached(doc) == expect(set(KINDS))
    assert changed_keys(doc, baseline.first) == set(KINDS)


def test_paths_and_device_are_not_hashed(world: World, baseline: Baseline) -> None:
    copy = Path(shutil.copytree(world.model, world.root / "model-copy"))
    doc = world.run("--device", "cpu", model=copy)
    assert doc["model"]["id"] == str(copy)
    assert doc["model"]["key"] == baseline.first["model"]["key"]
    assert cached(doc) == expect(set())
    assert doc["keys"] == baseline.first["keys"]


def _plan(**kw):
    from tokenflow.manager import make_plugin_manager
    from tokenflow.plan import plan
    from tokenflow.registry import build_registry

    config = RunConfig(steps=STEPS, batch_size=BATCH)
    registry = build_registry(make_plugin_manager(environ={}))
    return config, plan(registry, config, params={"editor": {"prompt": PROMPT}}, **kw)


def _plain(params) -> dict:
    return json.loads(canonical_json(dataclasses.asdict(params)))


def test_blender_weights_change_correspondence_but_not_features(world: World, baseline: Baseline) -> None:
    doc = world.run("-o", "weights", "linear")
    recomputed = {"correspondence", "editor", "blender"}
    assert changed_keys(doc, baseline.first) == recomputed
    assert cached(doc) == expect(recomputed)
    assert doc["stages"]["correspondence"]["params"] == {"references": "nearest"}
    assert doc["stages"]["blender"]["params"] == {"weights": "linear", "reuse_keyframes": False}
    config, stages = _plan(options=[("weights", "linear")])
    imposed = stages["blender"].upstream_params(config)
    assert imposed == {"correspondence": {"references": "nearest"}}
    assert _plain(stages["correspondence"].params) == doc["stages"]["correspondence"]["params"]


def test_pnp_f_t_imposes_conv_t_on_the_feature_store(world: World, baseline: Baseline) -> None:
    doc = world.run("-o", "pnp_f_t", "0.6")
    # The editor needs conv residuals for int(0.6 * steps) steps: the feature store keeps
    # exactly that many, so its key (and everything downstream of it) changes.
    recomputed = {"features", "correspondence", "editor", "blender"}
    assert changed_keys(doc, baseline.first) == recomputed
    assert cached(doc) == expect(recomputed)
    assert doc["stages"]["features"]["params"]["conv_t"] == 0.6
    assert doc["stages"]["editor"]["params"]["pnp_f_t"] == 0.6
    config, stages = _plan(options=[("pnp_f_t", "0.6")])
    imposed = stages["editor"].upstream_params(config)["features"]
    assert imposed["conv_t"] == 0.6
    assert _plain(stages["features"].params) == doc["stages"]["features"]["params"]
    store = zarr.open_group(doc["cache"]["features"]["path"], mode="r")
    conv_groups = [g for g in store.group_keys() if "conv" in store[g]]
    assert conv_groups and all(store[g]["conv"].shape[0] == int(0.6 * STEPS) for g in conv_groups)


def test_contradicting_an_imposed_parameter_is_an_error() -> None:
    from tokenflow.params import ParamError

    with pytest.raises(ParamError, match="contradicts"):
        _plan(options=[("pnp_f_t", "0.6"), ("conv_t", "0.5")])
    _, stages = _plan(options=[("pnp_f_t", "0.6"), ("conv_t", "0.6")])  # agreeing is fine
    assert stages["features"].params.conv_t == 0.6


# --------------------------------------------------------------------------------------------- xarray


def _editing_grid(model_dir: Path) -> list[int]:
    from diffusers import DDIMScheduler

    config = json.loads((model_dir / "scheduler" / "scheduler_config.json").read_text())
    scheduler = DDIMScheduler.from_config(config)
    scheduler.set_timesteps(STEPS)
    return [int(t) for t in scheduler.timesteps]


def _groups(path: str) -> list[str]:
    """The root and the data groups of a store (not the manifest of its files' checksums)."""
    from tokenflow.cache.store import MANIFEST

    root = zarr.open_group(path, mode="r")
    return ["/"] + sorted(f"/{name}" for name in root.group_keys() if name != MANIFEST)


def _open(path: str, group: str) -> xr.Dataset:
    return xr.open_zarr(path, group=None if group == "/" else group.lstrip("/"), consolidated=False)


def test_every_store_opens_in_xarray_with_named_dims(baseline: Baseline) -> None:
    for kind in KINDS:
        path = baseline.first["cache"][kind]["path"]
        tree = xr.open_datatree(path, engine="zarr", consolidated=False)
        nodes = sorted(node.path for node in tree.subtree)
        assert [n for n in nodes if n != "/tokenflow_manifest"] == _groups(path)
        assert "/tokenflow_manifest" in nodes  # the files' checksums (tf cache verify)
        for group in _groups(path):
            ds = _open(path, group)
            for name, var in ds.variables.items():
                assert var.dims, f"{kind}{group}:{name} has no dims"
                assert not any(re.fullmatch(r"dim_\d+", d) for d in var.dims), (kind, group, name)
            assert set(ds.data_vars) == set(tree[group].ds.data_vars)


def test_inversion_store_dims_and_timesteps(baseline: Baseline, world: World) -> None:
    ds = _open(baseline.first["cache"]["inversion"]["path"], "/")
    assert ds["latents"].dims == ("timestep", "frame", "latent_channel", "latent_y", "latent_x")
    assert ds["latents"].shape == (STEPS, FRAMES, 4, 64 // 8, 128 // 8)
    assert ds["x0"].dims == ("frame", "latent_channel", "latent_y", "latent_x")
    assert ds["timestep"].values.tolist() == _editing_grid(world.model)
    assert ds["frame"].values.tolist() == list(range(FRAMES))


def test_feature_store_dims_layers_and_timesteps(baseline: Baseline, world: World) -> None:
    from diffusers import UNet2DConditionModel

    path = baseline.first["cache"]["features"]["path"]
    unet = UNet2DConditionModel.from_pretrained(world.model, subfolder="unet")
    attn1 = {name for name, _ in unet.named_modules() if name.endswith(".attn1")}
    grid = _editing_grid(world.model)
    seen: list[str] = []
    tree = xr.open_datatree(path, engine="zarr", consolidated=False)
    for group in _groups(path)[1:]:
        ds = _open(path, group)
        if "tokens" not in ds:
            continue
        assert ds["tokens"].dims == ("timestep", "frame", "layer", "token", "channel")
        assert ds["timestep"].values.tolist() == grid
        assert tree[group]["tokens"].dims == ds["tokens"].dims
        layers = [str(v) for v in ds["layer"].values]
        assert all(layer.endswith("attn1") for layer in layers)
        for layer in layers:
            unet.get_submodule(layer)  # a real diffusers module path
        seen += layers
        # one token per latent position at that resolution
        h, w, c = (int(v) for v in group.strip("/").split("x"))
        assert ds.sizes["token"] == h * w and ds.sizes["channel"] == c
    assert sorted(seen) == sorted(attn1)
    assert len(seen) == len(set(seen))
    root = zarr.open_group(path, mode="r")
    assert sorted(root.attrs["layers"]) == sorted(attn1)


def test_correspondence_keyframes_editor_and_blender_dims(baseline: Baseline, world: World) -> None:
    grid = _editing_grid(world.model)
    corr = baseline.first["cache"]["correspondence"]["path"]
    ref = _open(corr, "/")
    assert ref["reference"].dims == ("timestep", "frame", "ref")
    n_index = 0
    for group in _groups(corr)[1:]:
        ds = _open(corr, group)
        assert ds["index"].dims == ("timestep", "frame", "layer", "ref", "token")
        assert ds["timestep"].values.tolist() == grid
        assert int(ds["index"].max()) < ds.sizes["token"] and int(ds["index"].min()) >= 0
        n_index += 1
    assert n_index >= 2

    kf = _open(baseline.first["cache"]["keyframes"]["path"], "/")
    assert kf["keyframes"].dims == ("timestep", "chunk")
    assert kf["keyframes"].shape == (STEPS, -(-FRAMES // BATCH))
    chunk_of = kf["keyframes"].values // BATCH
    assert (chunk_of == np.arange(kf.sizes["chunk"])[None]).all()  # one keyframe inside each chunk

    ed = _open(baseline.first["cache"]["editor"]["path"], "/")
    assert ed["keyframes"].dims[0] == "timestep"
    np.testing.assert_array_equal(ed["keyframes"].values, kf["keyframes"].values)

    bl = _open(baseline.first["cache"]["blender"]["path"], "/")
    assert bl["frames"].dims == ("frame", "y", "x", "rgb")
    assert bl["frames"].shape == (FRAMES, 64, 128, 3) and bl["frames"].dtype == np.uint8
    assert bl["latents"].dims == ("timestep", "frame", "latent_channel", "latent_y", "latent_x")


# --------------------------------------------------------------------------------------------- tf cache


def test_tf_cache_ls_rm_and_resume(world: World, baseline: Baseline, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    keys = baseline.first["keys"]
    for kind in KINDS:  # a copy of the baseline run's entries only
        src = Path(baseline.first["cache"][kind]["path"])
        shutil.copytree(src, cache / src.relative_to(world.cache))

    def ls() -> list[dict]:
        result = world.invoke("cache", "ls", "--cache-dir", str(cache), "--json")
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)

    listed = [e for e in ls() if e["key"] in keys.values()]
    assert sorted(e["kind"] for e in listed) == sorted(KINDS)
    for e in listed:
        assert e["key"] == keys[e["kind"]]
        assert e["name"] == baseline.first["stages"][e["kind"]]["name"]
        assert e["params"] == baseline.first["stages"][e["kind"]]["params"]
        assert e["size"] == dir_size(Path(e["path"])) > 0
        assert Path(e["path"]).parent.parent == cache
    total = len(ls())

    for kind in ("keyframes", "editor"):
        result = world.invoke("cache", "rm", keys[kind][:12], "--cache-dir", str(cache))
        assert result.exit_code == 0, result.output
        assert f"removed {kind}/" in result.stdout
    remaining = ls()
    assert len(remaining) == total - 2
    assert {e["key"] for e in remaining}.isdisjoint({keys["keyframes"], keys["editor"]})

    # An interrupted cache resumes: only what is missing (and the blender, which the editing
    # loop writes together with the editor) is recomputed, under the same keys.
    doc = world.run(cache=cache)
    assert doc["keys"] == keys
    assert cached(doc) == expect({"keyframes", "editor", "blender"})

    result = world.invoke("cache", "rm", "ffffffffffff", "--cache-dir", str(cache))
    assert result.exit_code == 1 and "no cache entry" in result.output
    result = world.invoke("cache", "rm", "abc", "--cache-dir", str(cache))
    assert result.exit_code == 2
    result = world.invoke("cache", "rm", "--cache-dir", str(cache))
    assert result.exit_code == 2 and "--all" in result.output
    result = world.invoke("cache", "rm", keys["blender"][:8], "--all", "--cache-dir", str(cache))
    assert result.exit_code == 2

    result = world.invoke("cache", "rm", "--all", "--cache-dir", str(cache))
    assert result.exit_code == 0, result.output
    assert result.stdout.count("removed ") == total
    assert ls() == []
    assert not list(cache.glob("*/*.zarr"))


def test_tf_cache_ls_text(world: World, baseline: Baseline) -> None:
    result = world.invoke("cache", "ls", "--cache-dir", str(world.cache))
    assert result.exit_code == 0, result.output
    for kind, key in baseline.first["keys"].items():
        assert any(line.startswith(kind) and key[:16] in line for line in result.stdout.splitlines())


def test_entries_record_the_source_video_name(world: World, baseline: Baseline) -> None:
    entries = {e.key: e for e in StageCache(world.cache).entries()}
    assert {entries[key].video for key in baseline.first["keys"].values()} == {world.clip.name}
    result = world.invoke("cache", "ls", "--cache-dir", str(world.cache))
    for kind, key in baseline.first["keys"].items():
        (line,) = [line for line in result.stdout.splitlines() if key[:16] in line]
        assert line.split()[:4] == [kind, baseline.first["stages"][kind]["name"], key[:16],
                                    world.clip.name]


def _consolidated(path: str | Path) -> dict | None:
    return json.loads((Path(path) / "zarr.json").read_text()).get("consolidated_metadata")


def test_complete_stores_have_consolidated_metadata_and_open_without_a_warning(
        world: World, baseline: Baseline) -> None:
    import warnings

    from tokenflow.cache.quantized import quiet_numcodecs
    from tokenflow.cache.store import MANIFEST

    for kind in KINDS:
        path = baseline.first["cache"][kind]["path"]
        consolidated = _consolidated(path)
        assert consolidated is not None, kind
        members = set(consolidated["metadata"])
        assert {g.strip("/") for g in _groups(path)[1:]} <= members and MANIFEST not in members
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            quiet_numcodecs()  # zarr's notice about the int8 store's codec (cache/README.md)
            xr.open_datatree(path, engine="zarr")
            for group in _groups(path):  # xarray's defaults: consolidated metadata if present
                xr.open_zarr(path, group=None if group == "/" else group.lstrip("/"))
        assert [str(w.message) for w in caught] == [], kind
    result = world.invoke("cache", "verify", "--cache-dir", str(world.cache))
    assert result.exit_code == 0, result.output  # the manifest hashes the consolidated zarr.json


def test_entries_without_consolidated_metadata_still_read(world: World, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    import tokenflow.cache.store as store

    cache = tmp_path / "cache"
    with monkeypatch.context() as patch:  # as an older tokenflow wrote them
        patch.setattr(store, "consolidate", lambda path: None)
        first = world.run(cache=cache)
    assert all(_consolidated(first["cache"][kind]["path"]) is None for kind in KINDS)
    second = world.run(cache=cache)
    assert cached(second) == expect(set()) and second["keys"] == first["keys"]
    assert world.invoke("cache", "verify", "--cache-dir", str(cache)).exit_code == 0
    assert len(StageCache(cache).entries()) == len(KINDS)
    ds = xr.open_zarr(first["cache"]["blender"]["path"], consolidated=False)
    np.testing.assert_array_equal(ds["frames"].values,
                                  zarr.open_group(second["cache"]["blender"]["path"])["frames"][...])


# --------------------------------------------------------------------------------------------- tf cache ls / rm


@pytest.fixture
def listed(tf_cache: StageCache) -> dict[str, Path]:
    """Five entries written one after the other (by key prefix): two videos, an entry of an
    older tokenflow (no video recorded), sizes that differ, two keys sharing "aaaa"."""
    plan = [("features", "unet", "aaaa1", "a.mp4", 10), ("inversion", "ddim", "bbbb2", "b.mp4", 2000),
            ("features", "unet", "cccc3", "b.mp4", 400), ("blender", "tokenflow", "dddd4", None, 30),
            ("inversion", "ddim", "aaaa5", "a.mp4", 5)]
    paths = {}
    for kind, name, key, video, n in plan:
        with tf_cache.writer(kind, name, key.ljust(64, "0"), video=video) as group:
            create_array(group, "data", dims=("frame",),
                         data=np.random.default_rng(n).integers(0, 255, n, dtype=np.uint8))
        paths[key] = tf_cache.path(kind, name, key.ljust(64, "0"))
    return paths


def _tf(*args: str):
    from click.testing import CliRunner

    from tokenflow.cli import cli

    return CliRunner().invoke(cli, list(args))


def _ls(cache: StageCache, *args: str) -> list[list[str]]:
    result = _tf("cache", "ls", "--cache-dir", str(cache.root), *args)
    assert result.exit_code == 0, result.output
    return [line.split() for line in result.stdout.splitlines()]


def _human(path: Path) -> str:
    from tokenflow.preflight import human_bytes

    return human_bytes(dir_size(path))


def test_tf_cache_ls_has_a_header_video_date_and_size_columns(tf_cache, listed) -> None:
    import time

    header, *rows = _ls(tf_cache)
    assert header == ["KIND", "NAME", "KEY", "VIDEO", "COMPLETED", "SIZE", "PARAMS"]
    assert [r[2][:5] for r in rows] == ["aaaa1", "bbbb2", "cccc3", "dddd4", "aaaa5"]  # by date
    assert [r[3] for r in rows] == ["a.mp4", "b.mp4", "b.mp4", "-", "a.mp4"]
    today = time.strftime("%Y-%m-%d")
    assert all(r[4] == today and re.fullmatch(r"\d\d:\d\d", r[5]) for r in rows)
    assert all(" ".join(r[6:8]) == _human(listed[r[2][:5]]) for r in rows)
    text = _tf("cache", "ls", "--cache-dir", str(tf_cache.root)).stdout.splitlines()
    starts = [text[0].index(column) for column in ("NAME", "KEY", "VIDEO", "COMPLETED")]
    assert all(line[s - 2:s] == "  " and line[s] != " " for line in text for s in starts)


@pytest.mark.parametrize("sort, order", [
    ("date", ["aaaa1", "bbbb2", "cccc3", "dddd4", "aaaa5"]),  # oldest first
    ("kind", ["bbbb2", "aaaa5", "aaaa1", "cccc3", "dddd4"]),  # pipeline order, then date
    ("size", ["bbbb2", "cccc3", "dddd4", "aaaa1", "aaaa5"]),  # largest first
    ("video", ["aaaa5", "aaaa1", "bbbb2", "cccc3", "dddd4"]),  # by name (none last), pipeline
])
def test_tf_cache_ls_sorts(tf_cache, listed, sort: str, order: list[str]) -> None:
    assert [r[2][:5] for r in _ls(tf_cache, "--sort", sort)[1:]] == order
    result = _tf("cache", "ls", "--cache-dir", str(tf_cache.root), "--json", "--sort", sort)
    assert [e["key"][:5] for e in json.loads(result.stdout)] == order


def test_tf_cache_ls_json_keeps_every_field(tf_cache, listed) -> None:
    from datetime import datetime

    result = _tf("cache", "ls", "--cache-dir", str(tf_cache.root), "--json")
    doc = json.loads(result.stdout)
    by_key = {e.key: e for e in tf_cache.entries()}
    for item in doc:
        entry = by_key[item["key"]]
        assert set(item) == {"kind", "name", "key", "video", "created", "completed", "size",
                             "path", "params"}
        assert (item["video"], item["size"], item["created"], item["path"]) == (
            entry.video, entry.size, entry.created, str(entry.path))
        assert datetime.fromisoformat(item["completed"]).timestamp() == pytest.approx(
            entry.created, abs=1)
    assert [item["video"] for item in doc].count(None) == 1
    assert _tf("cache", "ls", "--cache-dir", str(tf_cache.root), "--sort", "name").exit_code == 2


def test_tf_cache_rm_by_kind_and_by_video(tf_cache, listed) -> None:
    sizes = {key: _human(path) for key, path in listed.items()}
    result = _tf("cache", "rm", "--kind", "inversion", "--cache-dir", str(tf_cache.root))
    assert result.exit_code == 0, result.output
    assert sorted(result.stdout.splitlines()) == [
        f"removed inversion/ddim {key.ljust(16, '0')}  {video}  {sizes[key]}"
        for key, video in [("aaaa5", "a.mp4"), ("bbbb2", "b.mp4")]]
    assert not listed["bbbb2"].exists() and not listed["aaaa5"].exists()
    result = _tf("cache", "rm", "--video", "some/dir/b.mp4", "--cache-dir", str(tf_cache.root))
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [f"removed features/unet {'cccc3'.ljust(16, '0')}  "
                                          f"b.mp4  {sizes['cccc3']}"]
    assert [e.key[:5] for e in tf_cache.entries()] == ["aaaa1", "dddd4"]
    # both selectors: an entry must match each
    result = _tf("cache", "rm", "--kind", "features", "--video", "nope.mp4",
                 "--cache-dir", str(tf_cache.root))
    assert result.exit_code == 1, result.output
    assert "no cache entry matches kind 'features', video 'nope.mp4'" in result.output
    assert "(1 entry without a video name" in result.output
    assert len(result.output.strip().splitlines()) == 1 and listed["aaaa1"].exists()


@pytest.mark.parametrize("args, message", [
    ([], "give a KEY"),
    (["--all", "--kind", "features"], "--all removes every entry: give it alone"),
    (["aaaa1", "--all"], "--all removes every entry"),
    (["aaa"], "at least 4 characters"),
    (["aaa", "--kind", "features"], "at least 4 characters"),
    (["--kind", "feature"], "unknown kind 'feature'; kinds: inversion, features"),
    (["aaaa"], "key prefix 'aaaa' matches 2 entries"),
])
def test_tf_cache_rm_refuses_empty_and_ambiguous_selections(tf_cache, listed, args,
                                                            message: str) -> None:
    result = _tf("cache", "rm", *args, "--cache-dir", str(tf_cache.root))
    assert result.exit_code == 2 and message in result.output, result.output
    assert len(tf_cache.entries()) == len(listed)  # nothing removed


def test_an_ambiguous_key_prefix_is_narrowed_by_kind(tf_cache, listed) -> None:
    result = _tf("cache", "rm", "aaaa", "--kind", "features", "--cache-dir", str(tf_cache.root))
    assert result.exit_code == 0, result.output
    assert not listed["aaaa1"].exists() and listed["aaaa5"].exists()


def test_progress_marks_several_units_in_one_write_and_clears_a_killed_writes_leftovers(
        tmp_path: Path) -> None:
    from tokenflow.cache.store import Progress

    path = tmp_path / ".entry.partial.progress.json"
    progress = Progress(path, "k")
    progress.mark("t0:f0", "t1:f0", evals=4)
    stale = tmp_path / f".{path.name}.0123abcd.tmp"  # what SIGKILL mid-write leaves
    stale.write_text("{")
    again = Progress(path, "k")
    assert again.done("t0:f0") and again.done("t1:f0") and again.state == {"evals": 4}
    assert not stale.exists()
    assert not Progress(path, "another key").resumed


def test_the_plan_line_says_what_is_reused_resumed_and_computed(tmp_path: Path) -> None:
    """The first line of a run (tokenflow.preflight.plan_line): reused, resumed (a partial
    store with progress) and computed stages, the bytes and the cache folder."""
    import os
    from types import SimpleNamespace

    from tokenflow.cache.store import Progress, StageCache
    from tokenflow.preflight import plan_line

    cache = StageCache(tmp_path / "cache")
    names = {"inversion": "ddim", "features": "unet", "editor": "pnp", "blender": "tokenflow"}
    keys = {kind: f"{kind}-key".ljust(32, "0") for kind in names}
    job = SimpleNamespace(stages={k: SimpleNamespace(name=n) for k, n in names.items()},
                          keys=keys, base=SimpleNamespace(cache=cache))
    partial = cache.partial_path("blender", "tokenflow", keys["blender"])
    partial.mkdir(parents=True)
    Progress(cache.progress_path(partial), keys["blender"]).mark("step:0", "step:1")
    line = plan_line(job, ["features", "editor", "blender"], 3 * 2**20)
    assert line == ("stage cache: reusing inversion; resuming blender (left partly done by an "
                    "interrupted run); computing features, editor; up to 3.0 MiB to write to "
                    f"{tmp_path / 'cache'}{os.sep}")
    assert cache.partial_units("blender", "tokenflow", keys["blender"]) == 2
    # progress of another key (a stale file) is not a resume
    Progress(cache.progress_path(partial), "other").mark("step:0")
    assert "resuming" not in plan_line(job, ["blender"], 0)
    assert plan_line(job, [], 0) == ("stage cache: every stage is cached (inversion, features, "
                                     f"editor, blender) in {tmp_path / 'cache'}{os.sep}")
