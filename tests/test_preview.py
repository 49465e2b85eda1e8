"""A run's previews (tokenflow.preview) and the labelled contact sheets they share with ``tf
compare`` (tokenflow.frame_figures): sizes, labels and frame numbers by pixels, GIF frames and
timing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tokenflow.frame_figures import FOOTER, LABEL_WIDTH, contact_sheet
from tokenflow.preview import (
    COLUMNS,
    GIF_MAX_FRAMES,
    GIF_MAX_HEIGHT,
    MAX_HEIGHT,
    MIN_WIDTH,
    edit_label,
    gif_frames,
    preview_sheet,
    write_previews,
)
from tokenflow.testing import synthetic_frames
from tokenflow.video import evenly_spaced


def _dark(region: np.ndarray) -> int:
    """Pixels of text (dark) in a white region."""
    return int((region.max(axis=-1) < 128).sum())


def _enlarged(frame: np.ndarray, scale: int) -> np.ndarray:
    return np.repeat(np.repeat(frame, scale, axis=0), scale, axis=1)


@pytest.mark.parametrize("shape, scale", [
    ((64, 64), 2),   # the embedded model's frames: 128 px tall, 672 px wide
    ((64, 32), 3),   # narrow frames: enlarged further to reach 512 px of width
    ((32, 48), 4),
])
def test_preview_sheet_rows_are_source_and_edit_enlarged_by_nearest(shape, scale) -> None:
    h, w = shape
    source = synthetic_frames(9, h, w)
    edited = 255 - source
    sheet = preview_sheet(source, edited, "edit: a red ball")
    th, tw = h * scale, w * scale
    assert sheet.shape == (2 * th + FOOTER, LABEL_WIDTH + COLUMNS * tw, 3)
    assert sheet.shape[1] >= MIN_WIDTH
    for c, i in enumerate(evenly_spaced(9, COLUMNS)):
        x = LABEL_WIDTH + c * tw
        np.testing.assert_array_equal(sheet[:th, x:x + tw], _enlarged(source[i], scale))
        np.testing.assert_array_equal(sheet[th:2 * th, x:x + tw], _enlarged(edited[i], scale))


def test_preview_sheet_labels_rows_and_numbers_columns() -> None:
    source = synthetic_frames(9, 64, 64)
    sheet = preview_sheet(source, source, "edit: a red ball")
    blank = preview_sheet(source, source, "")
    th, tw = 128, 128
    label = slice(0, LABEL_WIDTH)
    assert _dark(sheet[:th, label]) > 20  # "source"
    assert _dark(sheet[th:2 * th, label]) > _dark(sheet[:th, label])  # "edit: a red ball"
    assert _dark(blank[th:2 * th, label]) == 0
    footer = sheet[2 * th:]
    assert _dark(footer[:, label]) == 0
    for c in range(COLUMNS):  # a number under every column
        assert _dark(footer[:, LABEL_WIDTH + c * tw:LABEL_WIDTH + (c + 1) * tw]) > 10
    # the numbers are the frames' own (0, 3, 5, 8 of 9), not the columns' (0, 1, 2, 3)
    four = synthetic_frames(4, 64, 64)
    assert not np.array_equal(preview_sheet(four, four, "")[2 * th:], blank[2 * th:])


def test_a_long_label_wraps_inside_the_label_column() -> None:
    source = synthetic_frames(4, 64, 64)
    words = "edit: a red ball rolling on a checkered floor under a cloudy sky at dusk " * 3
    sheet = preview_sheet(source, source, words)
    ink = np.nonzero((sheet[128:256, :LABEL_WIDTH].max(axis=-1) < 128).any(axis=1))[0]
    assert ink.max() - ink.min() > 40  # several lines
    assert _dark(sheet[128:256, LABEL_WIDTH - 4:LABEL_WIDTH]) == 0  # none drawn past the column


def test_large_frames_are_shrunk_for_the_preview() -> None:
    source = synthetic_frames(4, 720, 1280)
    sheet = preview_sheet(source, source, "edit")
    assert sheet.shape[0] == 2 * MAX_HEIGHT + FOOTER
    assert sheet.shape[1] == LABEL_WIDTH + COLUMNS * round(1280 * MAX_HEIGHT / 720)


def test_compare_contact_sheets_number_their_columns() -> None:
    frames = synthetic_frames(12, 64, 64)
    sheet = contact_sheet([("source", frames), ("pnp", frames)], 6)
    assert sheet.shape[0] == 2 * 128 + FOOTER
    for c in range(6):
        x = LABEL_WIDTH + c * 128
        assert _dark(sheet[256:, x:x + 128]) > 10


def test_write_previews_writes_a_looping_gif_of_every_frame_at_the_video_fps(
        tmp_path: Path) -> None:
    source = synthetic_frames(7, 64, 64)
    write_previews(tmp_path, source, 255 - source, fps=10.0, label="edit: a red ball")
    assert Image.open(tmp_path / "preview.png").size[0] >= MIN_WIDTH
    gif = Image.open(tmp_path / "preview.gif")
    assert gif.n_frames == 7 and gif.info["loop"] == 0 and gif.info["duration"] == 100
    assert gif.size == (2 * 128, 128 + 16)  # source | edit, enlarged 2x, under a label strip
    gif.seek(3)
    frame = np.asarray(gif.convert("RGB")).astype(int)
    assert np.abs(frame[16:, :128] - _enlarged(source[3], 2)).mean() < 8  # GIF palette: close
    assert np.abs(frame[16:, 128:] - _enlarged(255 - source[3], 2)).mean() < 8
    assert not list(tmp_path.glob(".*"))  # nothing left aside


def test_the_gif_of_a_long_video_keeps_every_kth_frame_for_as_long(tmp_path: Path) -> None:
    n = 2 * GIF_MAX_FRAMES + 10
    index, step = gif_frames(n)
    assert step == 3 and index.tolist() == list(range(0, n, 3)) and len(index) <= GIF_MAX_FRAMES
    source = synthetic_frames(n, 32, 48)
    write_previews(tmp_path, source, source, fps=30.0, label="edit")
    gif = Image.open(tmp_path / "preview.gif")
    assert gif.n_frames == len(index) and gif.info["duration"] == 100  # 3 frames at 30 fps
    big = synthetic_frames(3, 480, 640)
    write_previews(tmp_path, big, big, fps=30.0, label="edit")
    assert Image.open(tmp_path / "preview.gif").size[1] <= GIF_MAX_HEIGHT + 16


def test_edit_label_names_the_prompt_or_the_editor() -> None:
    class Params:
        prompt = "a red ball"

    class Editor:
        name = "pnp"
        params = Params()

    assert edit_label(Editor()) == "edit: a red ball"
    Editor.params = None
    assert edit_label(Editor()) == "edit: pnp"
