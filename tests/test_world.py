"""The procedural world of the embedded model: rendering, captions and the image checks that
score generated and edited frames."""

from __future__ import annotations

import numpy as np
import pytest

from tokenflow.embedded.tokenizer import tiny_tokenizer
from tokenflow.embedded.world import (
    BACKGROUNDS,
    COLOURS,
    SHAPES,
    WORDS,
    Scene,
    Thing,
    background_kind,
    mask_iou,
    object_colour,
    object_mask,
    random_scene,
    render,
)


def test_render_shapes_types_and_masks() -> None:
    scene = Scene("gray wall", (Thing("box", "red", cx=0.5, cy=0.5, radius=0.25),))
    image, masks = render(scene, 64, 96)
    assert image.shape == (64, 96, 3) and image.dtype == np.uint8
    assert masks.shape == (1, 64, 96) and masks.dtype == bool
    # a box of half-side 0.85 r = 13.6 px, centred at (32, 32)
    assert masks[0, 32, 32] and not masks[0, 5, 5] and not masks[0, 32, 80]
    assert 20 * 20 < masks[0].sum() < 30 * 30
    assert tuple(image[5, 80]) == (150, 150, 150)


def test_later_things_occlude_earlier_ones() -> None:
    back = Thing("ball", "green", cx=0.5, cy=0.5, radius=0.3)
    front = Thing("ball", "blue", cx=0.5, cy=0.5, radius=0.15)
    image, masks = render(Scene("sand", (back, front)), 64, 64)
    assert masks[1, 32, 32] and not masks[0, 32, 32]
    assert object_colour(image, masks[1]) == "blue" and object_colour(image, masks[0]) == "green"


@pytest.mark.parametrize("colour", list(COLOURS))
@pytest.mark.parametrize("texture", ["plain", "striped", "dotted"])
def test_object_colour_reads_every_colour_and_texture(colour: str, texture: str) -> None:
    for background in BACKGROUNDS:
        for shape in SHAPES:
            scene = Scene(background, (Thing(shape, colour, texture, radius=0.3, angle=20),))
            image, masks = render(scene, 64, 64)
            assert object_colour(image) == colour
            assert background_kind(image) == background
            assert mask_iou(object_mask(image), masks[0]) > 0.9


def test_checks_on_random_scenes() -> None:
    rng = np.random.default_rng(123)
    for _ in range(100):
        scene = random_scene(rng)
        image, masks = render(scene, 64, 64)
        assert object_colour(image) == scene.things[0].colour
        assert background_kind(image) == scene.background
        assert mask_iou(object_mask(image), masks[0]) > 0.85


def test_no_object_gives_no_colour() -> None:
    image, _ = render(Scene("checkered floor", ()), 64, 64)
    assert not object_mask(image).any() and object_colour(image) is None
    assert background_kind(image) == "checkered floor"


def test_captions_and_vocabulary(tmp_path) -> None:
    scene = Scene("checkered floor", (Thing("ball", "red"), Thing("box", "blue", "striped")))
    assert scene.caption() == "a red ball and a blue striped box on a checkered floor"
    assert Scene("sky", (Thing("triangle", "orange", "dotted"),)).caption() == \
        "a orange dotted triangle on sky"
    tokenizer = tiny_tokenizer(tmp_path)
    for word in WORDS:  # every caption word is a single token of the embedded tokenizer
        assert len(tokenizer(word, add_special_tokens=False).input_ids) == 1, word


def test_random_scenes_are_seeded_and_varied() -> None:
    a = [random_scene(np.random.default_rng(5)) for _ in range(2)]
    assert a[0] == a[1]
    rng = np.random.default_rng(6)
    scenes = [random_scene(rng) for _ in range(200)]
    assert {s.background for s in scenes} == set(BACKGROUNDS)
    assert {s.things[0].colour for s in scenes} == set(COLOURS)
    assert {s.things[0].shape for s in scenes} == set(SHAPES)


def test_mask_iou() -> None:
    a = np.zeros((4, 4), bool)
    b = np.zeros((4, 4), bool)
    a[:2], b[1:3] = True, True
    assert mask_iou(a, b) == pytest.approx(4 / 12)
    assert mask_iou(a, a) == 1.0 and mask_iou(np.zeros((2, 2), bool), np.zeros((2, 2), bool)) == 1.0
