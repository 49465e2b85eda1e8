"""World v2 (issue 13): textured, shaded objects on noise backgrounds, camera and object motion,
any aspect ratio from 1:2 to 2:1, and the rule-based checks that read a frame."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from tokenflow.embedded.tokenizer import tiny_tokenizer
from tokenflow.embedded.world2 import (
    BACKGROUNDS,
    TEXTURES,
    WORDS,
    Camera,
    Clip,
    Scene,
    Thing,
    random_clip,
    render,
)
from tokenflow.embedded.world2_checks import (
    background_kind,
    mask_iou,
    measure_checks,
    object_masks,
    read_frame,
    texture_kind,
)

SIZES = [(64, 128), (72, 96), (64, 64), (96, 72), (128, 64), (90, 160), (160, 90)]


def test_clips_are_deterministic_from_the_seed() -> None:
    a = random_clip(np.random.default_rng(7), 4, height=72, width=128)
    b = random_clip(np.random.default_rng(7), 4, height=72, width=128)
    c = random_clip(np.random.default_rng(8), 4, height=72, width=128)
    assert a == b and a != c
    for t in range(4):
        assert np.array_equal(a.render(t, 72, 128)[0], b.render(t, 72, 128)[0])
    assert not np.array_equal(a.render(0, 72, 128)[0], c.render(0, 72, 128)[0])


@pytest.mark.parametrize("height,width", SIZES)
def test_any_aspect_ratio_keeps_balls_round(height: int, width: int) -> None:
    image, masks = render(Scene("wall", (Thing("ball", "red", radius=0.3),)), height, width)
    ys, xs = np.nonzero(masks[0])
    expected = 0.3 * min(height, width)
    assert abs((xs.max() - xs.min() + 1) - 2 * expected) <= 2
    assert abs((ys.max() - ys.min() + 1) - 2 * expected) <= 2
    assert abs(masks[0].sum() / (np.pi * expected ** 2) - 1) < 0.05
    assert image.shape == (height, width, 3)


@pytest.mark.parametrize("height,width", SIZES)
def test_random_clips_keep_every_object_inside_every_frame(height: int, width: int) -> None:
    rng = np.random.default_rng(height * 1000 + width)
    for _ in range(6):
        clip = random_clip(rng, 6, height=height, width=width)
        for t in range(len(clip)):
            _, masks = clip.render(t, height, width)
            for mask in masks:
                assert mask.sum() > 100  # whole objects of a good size ...
                assert not (mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any())
            assert not np.logical_and.reduce(masks).any() if len(masks) > 1 else True  # ... apart


def test_aspect_ratio_outside_one_to_two_is_refused() -> None:
    with pytest.raises(ValueError, match="aspect ratio"):
        random_clip(np.random.default_rng(0), height=64, width=160)


@pytest.mark.parametrize("background", BACKGROUNDS)
def test_camera_pan_shifts_the_frame(background: str) -> None:
    scene = Scene(background, (Thing("box", "blue", "checkered", x=0.1, y=0.05, radius=0.2),), seed=3)
    step = 5  # pixels per frame at 64 px on the short side
    clip = Clip(scene, tuple(Camera(x=step * t / 64, y=-2 * t / 64) for t in range(3)))
    frames = [clip.render(t, 64, 96)[0].astype(np.float32) for t in range(3)]
    for a, b in zip(frames, frames[1:]):
        # frame t+1 is frame t moved left by 5 and down by 2 pixels ...
        assert np.abs(b[2:, :-step] - a[:-2, step:]).max() <= 2
        # ... and correlation finds that shift among all small ones
        lum_a, lum_b = a.mean(-1), b.mean(-1)

        def corr(dx: int, dy: int) -> float:
            pa = lum_a[8 + dy:56 + dy, 16 + dx:80 + dx]
            pb = lum_b[8:56, 16:80]
            return float(np.corrcoef(pa.ravel(), pb.ravel())[0, 1])

        scores = {(dx, dy): corr(dx, dy) for dx in range(-7, 8) for dy in range(-7, 8)}
        assert max(scores, key=scores.get) == (step, -2)


def test_zoom_and_object_motion() -> None:
    thing = Thing("ball", "green", x=0.0, y=0.0, radius=0.2)
    clip = Clip(Scene("sand", (thing,)), (Camera(), Camera(zoom=1.5)),
                (((0.0, 0.0, 0.0),), ((0.25, 0.0, 0.0),)))
    _, first = clip.render(0, 64, 128)
    _, second = clip.render(1, 64, 128)
    assert abs(second[0].sum() / first[0].sum() - 1.5 ** 2) < 0.06
    assert abs(np.nonzero(second[0])[1].mean() + 0.5 - (64 + 0.25 * 1.5 * 64)) < 0.2  # pixel centres
    assert clip.frame(1)[0].things[0].x == 0.25 and clip.scene.things[0].x == 0.0


def test_pixel_and_object_coordinates_invert_each_other() -> None:
    rng = np.random.default_rng(0)
    x, y = rng.uniform(-1, 1, (2, 50))
    camera = Camera(0.2, -0.1, 1.3)
    col, row = camera.to_pixels(x, y, 72, 128)
    assert np.allclose(camera.to_world(col, row, 72, 128), (x, y))
    assert np.allclose(Camera().to_pixels(0.0, 0.25, 72, 128), (64, 36 + 18))  # world units: the short side
    thing = Thing("box", "red", x=0.3, y=-0.2, radius=0.2, angle=90)
    assert np.allclose(thing.world(*thing.local(x, y)), (x, y))
    assert np.allclose(thing.local(0.3, -0.2), (0, 0))
    assert np.allclose(thing.world(1.0, 0.0), (0.3, 0.0))  # a quarter turn: right goes down


def test_owner_is_the_last_object_drawn_and_agrees_with_the_rendered_masks() -> None:
    scene = Scene("sand", (Thing("box", "blue", "striped", x=-0.1, radius=0.25, angle=20),
                           Thing("ball", "red", x=0.15, y=0.05, radius=0.2),
                           Thing("triangle", "green", x=0.6, radius=0.2)))
    assert list(scene.owner(np.array([-0.3, 0.0, 0.15, 0.6, 0.7]), np.array([0.0, 0.0, 0.05, 0.0, -0.4]))) \
        == [0, 1, 1, 2, -1]  # the box alone, box and ball (the ball is drawn later), ..., nothing
    camera = Camera(0.05, 0.02, 1.2)
    _, masks = render(scene, 72, 128, camera=camera)
    rows, cols = np.mgrid[0:72, 0:128] + 0.5
    owner = scene.owner(*camera.to_world(cols, rows, 72, 128))
    for i, mask in enumerate(masks):  # pixel centres against coverage >= 0.5: only on outlines
        differ = (owner == i) != mask
        outline = cv2.morphologyEx(mask.astype(np.uint8), cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8)) > 0
        assert mask.sum() > 300 and not (differ & ~outline).any() and differ.sum() < 0.05 * mask.sum()


@pytest.mark.parametrize("texture", TEXTURES)
def test_each_texture_is_read_at_any_orientation_and_phase(texture: str) -> None:
    for k, (angle, phase) in enumerate([(0, 0.0), (30, 0.3), (75, 0.6), (120, 0.9)]):
        thing = Thing(("ball", "box", "triangle")[k % 3], "purple", texture, radius=0.28,
                      texture_angle=angle, phase=phase, angle=17 * k)
        image, _ = render(Scene(BACKGROUNDS[k], (thing,), seed=k), 64, 96)
        (mask,) = object_masks(image)
        assert texture_kind(image, mask) == texture
        assert background_kind(image) == BACKGROUNDS[k]


def test_read_frame_counts_and_reads_each_object() -> None:
    scene = Scene("tiles", (Thing("ball", "red", "striped", x=-0.5, radius=0.22),
                            Thing("box", "yellow", "dotted", x=0.0, y=0.1, radius=0.18),
                            Thing("triangle", "blue", "ringed", x=0.5, y=-0.1, radius=0.2)))
    image, _ = render(scene, 72, 160)
    read = read_frame(image)
    assert read["background"] == "tiles"
    found = sorted((o["colour"], o["texture"]) for o in read["objects"])
    assert found == [("blue", "ringed"), ("red", "striped"), ("yellow", "dotted")]


# Measured on these 200 frames: count, background and colour 100 %, texture 99.1 % clean and
# 99.4 % after a 0.7 px blur (400 other frames: docs/embedded-model.md). A little room is left.
@pytest.mark.parametrize("blur", [0.0, 0.7])
def test_checks_are_accurate_on_held_out_renders(blur: float) -> None:
    accuracy = measure_checks(np.random.default_rng(31337), 200, blur=blur)
    assert accuracy["count"] == 1.0
    assert accuracy["background"] >= 0.99
    assert accuracy["colour"] >= 0.99
    assert accuracy["texture"] >= 0.96


def test_captions_and_vocabulary(tmp_path) -> None:
    scene = Scene("wood", (Thing("ball", "red", "checkered"), Thing("box", "blue")))
    assert scene.caption() == "a red checkered ball and a blue box on wood"
    assert Scene("wall", (Thing("triangle", "green", "ringed"),)).caption() == \
        "a green ringed triangle on a wall"
    tokenizer = tiny_tokenizer(tmp_path, extra_words=WORDS)
    for word in WORDS:  # every caption word is a single token of a tokenizer built with them
        assert len(tokenizer(word, add_special_tokens=False).input_ids) == 1, word
    caption = random_clip(np.random.default_rng(1), 1, n_things=3).scene.caption()
    assert len(tokenizer(caption, add_special_tokens=False).input_ids) == len(caption.split())


def test_object_colour_reads_by_this_worlds_saturation_rule() -> None:
    """Pixels at saturation 0.5 (wood's grain after H.264 at 64 px reaches it) are background here,
    though world v1's rule (>= 0.45) took them for an object."""
    from tokenflow.embedded.world2_checks import object_colour, object_mask

    image = np.empty((64, 64, 3), np.uint8)
    image[...] = (150, 105, 75)  # hue 24, saturation 0.5, value 0.59
    yy, xx = np.mgrid[:64, :64]
    disk = (yy - 32) ** 2 + (xx - 32) ** 2 <= 10 ** 2
    image[disk] = (40, 80, 230)  # a blue disk
    assert np.array_equal(object_mask(image), disk) and object_colour(image) == "blue"
    # world v1's bound keeps every pixel here, and the wood's hue wins
    assert object_colour(image, np.ones((64, 64), bool)) == "orange"


def test_mask_iou() -> None:
    a = np.zeros((4, 4), bool)
    b = np.zeros((4, 4), bool)
    a[:2], b[1:3] = True, True
    assert mask_iou(a, b) == pytest.approx(4 / 12)
    assert mask_iou(a, a) == 1.0 and mask_iou(np.zeros((2, 2), bool), np.zeros((2, 2), bool)) == 1.0
