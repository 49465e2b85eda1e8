"""Tests for tokenflow.video (reading, writing, resizing frames)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tokenflow.sizes import (
    Framing,
    aspect_note,
    output_size,
    parse_output_size,
    parse_size,
    working_size,
)
from tokenflow.video import (
    Video,
    VideoError,
    frames_hash,
    read_video,
    resize_frames,
    side_by_side,
    write_frames,
    write_video,
)

BAR_COLOURS = np.array(
    [
        [255, 255, 255],
        [255, 255, 0],
        [0, 255, 255],
        [0, 255, 0],
        [255, 0, 255],
        [255, 0, 0],
        [0, 0, 255],
        [0, 0, 0],
    ],
    np.uint8,
)


def colour_bars(n: int = 12, height: int = 64, width: int = 128) -> np.ndarray:
    """n frames of 8 vertical colour bars (each 16 px wide for width 128)."""
    row = BAR_COLOURS[np.arange(width) * len(BAR_COLOURS) // width]
    return np.ascontiguousarray(np.broadcast_to(row, (n, height, width, 3)))


@pytest.fixture(scope="module")
def bars_mp4(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("mp4") / "bars.mp4"
    write_video(path, colour_bars(), fps=12)
    return path


def save_indexed_pngs(folder: Path, count: int) -> None:
    """Frame i is a solid PNG of value 10 * i, named i.png (lossless index encoding)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        Image.fromarray(np.full((8, 8, 3), 10 * i, np.uint8)).save(folder / f"{i}.png")


def kept_indices(video: Video) -> list[int]:
    return [int(frame[0, 0, 0]) // 10 for frame in video.frames]


# --------------------------------------------------------------------------- mp4


def test_mp4_round_trip(bars_mp4: Path) -> None:
    video = read_video(bars_mp4)
    assert len(video) == 12
    assert video.frames.shape == (12, 64, 128, 3)
    assert video.frames.dtype == np.uint8 and video.frames.flags.c_contiguous
    assert video.fps == pytest.approx(12.0)
    assert video.source == str(bars_mp4)
    centres = video.frames[:, 32, 8::16].astype(int)  # middle of each bar, away from chroma edges
    assert np.abs(centres - BAR_COLOURS.astype(int)).max() <= 16


def test_mp4_stride_and_frames(bars_mp4: Path) -> None:
    video = read_video(str(bars_mp4), stride=5, frames=2)
    assert len(video) == 2
    assert video.fps == pytest.approx(12.0 / 5)
    assert len(read_video(bars_mp4, stride=5)) == 3  # frames 0, 5, 10
    assert len(read_video(bars_mp4, frames=1000)) == 12  # more than available is fine


def test_write_video_is_atomic_and_overwrites(tmp_path: Path) -> None:
    target = tmp_path / "out" / "clip.mp4"
    write_video(target, colour_bars(4), fps=24)
    write_video(target, colour_bars(6), fps=24)
    assert sorted(p.name for p in target.parent.iterdir()) == ["clip.mp4"]
    assert len(read_video(target)) == 6


def test_write_video_odd_size_and_bad_input(tmp_path: Path) -> None:
    write_video(tmp_path / "odd.mp4", colour_bars(3, 33, 47), fps=10)
    assert read_video(tmp_path / "odd.mp4").frames.shape == (3, 34, 48, 3)  # padded to even
    with pytest.raises(VideoError):
        write_video(tmp_path / "bad.mp4", colour_bars(3), fps=0)
    with pytest.raises(VideoError):
        write_video(tmp_path / "bad.mp4", np.zeros((3, 8, 8), np.uint8), fps=10)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["odd.mp4"]


# --------------------------------------------------------------------------- folders


def test_folder_natural_sort_and_fps(tmp_path: Path) -> None:
    for name, value in [("10.png", 30), ("2.png", 20), ("1.png", 10)]:
        Image.fromarray(np.full((4, 6, 3), value, np.uint8)).save(tmp_path / name)
    (tmp_path / "notes.txt").write_text("ignored")
    video = read_video(tmp_path)
    assert video.fps == 24.0
    assert video.frames.shape == (3, 4, 6, 3)
    assert video.frames[:, 0, 0, 0].tolist() == [10, 20, 30]


def test_folder_jpgs(tmp_path: Path) -> None:
    for i, ext in enumerate(["a.jpg", "b.JPEG", "c.jpeg"]):
        Image.fromarray(np.full((16, 16, 3), (200, 50 * i, 30), np.uint8)).save(tmp_path / ext)
    video = read_video(tmp_path)
    assert video.frames.shape == (3, 16, 16, 3)
    expected = np.array([(200, 50 * i, 30) for i in range(3)])
    assert np.abs(video.frames[:, 8, 8].astype(int) - expected).max() <= 4


def test_folder_mode_conversions(tmp_path: Path) -> None:
    Image.fromarray(np.full((4, 4), 77, np.uint8), mode="L").save(tmp_path / "0.png")
    sixteen = np.array([[0, 257 * 100], [65535, 65535]], np.uint16).repeat(2, 0).repeat(2, 1)
    image16 = Image.fromarray(sixteen)
    assert image16.mode == "I;16"
    image16.save(tmp_path / "1.png")
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[:2] = (200, 100, 50, 255)  # opaque
    rgba[2:] = (200, 100, 50, 128)  # half transparent over black
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "2.png")
    Image.fromarray(np.full((4, 4, 2), (90, 0), np.uint8), mode="LA").save(tmp_path / "3.png")

    frames = read_video(tmp_path).frames
    assert frames.dtype == np.uint8 and frames.shape == (4, 4, 4, 3)
    assert (frames[0] == 77).all()
    assert frames[1, 0, 0].tolist() == [0, 0, 0]
    assert frames[1, 0, 2].tolist() == [100, 100, 100]  # scaled, not clipped
    assert frames[1, 2, 0].tolist() == [255, 255, 255]
    assert frames[2, 0, 0].tolist() == [200, 100, 50]
    assert frames[2, 3, 0].tolist() == [100, 50, 25]
    assert (frames[3] == 0).all()  # fully transparent

    (note,) = read_video(tmp_path).notes  # what was converted, for the user
    for words in ("grayscale (mode L, e.g. 0.png)", "16-bit grayscale (mode I;16, e.g. 1.png)",
                  "mode RGBA", "mode LA", "converted to 8-bit RGB", "alpha composited over black"):
        assert words in note, (words, note)
    assert read_video(tmp_path, frames=2).notes == (
        ("frames are grayscale (mode L, e.g. 0.png), 16-bit grayscale (mode I;16, e.g. 1.png); "
         "converted to 8-bit RGB"),)
    rgb_only = tmp_path / "rgb"
    rgb_only.mkdir()
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(rgb_only / "0.png")
    assert read_video(rgb_only).notes == ()


def test_folder_mixed_sizes(tmp_path: Path) -> None:
    Image.fromarray(np.zeros((48, 64, 3), np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "b.png")
    with pytest.raises(VideoError, match=r"frames differ in size: a\.png is 64x48, b\.png is 32x32"):
        read_video(tmp_path)


def test_stride_and_frames_select_exact_indices(tmp_path: Path) -> None:
    save_indexed_pngs(tmp_path, 20)
    assert kept_indices(read_video(tmp_path)) == list(range(20))
    assert kept_indices(read_video(tmp_path, stride=3)) == [0, 3, 6, 9, 12, 15, 18]
    assert kept_indices(read_video(tmp_path, frames=4)) == [0, 1, 2, 3]
    video = read_video(tmp_path, stride=3, frames=4)
    assert kept_indices(video) == [0, 3, 6, 9]
    assert video.fps == pytest.approx(8.0)
    assert kept_indices(read_video(tmp_path, stride=7, frames=100)) == [0, 7, 14]


def test_frames_limit_does_not_read_the_rest(tmp_path: Path) -> None:
    save_indexed_pngs(tmp_path, 6)
    (tmp_path / "5.png").write_bytes(b"not a png")
    assert kept_indices(read_video(tmp_path, frames=5)) == [0, 1, 2, 3, 4]
    with pytest.raises(VideoError, match="5.png"):
        read_video(tmp_path)


def test_write_frames_round_trip(tmp_path: Path) -> None:
    frames = np.random.default_rng(0).integers(0, 256, (3, 5, 7, 3), dtype=np.uint8)
    paths = write_frames(tmp_path / "out", frames)
    assert [p.name for p in paths] == ["00000.png", "00001.png", "00002.png"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [p.name for p in paths]
    np.testing.assert_array_equal(read_video(tmp_path / "out").frames, frames)


# --------------------------------------------------------------------------- gif


def test_gif(tmp_path: Path) -> None:
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)]
    images = [Image.new("RGB", (10, 6), c) for c in colours]
    images[0].save(tmp_path / "a.gif", save_all=True, append_images=images[1:], duration=50, loop=0)
    video = read_video(tmp_path / "a.gif")
    assert video.frames.shape == (4, 6, 10, 3)
    assert video.frames[:, 3, 5].tolist() == [list(c) for c in colours]
    assert video.fps == pytest.approx(20.0)
    assert read_video(tmp_path / "a.gif", stride=2).fps == pytest.approx(10.0)

    images[0].save(tmp_path / "still.gif")
    assert read_video(tmp_path / "still.gif").fps == pytest.approx(10.0)  # no duration


# --------------------------------------------------------------------------- errors


def test_errors(tmp_path: Path, bars_mp4: Path) -> None:
    with pytest.raises(VideoError, match="no such file or directory: .*missing.mp4"):
        read_video(tmp_path / "missing.mp4")

    junk = tmp_path / "x.mp4"
    junk.write_bytes(np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(VideoError) as info:
        read_video(junk)
    assert "\n" not in str(info.value) and "Traceback" not in str(info.value)

    with pytest.raises(VideoError, match="unsupported file type"):
        read_video(_touch(tmp_path / "a.txt"))

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(VideoError, match="no PNG/JPG frames"):
        read_video(empty)

    with pytest.raises(VideoError, match="stride"):
        read_video(bars_mp4, stride=0)
    with pytest.raises(VideoError, match="frames"):
        read_video(bars_mp4, frames=0)


def _touch(path: Path) -> Path:
    path.write_bytes(b"")
    return path


@pytest.mark.parametrize("keep", ["head", "tail"])
def test_truncated_mp4(tmp_path: Path, bars_mp4: Path, keep: str) -> None:
    data = bars_mp4.read_bytes()
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(data[: len(data) // 2] if keep == "head" else data[len(data) // 2 :])
    try:
        video = read_video(broken)
    except VideoError as exc:
        assert "\n" not in str(exc)
    else:  # ffmpeg may decode what it can; that is acceptable
        assert 0 < len(video) <= 12 and video.frames.shape[1:] == (64, 128, 3)


# --------------------------------------------------------------------------- sizes


@pytest.mark.parametrize(
    ("height", "width", "size", "expected"),
    [
        (480, 640, None, (512, 683)),  # 640 * 512 / 480 = 682.7 -> 683: the aspect kept
        (640, 480, None, (683, 512)),  # portrait
        (512, 512, None, (512, 512)),
        (144, 256, None, (512, 910)),  # 16:9: 910.2
        (144, 256, 64, (64, 114)),  # 113.8
        (480, 640, 500, (500, 667)),  # 666.7
        (1080, 1920, 256, (256, 455)),  # 455.1
        (480, 640, (768, 512), (512, 768)),  # explicit WxH, exactly
        (480, 640, (200, 100), (100, 200)),
        (480, 640, 1, (1, 1)),  # 1.33 -> 1
        (480, 640, (1, 1), (1, 1)),
    ],
)
def test_working_size_keeps_the_aspect_and_is_never_rounded_to_the_grid(
        height: int, width: int, size: int | tuple[int, int] | None,
        expected: tuple[int, int]) -> None:
    assert working_size(height, width, size, native=512) == expected


def test_working_size_refuses_non_positive_sizes() -> None:
    for size in (0, -3, (0, 64), (64, 0)):
        with pytest.raises(VideoError, match="positive"):
            working_size(480, 640, size, native=512)
    with pytest.raises(VideoError, match="invalid video size"):
        working_size(0, 640, None, native=512)


@pytest.mark.parametrize(("height", "width", "multiple", "canvas"), [
    (64, 114, 64, (64, 128)),
    (512, 910, 64, (512, 960)),
    (100, 200, 64, (128, 256)),
    (64, 64, 64, (64, 64)),
    (512, 683, 8, (512, 688)),
    (1, 1, 64, (64, 64)),
])
def test_framing_pads_to_the_next_multiple(height: int, width: int, multiple: int,
                                           canvas: tuple[int, int]) -> None:
    framing = Framing.around(height, width, multiple)
    assert (framing.canvas_height, framing.canvas_width) == canvas
    assert framing.padded == ((height, width) != canvas)
    frames = colour_bars(1, height, width)
    assert framing.pad(frames).shape == (1, *canvas, 3)


def test_framing_pads_by_mirroring_and_crop_undoes_it() -> None:
    frames = colour_bars(3, 64, 114)
    framing = Framing.around(64, 114, 64)
    canvas = framing.pad(frames)
    assert canvas.shape == (3, 64, 128, 3) and canvas.dtype == np.uint8
    np.testing.assert_array_equal(framing.crop(canvas), frames)
    # the frame at the top left; the margin right of it mirrors it (the edge column once)
    np.testing.assert_array_equal(canvas[:, :, :114], frames)
    np.testing.assert_array_equal(canvas[:, :, 114:], frames[:, :, 112:98:-1])
    tall = Framing.around(40, 64, 64).pad(colour_bars(1, 40, 64))
    np.testing.assert_array_equal(tall[:, 40:], tall[:, 38:14:-1])
    square = colour_bars(2, 64, 64)
    assert Framing.around(64, 64, 64).pad(square) is square
    with pytest.raises(VideoError, match="do not fit"):
        framing.pad(square)
    with pytest.raises(VideoError, match="not on a canvas"):
        framing.crop(square)
    with pytest.raises(VideoError, match="multiple"):
        Framing.around(64, 64, 0)


def test_framing_note_says_how_much_is_padded() -> None:
    assert Framing.around(64, 64, 64).note(64) is None
    note = Framing.around(64, 114, 64).note(64)
    assert note == ("the UNet needs sides in multiples of 64, so each 114x64 frame is padded to "
                    "128x64 by mirroring its right and bottom edges (+12 % pixels), cropped after "
                    "decoding")


def test_aspect_note_says_how_much_the_aspect_changes() -> None:
    assert aspect_note((144, 256), (64, 128)) == "aspect 1.78 -> 2.00 (+12 %)"
    assert aspect_note((480, 640), (100, 200)) == "aspect 1.33 -> 2.00 (+50 %)"
    assert aspect_note((144, 256), (144, 128)) == "aspect 1.78 -> 0.89 (-50 %)"
    # kept to the pixel: no note
    assert aspect_note((144, 256), (64, 114)) is None
    assert aspect_note((144, 256), (512, 910)) is None
    assert aspect_note((1080, 1920), (720, 1280)) is None


def test_parse_output_size() -> None:
    assert parse_output_size("source") == "source"
    assert parse_output_size(" Working ") == "working"
    assert parse_output_size("1280x720") == (1280, 720)
    assert parse_output_size("720") == 720
    for junk in ["", "src", "0", "1280x", "-5", "1280x720x3"]:
        with pytest.raises(VideoError, match="expected source, working, S or WxH"):
            parse_output_size(junk)


def test_output_size() -> None:
    source, working = (144, 256), (64, 114)
    assert output_size("source", source, working) == (144, 256)
    assert output_size("working", source, working) == (64, 114)
    assert output_size((640, 360), source, working) == (360, 640)
    assert output_size(720, source, working) == (720, 1280)
    assert output_size("200x100", source, working) == (100, 200)


def test_parse_size() -> None:
    assert parse_size("512") == 512
    assert parse_size(" 768x512 ") == (768, 512)
    assert parse_size("768X512") == (768, 512)
    for junk in ["", "abc", "0", "-5", "512x", "x512", "512x0", "1.5", "512x512x3"]:
        with pytest.raises(VideoError):
            parse_size(junk)


# --------------------------------------------------------------------------- misc


def test_resize_frames() -> None:
    frames = colour_bars(2, 64, 128)
    assert resize_frames(frames, 64, 128) is frames
    down = resize_frames(frames, 32, 48)
    assert down.shape == (2, 32, 48, 3) and down.dtype == np.uint8
    up = resize_frames(frames, 128, 192)
    assert up.shape == (2, 128, 192, 3) and up.dtype == np.uint8
    assert up[0, 64, 5].tolist() == [255, 255, 255]  # inside the first (white) bar


def test_side_by_side() -> None:
    a = colour_bars(3, 32, 32)
    b = colour_bars(3, 64, 128)
    out = side_by_side(a, b)
    assert out.shape == (3, 32, 32 + 64, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[:, :, :32], a)
    assert side_by_side(a, a).shape == (3, 32, 64, 3)
    with pytest.raises(VideoError, match="length"):
        side_by_side(a, colour_bars(4, 32, 32))


def test_frames_hash() -> None:
    frames = colour_bars(2, 8, 16)
    digest = frames_hash(frames)
    assert len(digest) == 64
    assert frames_hash(frames.copy()) == digest
    changed = frames.copy()
    changed[1, 7, 15, 2] ^= 1
    assert frames_hash(changed) != digest
    assert frames_hash(frames.reshape(1, 16, 16, 3)) != digest  # same bytes, other shape
