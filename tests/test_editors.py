"""The ``sdedit`` and ``controlnet`` editors, and control extractors, on the tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from click.testing import CliRunner
from tokenflow_plugins.canny_control import canny


from tokenflow import EDITOR, StageError, hookimpl, sdedit_steps
from tokenflow.cli import cli
from tokenflow.editing.controls import control_extractors, get_extractor
from tokenflow.cache.layouts import FeatureReader
from tokenflow.editing.loop import make_run, start_latents
from tokenflow.models import ModelError, controlnet_key, load_controlnet
from tokenflow.testing.tiny import save_tiny_controlnet
from tokenflow.registry import RegistryError
from tokenflow.params import ParamError
from tokenflow.testing import make_job, synthetic_frames
from tokenflow.video import write_frames

N, B, STEPS = 6, 3, 4
PROMPT = "a blue ball"
PARAMS = {"inversion": {"inversion_steps": STEPS}, "editor": {"prompt": PROMPT}}


@pytest.fixture(scope="module")
def frames() -> np.ndarray:
    return synthetic_frames(N, height=64, width=64)


def _job(pm, model, frames, cache, editor: str, options=(), steps: int = STEPS):
    """The run of ``editor`` with ``steps`` steps of inversion and of editing."""
    params = {**PARAMS, "inversion": {"inversion_steps": steps}}
    return make_job(pm, model, frames, cache=cache, steps=steps, batch_size=B, editor=editor,
                    params=params, options=options)


def _run(pm, model, frames, cache, editor: str, options=(), steps: int = STEPS):
    job = _job(pm, model, frames, cache, editor, options, steps)
    results = job.run()
    blender = zarr.open_group(str(results["blender"].path), mode="r")
    return job, results, blender


def _frames(store) -> np.ndarray:
    return np.asarray(store["frames"][...]).astype(np.float64)


# --------------------------------------------------------------------------------------------- sdedit


@pytest.mark.parametrize(("steps", "strength", "expected"), [
    (50, 0.9, (5, 45)), (50, 1.0, (0, 50)), (50, 0.5, (25, 25)), (4, 0.6, (2, 2)), (4, 0.2, (4, 0)),
])
def test_sdedit_runs_the_last_strength_fraction_of_the_grid(steps, strength, expected) -> None:
    assert sdedit_steps(steps, strength) == expected


def test_sdedit_starts_later_on_the_grid_from_the_inverted_noise(tf_plugin_manager, tf_tiny_model,
                                                                 frames, module_cache) -> None:
    job, results, blender = _run(tf_plugin_manager, tf_tiny_model, frames, module_cache, "sdedit",
                                 [("editor.strength", "0.5")])
    inv = zarr.open_group(str(results["inversion"].path), mode="r")
    grid = [int(t) for t in inv["timestep"][...]]
    ran = [int(t) for t in blender["timestep"][...]]
    assert ran == grid[2:]  # int(4 * 0.5) = 2 steps: the last two of the grid
    stats = results["blender"].stats
    assert (stats["steps"], stats["first_step"]) == (2, 2)
    assert stats["unet_frame_evals"] == 2 * 2 * (stats["keyframes_per_step"] + N)
    editor = zarr.open_group(str(results["editor"].path), mode="r")
    assert editor["keyframes"].shape[0] == 2 and editor["model_output"].shape[0] == 2
    # the starting latents are x0 noised to t_first with the inverted noise
    run = make_run(job._context(["editor", "blender"]))
    start = job.stages[EDITOR].initial_latents(run)
    torch.testing.assert_close(start, start_latents(run, grid[2]))
    assert not torch.allclose(start, start_latents(run, grid[0]))


def test_sdedit_injects_nothing(tf_plugin_manager, tf_tiny_model, frames, module_cache,
                                monkeypatch: pytest.MonkeyPatch) -> None:
    _run(tf_plugin_manager, tf_tiny_model, frames, module_cache, "pnp")  # upstream stores cached

    def forbidden(*args, **kwargs):
        raise AssertionError("sdedit read source tokens or conv residuals to inject")

    monkeypatch.setattr(FeatureReader, "tokens", forbidden)
    monkeypatch.setattr(FeatureReader, "conv", forbidden)
    _, results, blender = _run(tf_plugin_manager, tf_tiny_model, frames, module_cache, "sdedit")
    assert not results["blender"].cached
    assert _frames(blender).shape == (N, 64, 64, 3)
    with pytest.raises(AssertionError, match="inject"):  # and pnp does read them
        _run(tf_plugin_manager, tf_tiny_model, frames, module_cache, "pnp",
             [("editor.guidance_scale", "3")])


def test_sdedit_strength_controls_how_far_the_edit_goes(tf_plugin_manager, tf_tiny_model, frames,
                                                         module_cache) -> None:
    """The less noise, the closer the result stays to the source's reconstruction."""
    source = tf_tiny_model.decode_latents(torch.from_numpy(np.asarray(zarr.open_group(str(
        _run(tf_plugin_manager, tf_tiny_model, frames, module_cache, "pnp")[1]["inversion"].path),
        mode="r")["x0"][...])))
    distance = {}
    for strength in ("0.25", "1.0"):
        _, _, blender = _run(tf_plugin_manager, tf_tiny_model, frames, module_cache, "sdedit",
                             [("editor.strength", strength)], steps=8)
        distance[strength] = np.abs(_frames(blender) - source.astype(np.float64)).mean()
    assert distance["0.25"] < distance["1.0"]


def test_sdedit_shares_the_upstream_stores_with_pnp(tf_plugin_manager, tf_tiny_model, frames,
                                                    module_cache) -> None:
    pnp = _job(tf_plugin_manager, tf_tiny_model, frames, module_cache, "pnp")
    sd = _job(tf_plugin_manager, tf_tiny_model, frames, module_cache, "sdedit")
    for kind in ("inversion", "features", "keyframes", "correspondence"):
        assert pnp.keys[kind] == sd.keys[kind], kind
    assert pnp.keys["editor"] != sd.keys["editor"] and pnp.keys["blender"] != sd.keys["blender"]


@pytest.mark.parametrize("strength", ["0", "-0.5", "1.5"])
def test_sdedit_rejects_a_strength_outside_0_1(tf_plugin_manager, tf_tiny_model, frames,
                                               module_cache, strength: str) -> None:
    with pytest.raises(ParamError, match="strength"):
        _job(tf_plugin_manager, tf_tiny_model, frames, module_cache, "sdedit",
             [("editor.strength", strength)])


def test_sdedit_strength_too_small_for_the_grid_is_one_clear_error(
        tf_plugin_manager, tf_tiny_model, frames, module_cache) -> None:
    with pytest.raises(StageError, match="strength 0.2 runs no step of a 4-step grid"):
        _run(tf_plugin_manager, tf_tiny_model, frames, module_cache, "sdedit",
             [("editor.strength", "0.2")])


# --------------------------------------------------------------------------------------------- control extractors


def test_canny_finds_the_edges_of_a_square() -> None:
    frame = np.zeros((1, 32, 32, 3), np.uint8)
    frame[0, 8:24, 8:24] = (200, 60, 30)
    edges = canny(frame)
    assert edges.shape == (1, 32, 32, 3) and edges.dtype == np.float32
    assert set(np.unique(edges)) <= {0.0, 1.0}
    on = edges[0, ..., 0] > 0
    assert on[8:24, 7:9].any() and on[8:24, 23:25].any()  # left and right sides
    assert not on[12:20, 12:20].any() and not on[:5].any()  # flat inside and outside
    np.testing.assert_array_equal(edges[..., 0], edges[..., 2])


class FlatControl:
    @hookimpl
    def register_control_extractors(self, register):
        register("flat", lambda frames: np.full(frames.shape, 0.5, np.float32), version=3)


class BadControl:
    @hookimpl
    def register_control_extractors(self, register):
        register("wrong-shape", lambda frames: np.zeros(frames.shape[:3], np.float32))
        register("out-of-range", lambda frames: np.full(frames.shape, 2.0, np.float32))


def test_control_extractors_come_from_the_hook(tf_plugin_manager, tf_register) -> None:
    assert set(control_extractors(tf_plugin_manager)) == {"canny"}
    assert get_extractor(tf_plugin_manager, "canny").owner.startswith("tokenflow_plugins.canny_control")
    tf_register(FlatControl(), name="flat-plugin")
    found = control_extractors(tf_plugin_manager)
    assert set(found) == {"canny", "flat"} and found["flat"].version == 3
    assert found["flat"].owner == "flat-plugin"
    with pytest.raises(StageError, match="unknown control extractor 'depth'; installed: canny, flat"):
        get_extractor(tf_plugin_manager, "depth")


def test_a_control_name_registered_twice_names_both_plugins(tf_plugin_manager, tf_register) -> None:
    class Again:
        @hookimpl
        def register_control_extractors(self, register):
            register("canny", lambda frames: frames / 255.0)

    tf_register(Again(), name="again-plugin")
    with pytest.raises(RegistryError, match=r"'canny' is registered twice: by "
                                            r"tokenflow_plugins.canny_control.* and by again-plugin"):
        control_extractors(tf_plugin_manager)


def test_malformed_extractor_output_is_one_clear_error(tf_plugin_manager, tf_register) -> None:
    tf_register(BadControl(), name="bad-plugin")
    frames = synthetic_frames(2, height=16, width=16)
    with pytest.raises(StageError, match=r"'wrong-shape' \(bad-plugin\) returned shape"):
        get_extractor(tf_plugin_manager, "wrong-shape")(frames)
    with pytest.raises(StageError, match=r"'out-of-range' \(bad-plugin\) returned values outside"):
        get_extractor(tf_plugin_manager, "out-of-range")(frames)


# --------------------------------------------------------------------------------------------- controlnet


def _cn(path) -> list[tuple[str, str]]:
    return [("editor.controlnet", str(path))]


def test_controlnet_at_scale_zero_is_exactly_its_base_editor(tf_plugin_manager, tf_tiny_model,
                                                             tf_tiny_controlnet_dir, frames,
                                                             module_cache) -> None:
    _, _, pnp = _run(tf_plugin_manager, tf_tiny_model, frames, module_cache, "pnp")
    _, _, zero = _run(tf_plugin_manager, tf_tiny_model, frames, module_cache, "controlnet",
                      _cn(tf_tiny_controlnet_dir) + [("editor.control_scale", "0")])
    np.testing.assert_array_equal(_frames(zero), _frames(pnp))
    _, res_one, one = _run(tf_plugin_manager, tf_tiny_model, frames, module_cache, "controlnet",
                           _cn(tf_tiny_controlnet_dir))
    assert np.abs(_frames(one) - _frames(pnp)).mean() > 1.0  # the control acts
    assert res_one["blender"].stats["unet_frame_evals"] == 2 * STEPS * (2 + N)

    _, _, sd = _run(tf_plugin_manager, tf_tiny_model, frames, module_cache, "sdedit")
    _, res, sd_zero = _run(tf_plugin_manager, tf_tiny_model, frames, module_cache, "controlnet",
                           _cn(tf_tiny_controlnet_dir)
                           + [("editor.mode", "sdedit"), ("editor.control_scale", "0")])
    np.testing.assert_array_equal(_frames(sd_zero), _frames(sd))
    assert res["blender"].stats["first_step"] == sdedit_steps(STEPS, 0.9)[0]


def test_controlnet_sees_the_extractors_control_images(tf_plugin_manager, tf_register, tf_tiny_model,
                                                       tf_tiny_controlnet_dir, frames, module_cache,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    seen = []
    real = get_extractor(tf_plugin_manager, "canny").extract

    class Spy:
        @hookimpl
        def register_control_extractors(self, register):
            def spy(images):
                seen.append(images.copy())
                return real(images)
            register("spy", spy)

    tf_register(FlatControl(), name="flat-plugin")
    tf_register(Spy(), name="spy-plugin")
    _, _, canny_out = _run(tf_plugin_manager, tf_tiny_model, frames, module_cache, "controlnet",
                           _cn(tf_tiny_controlnet_dir))
    _, _, spy_out = _run(tf_plugin_manager, tf_tiny_model, frames, module_cache, "controlnet",
                         _cn(tf_tiny_controlnet_dir) + [("editor.control", "spy")])
    (images,) = seen
    np.testing.assert_array_equal(images, frames)  # the source frames at working resolution
    np.testing.assert_array_equal(_frames(spy_out), _frames(canny_out))  # same control images
    _, _, flat_out = _run(tf_plugin_manager, tf_tiny_model, frames, module_cache, "controlnet",
                          _cn(tf_tiny_controlnet_dir) + [("editor.control", "flat")])
    assert np.abs(_frames(flat_out) - _frames(canny_out)).mean() > 0.5


def test_controlnet_key_follows_weights_and_extractor(tf_plugin_manager, tf_register, tf_tiny_model,
                                                      tf_tiny_controlnet_dir, frames, module_cache,
                                                      tmp_path: Path) -> None:
    other = save_tiny_controlnet(tmp_path / "other", tf_tiny_model.unet, seed=1,
                                 vae_scale_factor=tf_tiny_model.vae_scale_factor)
    copy = tmp_path / "copy"
    copy.mkdir()
    for f in Path(tf_tiny_controlnet_dir).iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    assert controlnet_key(copy) == controlnet_key(tf_tiny_controlnet_dir)  # content, not path
    assert controlnet_key(other) != controlnet_key(tf_tiny_controlnet_dir)
    base = _job(tf_plugin_manager, tf_tiny_model, frames, module_cache, "controlnet",
                _cn(tf_tiny_controlnet_dir))
    moved = _job(tf_plugin_manager, tf_tiny_model, frames, module_cache, "controlnet", _cn(copy))
    changed = _job(tf_plugin_manager, tf_tiny_model, frames, module_cache, "controlnet", _cn(other))
    tf_register(FlatControl(), name="flat-plugin")
    flat = _job(tf_plugin_manager, tf_tiny_model, frames, module_cache, "controlnet",
                _cn(tf_tiny_controlnet_dir) + [("editor.control", "flat")])
    for job in (moved, changed, flat):
        for kind in ("inversion", "features", "keyframes", "correspondence"):
            assert job.keys[kind] == base.keys[kind]
    # the path is a param, so a copy elsewhere is a new key; new weights or extractor too
    assert len({base.keys[EDITOR], moved.keys[EDITOR], changed.keys[EDITOR], flat.keys[EDITOR]}) == 4


def test_controlnet_errors_are_one_clear_line(tf_plugin_manager, tf_tiny_model, tf_tiny_controlnet_dir,
                                              frames, module_cache, tmp_path: Path) -> None:
    with pytest.raises(StageError, match="needs -o controlnet"):
        _job(tf_plugin_manager, tf_tiny_model, frames, module_cache, "controlnet")
    with pytest.raises(StageError, match="unknown control extractor 'depth'; installed: canny"):
        _job(tf_plugin_manager, tf_tiny_model, frames, module_cache, "controlnet",
             _cn(tf_tiny_controlnet_dir) + [("editor.control", "depth")])
    with pytest.raises(StageError, match="does not exist"):
        _job(tf_plugin_manager, tf_tiny_model, frames, module_cache, "controlnet",
             _cn(tmp_path / "nope"))
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_bytes((Path(tf_tiny_controlnet_dir) / "config.json").read_bytes())
    (pickled / "diffusion_pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(StageError, match="only pickle weights; safetensors weights are required"):
        _job(tf_plugin_manager, tf_tiny_model, frames, module_cache, "controlnet", _cn(pickled))
    not_cn = tmp_path / "not-cn"
    not_cn.mkdir()
    (not_cn / "config.json").write_text(json.dumps({"_class_name": "UNet2DConditionModel"}))
    with pytest.raises(StageError, match="is not a diffusers ControlNet"):
        _job(tf_plugin_manager, tf_tiny_model, frames, module_cache, "controlnet", _cn(not_cn))
    with pytest.raises(ParamError, match="mode: expected one of pnp, sdedit"):
        _job(tf_plugin_manager, tf_tiny_model, frames, module_cache, "controlnet",
             _cn(tf_tiny_controlnet_dir) + [("editor.mode", "img2img")])


def test_a_controlnet_for_another_unet_is_refused(tf_tiny_model, tmp_path: Path) -> None:
    from diffusers import ControlNetModel

    config = dict(ControlNetModel.load_config(str(_saved(tf_tiny_model, tmp_path))))
    config["block_out_channels"] = [320, 640, 1280, 1280]
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    (wrong / "config.json").write_text(json.dumps(config))
    (wrong / "diffusion_pytorch_model.safetensors").write_bytes(b"")
    with pytest.raises(ModelError, match="does not fit this UNet: block_out_channels"):
        load_controlnet(wrong, tf_tiny_model)


def _saved(model, tmp_path: Path) -> Path:
    return save_tiny_controlnet(tmp_path / "cn", model.unet, vae_scale_factor=model.vae_scale_factor)


def test_load_controlnet_matches_the_models_device_and_dtype(tf_tiny_model, tmp_path: Path) -> None:
    net = load_controlnet(_saved(tf_tiny_model, tmp_path), tf_tiny_model)
    param = next(net.parameters())
    assert param.dtype == tf_tiny_model.dtype and param.device == tf_tiny_model.device
    assert not param.requires_grad and not net.training


# --------------------------------------------------------------------------------------------- CLI


@pytest.mark.slow
def test_tf_run_with_each_editor(tf_tiny_model_dir, tf_tiny_controlnet_dir, tmp_path: Path) -> None:
    clip = tmp_path / "clip"
    write_frames(clip, synthetic_frames(4))
    env = {"TOKENFLOW_HASH_CACHE": str(tmp_path / "memo"), "HF_HUB_OFFLINE": "1",
           "TOKENFLOW_LOAD_PLUGINS": None, "TOKENFLOW_CACHE_DIR": None}
    common = ["--model", str(tf_tiny_model_dir), "--steps", "4", "--inversion-steps", "4",
              "--size", "64", "-q", "--cache-dir", str(tmp_path / "cache")]
    for editor, extra in (("pnp", []), ("sdedit", ["-o", "strength", "0.75"]),
                          ("controlnet", ["-o", "controlnet", str(tf_tiny_controlnet_dir)])):
        out = tmp_path / editor
        result = CliRunner().invoke(cli, ["run", str(clip), "--prompt", PROMPT, "--editor", editor,
                                          "--out", str(out), *common, *extra], env=env)
        assert result.exit_code == 0, result.output
        doc = json.loads((out / "run.json").read_text())
        assert doc["stages"]["editor"]["name"] == editor
        assert (out / "edited.mp4").stat().st_size > 0
    assert json.loads((tmp_path / "sdedit" / "run.json").read_text())["stages"]["editor"][
        "params"]["strength"] == 0.75
    bad = CliRunner().invoke(cli, ["run", str(clip), "--prompt", PROMPT, "--editor", "controlnet",
                                   "--out", str(tmp_path / "bad"), *common], env=env)
    assert bad.exit_code == 2 and "Traceback" not in bad.output
    assert [ln for ln in bad.output.splitlines() if ln.startswith("Error:")] == [
        "Error: the controlnet editor needs -o controlnet DIR_OR_HUB_ID"]


def test_sdedit_frames_edits_every_frame_alone(tf_plugin_manager, tf_tiny_model, frames,
                                              module_cache) -> None:
    job, results, blender = _run(tf_plugin_manager, tf_tiny_model, frames, module_cache,
                                 "sdedit-frames", [("editor.strength", "0.5")])
    assert set(job.stages) == {"inversion", "features", "editor", "blender"}  # nothing to propagate
    stats = results["blender"].stats
    assert (stats["steps"], stats["first_step"]) == (2, 2)
    assert stats["unet_frame_evals"] == 2 * 2 * N  # two branches, every frame, each step run
    _, _, sd = _run(tf_plugin_manager, tf_tiny_model, frames, module_cache, "sdedit",
                    [("editor.strength", "0.5")])
    assert np.abs(_frames(blender) - _frames(sd)).mean() > 0.5  # propagation changes the result


def test_pnp_injects_the_same_rule_of_layers_in_any_unet_layout(tf_tiny_model) -> None:
    """PnP's q/k layers: every decoder self-attention but the first attention block's. In SD's
    layout that is PNP_QK_LAYERS; a UNet with two cross-attention up blocks gets the same rule."""
    from tokenflow.editing.attention import self_attention_layers
    from tokenflow.editing.editors import PNP_QK_LAYERS, pnp_qk_layers
    from tokenflow.models.checkpoints import ModelError, check_unet_layout
    from tokenflow.testing.tiny import build_tiny_model

    sd = self_attention_layers(tf_tiny_model.unet)
    assert pnp_qk_layers(sd) == [layer for layer in sd if layer.startswith(PNP_QK_LAYERS)]
    assert len(pnp_qk_layers(sd)) == 8
    three = {"down_block_types": ("CrossAttnDownBlock2D",) * 2 + ("DownBlock2D",),
             "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 2,
             "block_out_channels": (32, 64, 64)}
    unet = build_tiny_model(seed=1, unet=three)["unet"]
    layers = pnp_qk_layers(self_attention_layers(unet))
    assert [layer.removesuffix(".transformer_blocks.0.attn1") for layer in layers] == [
        "up_blocks.1.attentions.1", "up_blocks.1.attentions.2", "up_blocks.2.attentions.0",
        "up_blocks.2.attentions.1", "up_blocks.2.attentions.2"]
    check_unet_layout(dict(unet.config), "three-downs")  # accepted
    plain = {"down_block_types": ("DownBlock2D",) * 2, "up_block_types": ("UpBlock2D",) * 2,
             "block_out_channels": (32, 64)}
    with pytest.raises(ModelError, match="unsupported UNet layout"):
        check_unet_layout(dict(build_tiny_model(seed=1, unet=plain)["unet"].config), "plain")
