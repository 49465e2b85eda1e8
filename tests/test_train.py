"""The embedded model's training code: seeded, resumable, exportable to a loadable checkpoint."""

from __future__ import annotations

import json

import torch
from safetensors.torch import load_file

from tokenflow.embedded.world2 import WORDS
from tokenflow.models import load_model
from tokenflow.embedded.train import (TRAIN_SHAPES, crop_batch, export, load_vae, scene_batch,
                                      train_decoder, train_unet, train_vae)


def _weights(path):
    return load_file(str(path))


def test_scene_batches_are_deterministic() -> None:
    a, caps_a = scene_batch(0, 7, 4)
    b, caps_b = scene_batch(0, 7, 4)
    c, _ = scene_batch(0, 8, 4)
    assert (a == b).all() and caps_a == caps_b and (a.shape != c.shape or not (a == c).all())
    assert a.shape[0] == 4 and a.shape[1:3] in TRAIN_SHAPES
    assert scene_batch(0, 7, 2, (96, 160))[0].shape == (2, 96, 160, 3)
    crops, objects = crop_batch(0, 3, 5)
    assert crops.shape == (5, 64, 64, 3) and (crops == crop_batch(0, 3, 5)[0]).all()
    assert objects.shape == (5, 64, 64) and objects.dtype == bool and 0 < objects.mean() < 1


def test_vae_training_resumes_to_the_same_weights(tmp_path, monkeypatch) -> None:
    import tokenflow.embedded.train_loop as train_loop

    train_vae(tmp_path / "straight", 4, batch=2, every=2)

    real_save = train_loop.save_checkpoint

    def save_then_die(directory, phase, modules, opt, step, extra=None):
        real_save(directory, phase, modules, opt, step, extra)
        if step == 2:
            raise KeyboardInterrupt  # killed right after the checkpoint at step 2

    monkeypatch.setattr(train_loop, "save_checkpoint", save_then_die)
    try:
        train_vae(tmp_path / "resumed", 4, batch=2, every=2)
    except KeyboardInterrupt:
        pass
    monkeypatch.setattr(train_loop, "save_checkpoint", real_save)
    assert json.loads((tmp_path / "resumed" / "vae_state.json").read_text())["step"] == 2
    train_vae(tmp_path / "resumed", 4, batch=2, every=2)
    a = _weights(tmp_path / "straight" / "vae_model.safetensors")
    b = _weights(tmp_path / "resumed" / "vae_model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    lines = (tmp_path / "resumed" / "vae_log.csv").read_text().splitlines()
    assert lines[0] == "step,loss,psnr,lr,seconds" and lines[1].startswith("0,")


def test_vae_training_is_seeded(tmp_path) -> None:
    train_vae(tmp_path / "a", 2, batch=2, every=100)
    train_vae(tmp_path / "b", 2, batch=2, every=100)
    a, b = _weights(tmp_path / "a" / "vae_model.safetensors"), _weights(tmp_path / "b" / "vae_model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_unet_training_and_export_give_a_loadable_model(tmp_path) -> None:
    train_vae(tmp_path, 2, batch=2, every=100)
    encoder_before = {k: v.clone() for k, v in load_vae(tmp_path).encoder.state_dict().items()}
    decoder_before = {k: v.clone() for k, v in load_vae(tmp_path).decoder.state_dict().items()}
    train_decoder(tmp_path, 2, batch=2, every=100)  # the decoder moves, the encoder does not
    tuned = load_vae(tmp_path)
    assert all(torch.equal(v, tuned.encoder.state_dict()[k]) for k, v in encoder_before.items())
    assert any(not torch.equal(v, tuned.decoder.state_dict()[k]) for k, v in decoder_before.items())
    train_unet(tmp_path, 2, batch=4, dataset=len(TRAIN_SHAPES) * 2, every=100)
    before = _weights(tmp_path / "unet_unet.safetensors")
    train_unet(tmp_path, 3, batch=4, dataset=len(TRAIN_SHAPES) * 2, every=100)  # resumes at step 2
    after = _weights(tmp_path / "unet_unet.safetensors")
    assert json.loads((tmp_path / "unet_state.json").read_text())["step"] == 3
    assert any(not torch.equal(before[k], after[k]) for k in before)
    out = tmp_path / "export"
    (out / "controlnet-canny").mkdir(parents=True)  # made for another UNet: removed
    (out / "controlnet-canny" / "config.json").write_text('{"block_out_channels": [1]}')
    (out / "__init__.py").write_text("# the package's own files stay\n")
    assert export(tmp_path, out) == out
    assert (out / "__init__.py").read_text() == "# the package's own files stay\n"
    assert not (out / "controlnet-canny").exists() and not list(out.glob(".*"))
    model = load_model(out, device="cpu", dtype=torch.float32)
    assert "editor.controlnet" not in model.defaults
    assert model.native_size == 96 and model.tokenizer.model_max_length == 32
    assert model.size_multiple == 32
    assert model.encode_prompts(["a red checkered ball on tiles"]).shape == (1, 32, 64)
    assert all(len(model.tokenizer(w, add_special_tokens=False).input_ids) == 1 for w in WORDS)
    assert model.scaling_factor == json.loads((tmp_path / "unet_state.json").read_text())["scaling_factor"]
    assert next(model.unet.parameters()).dtype == torch.float32
    exported = model.vae.decoder.state_dict()
    assert all(torch.allclose(v, exported[k], atol=1e-2) for k, v in tuned.decoder.state_dict().items())
    stored = load_file(str(out / "unet" / "diffusion_pytorch_model.safetensors"))
    assert next(iter(stored.values())).dtype == torch.float16


def test_the_controlnet_starts_as_the_unets_encoder_and_changes_nothing(tmp_path) -> None:
    from diffusers import ControlNetModel

    from tokenflow.embedded.train import _controlnet_fits, build_unet, make_controlnet

    torch.manual_seed(0)
    unet = build_unet()
    net = make_controlnet(unet)
    own = unet.state_dict()
    for key in ("conv_in.weight", "time_embedding.linear_1.weight",
                "down_blocks.1.resnets.1.conv2.weight", "mid_block.resnets.0.conv1.weight"):
        assert torch.equal(net.state_dict()[key], own[key])
    full = ControlNetModel.from_unet(unet)
    assert sum(p.numel() for p in net.parameters()) < 0.7 * sum(p.numel() for p in full.parameters())
    x, t, text = torch.randn(2, 8, 12, 16), torch.tensor([10, 700]), torch.randn(2, 32, 64)
    down, mid = net(x, t, encoder_hidden_states=text, controlnet_cond=torch.rand(2, 3, 96, 128),
                    return_dict=False)
    with torch.no_grad():
        plain = unet(x, t, encoder_hidden_states=text).sample
        controlled = unet(x, t, encoder_hidden_states=text, down_block_additional_residuals=down,
                          mid_block_additional_residual=mid).sample
    assert torch.equal(plain, controlled)  # zero output convolutions: untrained, it adds nothing
    net.save_pretrained(tmp_path / "cn", safe_serialization=True)
    assert _controlnet_fits(tmp_path / "cn", dict(unet.config))
    assert not _controlnet_fits(tmp_path / "cn", {**dict(unet.config), "layers_per_block": 1})
