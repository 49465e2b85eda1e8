"""Tests for tokenflow.models: tiny checkpoints, loading, validation errors, content keys and VAE/text helpers."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from tokenflow.embedded.tokenizer import tiny_tokenizer
from tokenflow.models import Model, ModelError, default_dtype, load_model, parse_dtype
from tokenflow.testing.tiny import build_tiny_model, save_tiny_model


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No hub access and a private file-hash memo for every test."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    memo_dir = tmp_path / "hash-memo"
    monkeypatch.setenv("TOKENFLOW_HASH_CACHE", str(memo_dir))
    return memo_dir


def _copy(src: Path, dst: Path) -> Path:
    return Path(shutil.copytree(src, dst))


def _edit_json(path: Path, **changes: object) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


# --------------------------------------------------------------------------------------------- tokenizer


def test_tiny_tokenizer_whole_words(tmp_path: Path) -> None:
    tok = tiny_tokenizer(tmp_path)
    assert (tmp_path / "vocab.json").is_file() and (tmp_path / "merges.txt").is_file()
    assert tok.model_max_length == 77
    for word in ["a", "the", "red", "blue", "green", "ball", "box", "on", "floor", "cat", "dog", "car", "in", "of",
                 "with", "photo"]:
        assert len(tok(word, add_special_tokens=False).input_ids) == 1, word
    ids = tok("A red ball on the floor").input_ids
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id and len(ids) == 8
    # Unknown words still encode (byte-level fallback), e.g. "zebra!" -> several tokens.
    assert len(tok("zebra!", add_special_tokens=False).input_ids) > 1


# --------------------------------------------------------------------------------------------- building/loading


def test_build_tiny_model_is_seeded_and_not_degenerate() -> None:
    state = torch.random.get_rng_state()
    a, b = build_tiny_model(seed=0), build_tiny_model(seed=0)
    assert torch.equal(state, torch.random.get_rng_state()), "global RNG must be untouched"
    c = build_tiny_model(seed=1)
    for name in ("unet", "vae", "text_encoder"):
        sa, sb, sc = a[name].state_dict(), b[name].state_dict(), c[name].state_dict()
        assert all(torch.equal(sa[k], sb[k]) for k in sa), f"{name} differs for the same seed"
        assert not all(torch.equal(sa[k], sc[k]) for k in sa), f"{name} ignores the seed"
    for name in ("unet", "vae", "text_encoder"):
        for pname, p in a[name].named_parameters():
            assert p.ndim < 2 or torch.any(p), f"{name}.{pname} is all zero"
    with torch.no_grad():
        out = a["unet"](torch.randn(1, 4, 16, 16), 500, torch.randn(1, 77, 64)).sample
    assert out.shape == (1, 4, 16, 16) and out.std() > 1e-3


@pytest.mark.parametrize("layout", ["sd15", "sd21"])
def test_load_saved_tiny_model_offline(layout: str, tf_tiny_model_dir: Path, tmp_path: Path) -> None:
    directory = tf_tiny_model_dir if layout == "sd15" else save_tiny_model(tmp_path / "m", layout)
    m = load_model(directory, device="cpu", dtype="fp32")
    assert m.model_id == str(directory) and m.revision is None
    assert m.device == torch.device("cpu") and m.dtype == torch.float32
    assert m.unet.config.use_linear_projection is (layout == "sd21")
    assert m.vae_scale_factor == 8 and m.native_size == 128 and m.scaling_factor == pytest.approx(0.18215)
    assert m.size_multiple == 64  # 8 px latent cells, halved by 3 of the 4 down blocks
    assert m.prediction_type == "epsilon" and type(m.scheduler).__name__ == "DDIMScheduler"
    assert m.scheduler.config.steps_offset == 1 and m.scheduler.config.clip_sample is False
    assert not m.unet.training and not any(p.requires_grad for p in m.unet.parameters())
    assert not any(p.requires_grad for p in m.text_encoder.parameters())
    assert len(m.key) == 64 and str(directory) in m.label


def test_stable_diffusion_pipeline_loads_tiny_dir(tf_tiny_model_dir: Path) -> None:
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(tf_tiny_model_dir, local_files_only=True)
    images = pipe("a red ball", num_inference_steps=2, height=64, width=64, output_type="np",
                  generator=torch.Generator().manual_seed(0)).images
    assert images.shape == (1, 64, 64, 3) and np.isfinite(images).all()


def test_load_none_gives_the_embedded_model() -> None:
    """The shipped model loads through the same loader as any diffusers checkpoint, offline."""
    m = load_model(None, device="cpu")
    assert m.model_id == "embedded" and m.revision is None and "embedded" in m.label
    assert m.dtype == torch.float32 and m.native_size == 96 and m.vae_scale_factor == 8
    assert m.size_multiple == 32  # three UNet levels
    assert m.defaults.get("inversion.inversion_steps") == 100
    from tokenflow.embedded.suggestions import EMBEDDED_DEFAULTS

    assert m.defaults == EMBEDDED_DEFAULTS  # the shipped suggestions are the recipe's
    # every editor shares one feature store: it keeps what PnP's defaults inject
    assert m.defaults["features.conv_layers"] == m.defaults["editor.conv_layers"]
    assert m.defaults["features.conv_t"] == m.defaults["editor.pnp_f_t"]
    from tokenflow.embedded.suggestions import EMBEDDED_VOCABULARY
    from tokenflow.embedded.world2 import WORDS

    assert m.vocabulary is not None and m.vocabulary.words == frozenset(WORDS)
    assert dict(m.vocabulary.lost_in_edits) == EMBEDDED_VOCABULARY["lost_in_edits"]
    assert dict(m.vocabulary.not_added_by_edits) == EMBEDDED_VOCABULARY["not_added_by_edits"]
    assert m.tokenizer.model_max_length == 32
    assert m.scaling_factor != pytest.approx(0.18215)  # measured on its own latents
    assert load_model(None, device="cpu").key == m.key
    assert load_model(None, device="cpu", dtype=torch.bfloat16).key != m.key


def test_v_prediction_checkpoint(tf_tiny_model_dir: Path, tmp_path: Path) -> None:
    directory = _copy(tf_tiny_model_dir, tmp_path / "v")
    _edit_json(directory / "scheduler" / "scheduler_config.json", prediction_type="v_prediction")
    m = load_model(directory, device="cpu")
    assert m.prediction_type == "v_prediction" and "v_prediction" in m.label


def test_hub_id_resolved_from_local_cache(tf_tiny_model_dir: Path, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--tiny-org--tiny-sd"
    _copy(tf_tiny_model_dir, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    m = load_model("tiny-org/tiny-sd", device="cpu")
    assert m.model_id == "tiny-org/tiny-sd" and m.revision == commit
    with pytest.raises(ModelError, match="could not|not found"):
        load_model("tiny-org/not-cached", device="cpu")


def test_hub_download_fetches_the_checkpoints_tokenflow_json(tf_tiny_model_dir: Path,
                                                             tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """A Hub repo's ``tokenflow.json`` (its suggested defaults and words) comes with the configs
    when the repo is downloaded, as it does from a local directory."""
    import fnmatch

    import huggingface_hub

    remote = _copy(tf_tiny_model_dir, tmp_path / "remote")
    (remote / "tokenflow.json").write_text(json.dumps(
        {"defaults": {"editor.guidance_scale": 4.0}, "vocabulary": {"words": ["a", "ball"]}}))
    snapshot = tmp_path / "snapshot" / ("ab" * 20)
    fetched: list[list[str]] = []

    def snapshot_download(repo_id, *, allow_patterns, local_files_only=False, **_):
        """The Hub's behaviour that matters here: only files matching ``allow_patterns`` arrive."""
        if local_files_only:
            raise FileNotFoundError("not in the local cache")
        fetched.append(list(allow_patterns))
        for path in remote.rglob("*"):
            name = path.relative_to(remote).as_posix()
            if path.is_file() and any(fnmatch.fnmatch(name, p) for p in allow_patterns):
                (snapshot / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, snapshot / name)
        return str(snapshot)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    m = load_model("tiny-org/with-extras", device="cpu")
    assert len(fetched) == 2  # the configs first (checked), then the weights
    assert (snapshot / "tokenflow.json").is_file()
    assert m.defaults.get("editor.guidance_scale") == 4.0
    assert m.vocabulary is not None and m.vocabulary.words == {"a", "ball"}


# --------------------------------------------------------------------------------------------- keys


def test_key_stable_and_sensitive(tf_tiny_model_dir: Path, tmp_path: Path, _offline: Path) -> None:
    directory = _copy(tf_tiny_model_dir, tmp_path / "k")
    key = load_model(directory, device="cpu").key
    memo = _offline / "filehash.json"
    assert memo.is_file() and len(json.loads(memo.read_text())) >= 5
    assert load_model(directory, device="cpu").key == key
    memo.write_text("{not json")  # a corrupt memo is ignored and rewritten
    assert load_model(directory, device="cpu").key == key
    assert json.loads(memo.read_text())
    assert load_model(directory, device="cpu", dtype="float16").key != key
    weights = directory / "vae" / "diffusion_pytorch_model.safetensors"
    state = load_file(weights)
    name = sorted(state)[0]
    state[name] = state[name] + 1.0
    save_file(state, weights)
    assert load_model(directory, device="cpu").key != key


# --------------------------------------------------------------------------------------------- helpers


def test_encode_decode_frames_and_prompts(tf_tiny_model: Model) -> None:
    frames = np.random.default_rng(0).integers(0, 256, size=(3, 64, 96, 3), dtype=np.uint8)
    latents = tf_tiny_model.encode_frames(frames, batch_size=2)
    assert latents.shape == (3, 4, 8, 12) and latents.dtype == torch.float32
    # batching does not change results
    assert torch.equal(latents[:2], tf_tiny_model.encode_frames(frames[:2]))
    decoded = tf_tiny_model.decode_latents(latents, batch_size=2)
    assert decoded.shape == (3, 64, 96, 3) and decoded.dtype == np.uint8
    with pytest.raises(ValueError, match="multiple of 8"):
        tf_tiny_model.encode_frames(frames[:, :60])
    emb = tf_tiny_model.encode_prompts(["a red ball", "the cat on the floor"])
    assert emb.shape == (2, 77, 64) and emb.dtype == torch.float32
    assert not torch.equal(emb[0], emb[1])
    assert not tf_tiny_model.prompt_truncated("a red ball")
    assert not tf_tiny_model.prompt_truncated(" ".join(["cat"] * 75))
    assert tf_tiny_model.prompt_truncated(" ".join(["cat"] * 76))


def test_dtypes() -> None:
    assert parse_dtype("fp16") is torch.float16 and parse_dtype("Float32") is torch.float32
    assert parse_dtype("bfloat16") is torch.bfloat16
    with pytest.raises(ModelError, match="dtype"):
        parse_dtype("int8")
    assert default_dtype(torch.device("cpu")) is torch.float32 and default_dtype("cuda") is torch.float16


# --------------------------------------------------------------------------------------------- errors


def test_error_empty_directory(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="not a diffusers Stable Diffusion checkpoint"):
        load_model(tmp_path, device="cpu")


def test_error_missing_path_and_file(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="does not exist"):
        load_model(tmp_path / "nope" / "deeper", device="cpu")
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ModelError, match="single-file"):
        load_model(tmp_path / "model.safetensors", device="cpu")


def test_error_pickle_only_weights(tmp_path: Path) -> None:
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(**build_tiny_model(), safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.save_pretrained(tmp_path, safe_serialization=False)
    assert not list((tmp_path / "unet").glob("*.safetensors"))
    with pytest.raises(ModelError, match="safetensors weights are required"):
        load_model(tmp_path, device="cpu")


def test_error_sdxl(tf_tiny_model_dir: Path, tmp_path: Path) -> None:
    directory = _copy(tf_tiny_model_dir, tmp_path / "xl")
    _edit_json(directory / "unet" / "config.json", addition_embed_type="text_time")
    with pytest.raises(ModelError, match="SDXL checkpoints are not supported"):
        load_model(directory, device="cpu")
    _edit_json(directory / "unet" / "config.json", addition_embed_type=None)
    _edit_json(directory / "model_index.json", text_encoder_2=["transformers", "CLIPTextModelWithProjection"])
    with pytest.raises(ModelError, match="SDXL"):
        load_model(directory, device="cpu")


@pytest.mark.parametrize(("config", "change", "match"), [
    pytest.param("unet/config.json", {"up_block_types": ["UpBlock2D"] * 4},
                 "unsupported UNet layout: TokenFlow injects the self-attention", id="unet_layout"),
    pytest.param("scheduler/scheduler_config.json", {"prediction_type": "sample"},
                 "prediction_type 'sample'", id="prediction_type"),
])
def test_error_in_a_config(config: str, change: dict, match: str, tf_tiny_model_dir: Path,
                           tmp_path: Path) -> None:
    """A copy of the tiny model with one value of a config changed is refused, naming it."""
    directory = _copy(tf_tiny_model_dir, tmp_path / "model")
    _edit_json(directory / config, **change)
    with pytest.raises(ModelError, match=match):
        load_model(directory, device="cpu")


def test_error_missing_component(tf_tiny_model_dir: Path, tmp_path: Path) -> None:
    directory = _copy(tf_tiny_model_dir, tmp_path / "novae")
    shutil.rmtree(directory / "vae")
    with pytest.raises(ModelError, match="missing vae/"):
        load_model(directory, device="cpu")


def test_tokenflow_json_vocabulary(tf_tiny_model_dir: Path, tmp_path: Path) -> None:
    """A checkpoint's declared vocabulary reaches the loaded model; a malformed one is a one-line
    model error; none declared: no vocabulary (no notes about prompt words)."""
    assert load_model(str(tf_tiny_model_dir), device="cpu").vocabulary is None
    directory = _copy(tf_tiny_model_dir, tmp_path / "vocab")
    (directory / "tokenflow.json").write_text(json.dumps(
        {"vocabulary": {"words": ["A", "red", "ball"], "lost_in_edits": {"Dotted": "why"}}}))
    vocabulary = load_model(str(directory), device="cpu").vocabulary
    assert vocabulary.words == {"a", "red", "ball"} and dict(vocabulary.lost_in_edits) == {"dotted": "why"}
    assert dict(vocabulary.not_added_by_edits) == {}
    (directory / "tokenflow.json").write_text(json.dumps({"vocabulary": ["a", "red"]}))
    with pytest.raises(ModelError, match="tokenflow.json.*vocabulary"):
        load_model(str(directory), device="cpu")
