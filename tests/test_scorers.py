"""Scorers (``register_scorers``): the hook and its registry, make_scorers and score_all, the
built-in ``attribute``/``attribute-background`` on rendered world scenes and ``clip`` on a tiny
random CLIP saved to a temporary directory."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from tokenflow import StageError, hookimpl
from tokenflow.registry import RegistryError
from tokenflow.eval.scoring import Scorer, collect_scorers, make_scorers, score_all, scorers
from tokenflow import world

BUILTINS = {"attribute", "attribute-background", "clip"}
BUILTIN_PLUGIN = "tokenflow_plugins.scorers (tokenflow 0.1.0)"
N = 4
PROMPT = "a red ball on wood"
MEAN, STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]


def world_frames(colour: str, background: str = "wood", n: int = N, texture: str = "plain",
                 *others: world.Thing) -> np.ndarray:
    """``n`` frames (64x96) of a ``colour`` ``texture`` ball moving right over ``background``,
    with ``others`` standing still."""
    ball = world.Thing("ball", colour, texture, y=-0.1, radius=0.26, period=0.6)
    scenes = [world.Scene(background, (replace(ball, x=-0.4 + 0.1 * i), *others), seed=3)
              for i in range(n)]
    return np.stack([world.render(scene, 64, 96)[0] for scene in scenes])


class EchoScorer:
    """Scores every frame with its mean brightness plus ``offset`` (an option)."""

    name = "echo"
    version = 2
    summary = "mean brightness"

    def __init__(self, offset: float = 0.0) -> None:
        self.offset = float(offset)

    def available(self):
        return None

    def describe(self) -> str:
        return "echo (brightness)\nsecond line"

    def score(self, frames, prompt, *, source=None):
        return frames.reshape(len(frames), -1).mean(axis=1) / 255 + self.offset


class KwargsScorer(EchoScorer):
    name = "kwargs"

    def __init__(self, **options) -> None:
        self.options = options
        super().__init__()


def scorer_plugin(*classes: type):
    """An object implementing register_scorers that registers ``classes``."""

    class Plugin:
        @hookimpl
        def register_scorers(self, register):
            for cls in classes:
                register(cls)

    return Plugin()


# --------------------------------------------------------------------------------------------- registry


def test_register_scorers_collects_the_builtins(tf_plugin_manager) -> None:
    found, owners = collect_scorers(tf_plugin_manager)
    assert BUILTINS <= set(found)
    assert {name for name, owner in owners.items() if owner == BUILTIN_PLUGIN} == BUILTINS
    for name in BUILTINS:
        cls = found[name]
        assert cls.name == name and isinstance(cls.version, int) and cls.summary
    assert scorers(tf_plugin_manager) == found


def test_a_test_plugin_scorer_is_found_and_built_with_its_options(tf_plugin_manager,
                                                                  tf_register) -> None:
    assert "echo" not in scorers(tf_plugin_manager)
    tf_register(scorer_plugin(EchoScorer, KwargsScorer), name="echo-plugin")
    found, owners = collect_scorers(tf_plugin_manager)
    assert found["echo"] is EchoScorer and owners["echo"] == "echo-plugin"
    echo, kw = make_scorers(tf_plugin_manager, ["echo", "kwargs", "echo"],
                            {"offset": 2.5, "clip": "/somewhere", "device": None})
    # only the options a constructor declares; everything for **options; None left out
    assert (echo.name, echo.owner, echo.version, echo.summary) == ("echo", "echo-plugin", 2,
                                                                  "mean brightness")
    assert echo.instance.offset == 2.5 and echo.label == "echo (brightness)"
    assert kw.instance.options == {"offset": 2.5, "clip": "/somewhere"}
    every = make_scorers(tf_plugin_manager, None, {})
    assert [s.name for s in every] == sorted(scorers(tf_plugin_manager))
    with pytest.raises(StageError, match="unknown scorer 'nope'; installed: attribute, "
                                         "attribute-background, clip, echo, kwargs"):
        make_scorers(tf_plugin_manager, ["echo", "nope"], {})


def test_a_duplicate_scorer_name_names_both_plugins(tf_plugin_manager, tf_register) -> None:
    class Clip(EchoScorer):
        name = "clip"

    tf_register(scorer_plugin(Clip), name="dup-plugin")
    with pytest.raises(RegistryError) as info:
        scorers(tf_plugin_manager)
    assert str(info.value) == (f"scorer 'clip' is registered twice: by {BUILTIN_PLUGIN} "
                               "and by dup-plugin")


def test_a_plugin_failing_in_register_scorers_is_named(tf_plugin_manager, tf_register) -> None:
    class Broken:
        @hookimpl
        def register_scorers(self, register):
            raise ZeroDivisionError("oops")

    tf_register(Broken(), name="broken-plugin")
    with pytest.raises(RegistryError, match=r"^plugin broken-plugin failed in register_scorers: "
                                            r"ZeroDivisionError: oops$"):
        scorers(tf_plugin_manager)


MISSING = object()


@pytest.mark.parametrize("attrs, match", [
    ({"version": MISSING}, "has no 'version'"),
    ({"name": ""}, "needs a non-empty str name"),
    ({"version": "1"}, "version that is not an int"),
    ({"score": None}, "has no score\\(\\) method"),
])
def test_malformed_scorer_classes_are_rejected(tf_plugin_manager, tf_register, attrs,
                                               match: str) -> None:
    body = {"name": "bad", "version": 1, "summary": "", "available": EchoScorer.available,
            "score": EchoScorer.score, **attrs}
    cls = type("Bad", (), {k: v for k, v in body.items() if v is not MISSING})
    tf_register(scorer_plugin(cls), name="bad-plugin")
    with pytest.raises(RegistryError, match=rf"^bad-plugin: scorer .*{match}"):
        scorers(tf_plugin_manager)


# --------------------------------------------------------------------------------------------- attribute


def test_attribute_scores_the_colour_and_the_background_per_frame(tf_plugin_manager) -> None:
    built = make_scorers(tf_plugin_manager, ["attribute", "attribute-background"], {})
    assert [s.owner for s in built] == [BUILTIN_PLUGIN] * 2
    prompt = "a blue ball on wood"
    red, blue = world_frames("red"), world_frames("blue")
    assert score_all(built, red, prompt, source=red) == (
        {"attribute": [0.0] * N, "attribute-background": [1.0] * N}, [])
    assert score_all(built, blue, prompt, source=red)[0]["attribute"] == [1.0] * N
    # per frame: two frames edited, two not; grass fails the background check
    mixed = np.concatenate([red[:2], blue[2:]])
    grass = world_frames("blue", background="grass")
    assert score_all(built, mixed, prompt)[0]["attribute"] == [0.0, 0.0, 1.0, 1.0]
    assert score_all(built, grass, prompt)[0] == {"attribute": [1.0] * N,
                                                 "attribute-background": [0.0] * N}
    in_grass = score_all(built, grass, "a blue ball in the grass")[0]
    assert in_grass["attribute-background"] == [1.0] * N
    assert built[0].label == "attribute (object colour and texture, 0/1)"


def test_attribute_reads_the_texture_the_prompt_names(tf_plugin_manager) -> None:
    built = make_scorers(tf_plugin_manager, ["attribute"], {})
    plain, striped = world_frames("blue"), world_frames("blue", "wood", N, "striped")
    dotted, red_striped = (world_frames("blue", "wood", N, "dotted"),
                           world_frames("red", "wood", N, "striped"))
    prompt = "a blue striped ball on wood"
    assert [score_all(built, f, prompt)[0]["attribute"]
            for f in (plain, striped, dotted, red_striped)] == [[0.0] * N, [1.0] * N, [0.0] * N,
                                                                [0.0] * N]
    # no texture word: any texture
    assert score_all(built, striped, "a blue ball on wood")[0]["attribute"] == [1.0] * N
    assert score_all(built, striped, "a striped ball")[0]["attribute"] == [1.0] * N
    assert score_all(built, dotted, "a striped ball")[0]["attribute"] == [0.0] * N


def test_attribute_finds_every_object_the_prompt_names(tf_plugin_manager) -> None:
    built = make_scorers(tf_plugin_manager, ["attribute"], {})
    box = world.Thing("box", "yellow", "checkered", x=0.45, y=0.05, radius=0.2, period=0.75)
    frames = world_frames("red", "sand", N, "striped", box)

    def attribute(prompt: str) -> list[float]:
        return score_all(built, frames, prompt)[0]["attribute"]

    assert attribute("a red striped ball and a yellow checkered box on sand") == [1.0] * N
    assert attribute("a yellow box and a red ball on sand") == [1.0] * N  # in any order
    assert attribute("a yellow box and a blue striped ball on sand") == [0.0] * N
    assert attribute("a red striped ball and a yellow dotted box on sand") == [0.0] * N
    # each named object is a different object of the frame
    assert attribute("a red ball and a red box on sand") == [0.0] * N
    assert attribute("a red ball and a yellow box and a green triangle on sand") == [0.0] * N


def test_prompts_are_read_as_world_captions() -> None:
    from tokenflow_plugins.scorers import NamedThing, prompt_backgrounds, prompt_things

    assert prompt_things("a red checkered ball and a blue box on wood") == [
        NamedThing("red", "checkered"), NamedThing("blue", None)]
    assert prompt_things("A Ringed ball on a wall") == [NamedThing(None, "ringed")]
    assert prompt_things("a blue ball in the sky") == [NamedThing("blue", None)]
    assert prompt_things("a ball and a box on red sand") == []  # after "on": the background
    assert prompt_backgrounds("a red ball on a wall") == ["wall"]
    assert prompt_backgrounds("a red ball on wood and tiles") == ["wood", "tiles"]


def test_attribute_is_skipped_for_a_prompt_without_a_world_object(tf_plugin_manager) -> None:
    built = make_scorers(tf_plugin_manager, ["attribute", "attribute-background"], {})
    frames = world_frames("red")
    scores, notes = score_all(built, frames, "a photo of a cat on a sofa")
    assert scores == {}
    assert notes == [
        ("scorer 'attribute' skipped: the prompt names no object colour or texture of the world "
         "(red, orange, yellow, green, blue, purple; striped, dotted, checkered, ringed)"),
        ("scorer 'attribute-background' skipped: the prompt names no background of the world "
         "(sand, grass, wood, tiles, wall)")]
    scores, notes = score_all(built, frames, "a red blue ball and a box on sand")
    assert scores == {"attribute-background": [0.0] * N}
    assert notes == [("scorer 'attribute' skipped: the prompt names several colours for one "
                      "object (red, blue): 'a red blue ball'")]
    assert score_all(built[:1], frames, "a red striped dotted ball")[1] == [
        "scorer 'attribute' skipped: the prompt names several textures for one object "
        "(striped, dotted): 'a red striped dotted ball'"]


# --------------------------------------------------------------------------------------------- clip


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny randomly initialised CLIP (safetensors), its tokenizer and image settings."""
    import torch
    from transformers import CLIPConfig, CLIPModel

    from tokenflow.embedded.tokenizer import tiny_tokenizer

    root = tmp_path_factory.mktemp("tiny-clip")
    tokenizer = tiny_tokenizer(root)
    layers = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
              "num_attention_heads": 2}
    config = CLIPConfig(
        text_config={**layers, "vocab_size": len(tokenizer), "max_position_embeddings": 77,
                     "bos_token_id": tokenizer.bos_token_id,
                     "eos_token_id": tokenizer.eos_token_id,
                     "pad_token_id": tokenizer.pad_token_id},
        vision_config={**layers, "image_size": 32, "patch_size": 8}, projection_dim=16)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        CLIPModel(config).save_pretrained(root, safe_serialization=True)
    tokenizer.save_pretrained(root)
    (root / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "CLIPImageProcessor", "do_resize": True,
        "size": {"shortest_edge": 32}, "resample": 3, "do_center_crop": True,
        "crop_size": {"height": 32, "width": 32}, "do_rescale": True,
        "rescale_factor": 1 / 255, "do_normalize": True, "do_convert_rgb": True,
        "image_mean": MEAN, "image_std": STD}))
    return root


def _clip_note(pm, **options) -> str:
    scores, notes = score_all(make_scorers(pm, ["clip"], options), world_frames("red"), "a ball")
    assert scores == {} and len(notes) == 1 and "\n" not in notes[0]
    return notes[0]


def test_clip_without_weights_is_skipped_with_one_line(tf_plugin_manager, tmp_path: Path) -> None:
    pm = tf_plugin_manager
    assert _clip_note(pm) == ("scorer 'clip' skipped: no CLIP weights: pass --clip PATH "
                              "(a local transformers CLIP directory)")
    assert _clip_note(pm, clip=None) == _clip_note(pm)
    assert _clip_note(pm, clip=str(tmp_path / "missing")).endswith("missing: no such directory")
    assert _clip_note(pm, clip=str(tmp_path)).endswith("is not a CLIP directory: it has no "
                                                       "config.json")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    assert _clip_note(pm, clip=str(tmp_path)).endswith(
        "config.json has model_type 'bert', expected 'clip'")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "clip"}))
    (tmp_path / "pytorch_model.bin").write_bytes(b"not loaded")
    assert _clip_note(pm, clip=str(tmp_path)).endswith(
        "has no model.safetensors (tokenflow never loads pickled weights)")


def test_clip_scores_frames_against_the_prompt(tf_plugin_manager, tiny_clip: Path,
                                                tmp_path: Path) -> None:
    import torch
    from PIL import Image
    from transformers import CLIPModel, CLIPTokenizer

    red, blue = world_frames("red"), world_frames("blue")
    (clip,) = make_scorers(tf_plugin_manager, ["clip"], {"clip": str(tiny_clip), "device": "cpu"})
    assert clip.label == "clip (CLIP score, 0-100)"
    scores, notes = score_all([clip], red, PROMPT)
    assert notes == []
    first = np.array(scores["clip"])
    assert first.shape == (N,) and np.isfinite(first).all() and (first >= 0).all()
    assert (first <= 100).all()
    # deterministic, also with a freshly loaded model; another image scores differently
    (again,) = make_scorers(tf_plugin_manager, ["clip"], {"clip": str(tiny_clip)})
    assert score_all([again], red, PROMPT)[0]["clip"] == scores["clip"]
    other = np.array(score_all([clip], blue, PROMPT)[0]["clip"])
    assert np.abs(other - first).max() > 1e-3
    # the value is 100 x the cosine CLIP's own forward computes (logits / logit scale), >= 0,
    # on frames resized (shortest side, bicubic), centre-cropped and normalised as configured
    wide = np.stack([world.render(world.Scene("sand", (world.Thing("box", c, x=0.1),)), 64, 96)[0]
                     for c in ("green", "purple", "orange")])
    mean, std = np.array(MEAN, np.float32), np.array(STD, np.float32)
    pixels = np.stack([np.asarray(Image.fromarray(f).resize((48, 32), Image.BICUBIC))[:, 8:40]
                       for f in wide]).astype(np.float32) / 255
    pixels = torch.from_numpy(((pixels - mean) / std).transpose(0, 3, 1, 2).copy())
    model = CLIPModel.from_pretrained(tiny_clip, use_safetensors=True).eval()
    text = CLIPTokenizer.from_pretrained(tiny_clip)([PROMPT], return_tensors="pt")
    with torch.no_grad():
        out = model(input_ids=text["input_ids"], attention_mask=text["attention_mask"],
                    pixel_values=pixels)
        cosine = (out.logits_per_image[:, 0] / model.logit_scale.exp()).numpy()
    got = score_all([clip], wide, PROMPT)[0]["clip"]
    np.testing.assert_allclose(got, 100 * np.clip(cosine, 0, None), rtol=1e-5, atol=1e-4)
    assert len(set(np.round(got, 3))) == 3
    # negative cosines are clipped to 0: the same model with the text projection negated
    flipped = tmp_path / "flipped"
    shutil.copytree(tiny_clip, flipped)
    with torch.no_grad():
        model.text_projection.weight.neg_()
    model.save_pretrained(flipped, safe_serialization=True)
    (negated,) = make_scorers(tf_plugin_manager, ["clip"], {"clip": str(flipped)})
    assert score_all([negated], wide, PROMPT)[0]["clip"] == [0.0, 0.0, 0.0]


# --------------------------------------------------------------------------------------------- failures


class BoomScorer(EchoScorer):
    name = "boom"

    def score(self, frames, prompt, *, source=None):
        return 1 / 0


class WrongShape(EchoScorer):
    name = "wrong-shape"

    def score(self, frames, prompt, *, source=None):
        return np.zeros((len(frames), 2))


class Scribbler(EchoScorer):
    name = "scribbler"

    def score(self, frames, prompt, *, source=None):
        frames[...] = 0  # must not reach the scorers after it
        return np.zeros(len(frames))


class NoStart(EchoScorer):
    name = "no-start"

    def __init__(self, clip=None) -> None:
        raise RuntimeError(f"cannot start with {clip}\nmore detail")


class BadAvailable(EchoScorer):
    name = "bad-available"

    def available(self, prompt):
        raise KeyError(prompt)


def test_a_failing_scorer_becomes_a_note_naming_its_plugin(tf_plugin_manager, tf_register) -> None:
    tf_register(scorer_plugin(BoomScorer, WrongShape, Scribbler, NoStart, BadAvailable, EchoScorer),
                name="boom-plugin")
    names = ["boom", "wrong-shape", "scribbler", "no-start", "bad-available", "attribute", "echo"]
    built = make_scorers(tf_plugin_manager, names, {"clip": "x"})
    frames = world_frames("blue")
    scores, notes = score_all(built, frames, "a blue ball")
    assert notes == [
        "scorer 'boom' failed in plugin boom-plugin: ZeroDivisionError: division by zero",
        ("scorer 'wrong-shape' failed in plugin boom-plugin: score() returned shape (4, 2), "
         "expected (4,)"),
        ("scorer 'scribbler' failed in plugin boom-plugin: ValueError: assignment destination is "
         "read-only"),
        ("scorer 'no-start' failed to start in plugin boom-plugin: RuntimeError: cannot start "
         "with x"),
        "scorer 'bad-available' failed in plugin boom-plugin: KeyError: 'a blue ball'"]
    expected = frames.reshape(N, -1).mean(axis=1) / 255
    assert scores == {"attribute": [1.0] * N, "echo": pytest.approx(list(expected))}
    assert (frames == world_frames("blue")).all()
    # a bare instance is accepted; its module stands for the plugin
    assert score_all([BoomScorer()], frames, "x")[1] == [
        f"scorer 'boom' failed in plugin {__name__}: ZeroDivisionError: division by zero"]
    assert isinstance(built[0], Scorer) and built[3].instance is None


def test_score_all_checks_the_frames_it_is_given() -> None:
    frames = world_frames("red")
    with pytest.raises(StageError, match=r"frames must be uint8 of shape \(N, H, W, 3\)"):
        score_all([EchoScorer()], frames.astype(np.float32), "a red ball")
    with pytest.raises(StageError, match=r"source frames have shape \(2, 64, 96, 3\)"):
        score_all([EchoScorer()], frames, "a red ball", source=frames[:2])
