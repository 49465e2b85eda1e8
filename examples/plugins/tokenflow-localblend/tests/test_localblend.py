"""The ``localblend`` mechanism on tokenflow's tiny random model: where the mask is empty the
source comes back exactly, where it is full the edit is plain ``pnp``'s, and in between it
depends on the chosen word; the probes read the conditional branch only and change nothing."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, distribution

import numpy as np
import pytest
import torch
import zarr
from diffusers.models.attention_processor import AttnProcessor2_0
from tokenflow_localblend.editor import (
    CrossAttentionProbe,
    LocalBlendEditor,
    WordMaps,
    blend_mask,
    word_positions,
)
from tokenflow import KeyframeEditor

from tokenflow import EDITOR, ParamError, StageError
from tokenflow.testing import build_registry, make_job, read_frames

N, B, STEPS = 4, 2, 3
PROMPT = "a blue ball on grass"
PROBED = "up_blocks.3.attentions.0.transformer_blocks.0.attn2"


@pytest.fixture
def frames(tf_video) -> np.ndarray:
    return read_frames(tf_video, frames=N)  # 64x96: latents 8x12


def _run(pm, model, frames, cache, editor: str = "localblend", options=()) -> dict:
    job = make_job(pm, model, frames, cache=cache, steps=STEPS, batch_size=B, editor=editor,
                   params={"inversion": {"inversion_steps": STEPS}, "editor": {"prompt": PROMPT}},
                   options=options)
    results = job.run()
    blender = zarr.open_group(str(results["blender"].path), mode="r")
    inversion = zarr.open_group(str(results["inversion"].path), mode="r")
    return {
        "key": job.keys[EDITOR],
        "latents": np.asarray(blender["latents"][...]),  # after each step's DDIM step (+ blend)
        "frames": np.asarray(blender["frames"][...]),
        "source": np.asarray(inversion["latents"][...]),  # at each grid timestep
        "x0": np.asarray(inversion["x0"][...]),
        "timesteps": [int(t) for t in inversion["timestep"][...]],
        "editor": zarr.open_group(str(results["editor"].path), mode="r"),
    }


def _probes(model) -> list:
    return [p for p in model.unet.attn_processors.values() if isinstance(p, CrossAttentionProbe)]


def _edited(out: dict) -> np.ndarray:
    """(N, h, w): latent cells of the result that are not the source's clean latents."""
    return (out["latents"][-1] != out["x0"]).any(axis=1)


# ------------------------------------------------------------------------------------------- runs


def test_an_empty_mask_keeps_the_source_at_every_step(pm, tf_tiny_model, frames, tf_cache) -> None:
    out = _run(pm, tf_tiny_model, frames, tf_cache, options=[("editor.words", "ball"),
                                                              ("editor.threshold", "1.5")])
    timesteps, train = out["timesteps"], tf_tiny_model.scheduler.config.num_train_timesteps
    for i in range(STEPS - 1):
        # DDIM's step at timesteps[i] lands on timesteps[i] - train/steps: the store's i + 1
        assert timesteps[i + 1] == timesteps[i] - train // STEPS
        np.testing.assert_array_equal(out["latents"][i], out["source"][i + 1])
    np.testing.assert_array_equal(out["latents"][-1], out["x0"])
    decoded = tf_tiny_model.decode_latents(torch.from_numpy(out["x0"]))
    np.testing.assert_array_equal(out["frames"], decoded)
    assert _probes(tf_tiny_model) == []  # every processor restored after the loop


def test_the_masks_are_kept_in_the_editors_store(pm, tf_tiny_model, frames, tf_cache) -> None:
    out = _run(pm, tf_tiny_model, frames, tf_cache, options=[("editor.words", "ball")])
    mask = out["editor"]["mask"]
    assert mask.metadata.dimension_names == ("timestep", "frame", "latent_y", "latent_x")
    masks = np.asarray(mask[...])
    assert masks.shape == (STEPS, N, 8, 12) and set(np.unique(masks)) <= {0, 1}
    assert 0 < masks[-1].sum() < masks[-1].size  # some cells edited, not all
    # the last step's mask is exactly where the result is not the source's clean latents
    np.testing.assert_array_equal(_edited(out), masks[-1].astype(bool))


def test_threshold_zero_edits_everywhere_exactly_like_pnp(pm, tf_tiny_model, frames,
                                                          tf_cache) -> None:
    pnp = _run(pm, tf_tiny_model, frames, tf_cache, editor="pnp")
    blend = _run(pm, tf_tiny_model, frames, tf_cache, options=[("editor.words", "ball"),
                                                               ("editor.threshold", "0")])
    assert blend["key"] != pnp["key"]  # two computed entries, not one cache hit
    assert not np.array_equal(pnp["latents"][-1], pnp["x0"])
    np.testing.assert_array_equal(blend["latents"], pnp["latents"])
    np.testing.assert_array_equal(blend["frames"], pnp["frames"])


def test_the_mask_follows_the_word(pm, tf_tiny_model, frames, tf_cache) -> None:
    masks = {}
    for word in ("ball", "grass"):
        out = _run(pm, tf_tiny_model, frames, tf_cache, options=[
            ("editor.words", word), ("editor.threshold", "0.5"), ("editor.dilate", "0")])
        changed = out["latents"][-1] != out["x0"]
        np.testing.assert_array_equal(changed.any(axis=1), changed.all(axis=1))  # whole cells
        masks[word] = _edited(out)
        cells = masks[word][0].size
        for frame in masks[word]:
            assert 0 < frame.sum() < cells, (word, frame.sum())
    assert (masks["ball"] != masks["grass"]).mean() > 0.1


@pytest.mark.parametrize(("options", "message"), [
    ([], "localblend needs the words to edit"),
    ([("editor.words", "cat")], "'cat' not among the words of the prompt 'a blue ball on grass'"),
    ([("editor.words", "bal")], "'bal' not among the words"),
    ([("editor.words", "ball,sky")], "'sky' not among the words"),
])
def test_words_must_be_words_of_the_prompt(pm, tf_tiny_model, frames, tf_cache, options,
                                           message) -> None:
    with pytest.raises(StageError, match=message):
        _run(pm, tf_tiny_model, frames, tf_cache, options=options)
    assert _probes(tf_tiny_model) == []


def test_parameters_are_checked_when_the_run_is_planned(pm, tf_tiny_model, frames,
                                                        tf_cache) -> None:
    def plan(*options):
        return make_job(pm, tf_tiny_model, frames, cache=tf_cache, steps=STEPS, batch_size=B,
                        editor="localblend", params={"editor": {"prompt": PROMPT}},
                        options=options)

    job = plan(("editor.words", "ball, on grass"), ("localblend.threshold", "0.25"))
    assert job.stages[EDITOR].params.words == ("ball", "on grass")
    assert job.stages[EDITOR].params.threshold == 0.25
    for bad in (("editor.threshold", "-0.1"), ("editor.dilate", "-1"), ("editor.mask_from", "")):
        with pytest.raises(ParamError, match=bad[0].split(".")[1]):
            plan(("editor.words", "ball"), bad)
    assert plan(("editor.words", "ball"), ("editor.dilate", "2")).keys[EDITOR] != job.keys[EDITOR]


def test_a_new_keyframe_editor_version_changes_the_key(pm, tf_tiny_model, frames, tf_cache,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    def key() -> str:
        return make_job(pm, tf_tiny_model, frames, cache=tf_cache, steps=STEPS, batch_size=B,
                        editor="localblend", params={"editor": {"prompt": PROMPT}},
                        options=[("editor.words", "ball")]).keys[EDITOR]

    before = key()
    assert key() == before
    monkeypatch.setattr(KeyframeEditor, "version", KeyframeEditor.version + 1)
    assert LocalBlendEditor.version == 1 and key() != before


def test_mask_from_must_name_cross_attention_layers(pm, tf_tiny_model, frames, tf_cache) -> None:
    with pytest.raises(StageError, match="matches none of the UNet's cross-attention layers"):
        _run(pm, tf_tiny_model, frames, tf_cache, options=[("editor.words", "ball"),
                                                            ("editor.mask_from", "down_blocks.9.")])


# ------------------------------------------------------------------------------------------ parts


def test_the_probe_reads_the_conditional_branch_and_changes_no_output(tf_tiny_model) -> None:
    attn = tf_tiny_model.unet.get_submodule(PROBED)
    gen = torch.Generator().manual_seed(0)
    frames, latent_hw = 2, (8, 12)
    hidden = torch.randn(2 * frames, 96, attn.to_q.in_features, generator=gen)
    context = torch.randn(2 * frames, 77, attn.to_k.in_features, generator=gen)
    maps = WordMaps(tokens=torch.tensor([2, 3]), latent_hw=latent_hw, n_frames=5)
    probe = CrossAttentionProbe(PROBED, AttnProcessor2_0(), maps)
    with torch.no_grad():
        assert torch.equal(probe(attn, hidden, context), AttnProcessor2_0()(attn, hidden, context))
        assert maps.count.sum() == 0  # not recording
        maps.frames = [1, 3]
        probe(attn, hidden, context)
        query = attn.head_to_batch_dim(attn.to_q(hidden[frames:]))
        key = attn.head_to_batch_dim(attn.to_k(context[frames:]))
        probs = attn.get_attention_scores(query, key)  # diffusers' own (F * heads, S, T)
        expected = probs[..., [2, 3]].sum(-1).view(frames, attn.heads, -1).mean(1)
        torch.testing.assert_close(maps.total[[1, 3]].flatten(1), expected, rtol=1e-5,
                                   atol=1e-6)
        assert maps.count.tolist() == [0, 1, 0, 1, 0]
        assert maps.total[[0, 2, 4]].abs().sum() == 0
        other = hidden.clone()
        other[:frames] = torch.randn(frames, *hidden.shape[1:], generator=gen)  # new uncond
        before = maps.total.clone()
        probe(attn, other, context)
        torch.testing.assert_close(maps.total - before, before)  # the same maps again
    with pytest.raises(StageError, match=r"no attention maps for frames \[0, 2, 4\]"):
        maps.mean()


def test_word_positions_cover_whole_words_only(tf_tiny_model) -> None:
    tokenizer = tf_tiny_model.tokenizer
    prompt = "a blue basketball, on Grass."
    names = tokenizer.convert_ids_to_tokens(tokenizer(prompt).input_ids)
    found = word_positions(tokenizer, prompt,
                           ("basketball", "grass", "on grass", "ball", "BLUE", "sky"))
    assert len(found["basketball"]) > 1  # several BPE tokens, without the comma
    assert "".join(names[p] for p in found["basketball"]) == "basketball</w>"
    assert [names[p] for p in found["grass"]] == ["grass</w>"]
    assert [names[p] for p in found["on grass"]] == ["on</w>", "grass</w>"]
    assert [names[p] for p in found["BLUE"]] == ["blue</w>"]
    assert found["ball"] == [] and found["sky"] == []
    assert word_positions(tokenizer, "a ball and a ball", ("ball",))["ball"] == [2, 5]


def test_word_positions_drop_what_truncation_cuts(tf_tiny_model) -> None:
    tokenizer = tf_tiny_model.tokenizer
    prompt = "a " * 80 + "ball"
    assert word_positions(tokenizer, prompt, ("ball",))["ball"] == []
    assert word_positions(tokenizer, "ball " + prompt, ("ball",))["ball"] == [1]


def test_blend_mask_thresholds_between_each_frames_minimum_and_maximum() -> None:
    ramp = torch.arange(16, dtype=torch.float32).view(4, 4)
    maps = torch.stack([ramp + 100, ramp * 0.01, torch.full((4, 4), 3.0)])
    half = blend_mask(maps, 0.5, dilate=0)[:, 0]
    assert half.shape == (3, 4, 4)
    assert half[0].tolist() == half[1].tolist() == (ramp >= 7.5).float().tolist()
    assert half[2].sum() == 0  # a flat map selects nothing above 0
    assert blend_mask(maps, 0.0, dilate=0).sum() == maps.numel()
    assert blend_mask(maps, 1.0001, dilate=0).sum() == 0
    point = torch.zeros(1, 5, 5)
    point[0, 2, 2] = 1
    grown = blend_mask(point, 1.0, dilate=1)[0, 0]
    assert grown.sum() == 9 and grown[1:4, 1:4].sum() == 9


# ----------------------------------------------------------------------------------------- plugin


def test_the_editor_is_registered_as_localblend(pm) -> None:
    registry = build_registry(pm)
    assert registry.get(EDITOR, "localblend") is LocalBlendEditor
    assert registry.owner(EDITOR, "localblend").startswith("tokenflow_localblend.editor")


def test_an_installed_package_loads_through_its_entry_point(pm) -> None:
    try:
        dist = distribution("tokenflow-localblend")
    except PackageNotFoundError:
        pytest.skip("tokenflow-localblend is not installed (tests run from the source tree)")
    (ep,) = [e for e in dist.entry_points if e.group == "tokenflow"]
    assert ep.name == ep.value == "tokenflow_localblend.editor"
    assert pm.distributions[ep.name] == ("tokenflow-localblend", dist.version)
    owner = build_registry(pm).owner(EDITOR, "localblend")
    assert owner == f"tokenflow_localblend.editor (tokenflow-localblend {dist.version})"
