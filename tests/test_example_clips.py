"""The example clips (examples/make_clips.py, examples/clips/): what the tracked files show is
what make_clips renders, the world's checks read every clip's caption back from every frame at
the embedded model's working size, and the clips' users (scripts/demo.sh, examples/README.md,
benchmarks/consistency.py) name them with their captions."""

from __future__ import annotations

import importlib.util
import re
import shlex
import sys
from pathlib import Path

import numpy as np
import pytest

from tokenflow import world
from tokenflow.sizes import working_size
from tokenflow.video import read_video, resize_frames

ROOT = Path(__file__).resolve().parents[1]
WORKING = 96  # the short side tf run edits world v2 clips at


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[name]
    return module


make_clips = _load("make_clips", ROOT / "examples" / "make_clips.py")
CLIPS = make_clips.CLIPS


def _things(caption: str) -> list[tuple[str, str]]:
    """(colour, texture) of each object of a world caption, sorted."""
    objects = caption.rsplit(" on ", 1)[0].split(" and ")
    out = []
    for words in (o.split() for o in objects):
        colour, texture = words[1], words[2] if len(words) == 4 else "plain"
        out.append((colour, texture))
    return sorted(out)


@pytest.mark.parametrize("name", CLIPS)
def test_the_tracked_clip_is_what_make_clips_renders(name: str) -> None:
    example = CLIPS[name]
    video = read_video(ROOT / "examples" / "clips" / f"{name}.mp4")
    rendered = example.render()
    assert video.frames.shape == rendered.shape == (example.frames, example.height,
                                                   example.width, 3)
    assert video.fps == make_clips.FPS and example.height % 2 == 0 and example.width % 2 == 0
    assert np.abs(video.frames.astype(float) - rendered).mean() < 3  # H.264, nothing else
    last = example.clip().render(example.frames - 1, example.height, example.width)[0]
    assert np.array_equal(last, rendered[-1])  # deterministic


@pytest.mark.parametrize("name", CLIPS)
def test_the_checks_read_the_caption_from_every_frame_the_model_sees(name: str) -> None:
    example = CLIPS[name]
    caption = example.caption()
    frames = read_video(ROOT / "examples" / "clips" / f"{name}.mp4").frames
    height, width = working_size(example.height, example.width, None, native=WORKING)
    assert min(height, width) == WORKING
    for t, frame in enumerate(resize_frames(frames, height, width)):
        read = world.read_frame(frame)
        assert read["background"] == caption.rsplit(" ", 1)[1], (t, read["background"])
        found = sorted((o["colour"], o["texture"]) for o in read["objects"])
        assert found == _things(caption), (t, found)
    # every object inside every frame, clear of the border, apart from the others
    clip = example.clip()
    for t in range(len(clip)):
        _, masks = clip.render(t, example.height // 2, example.width // 2, supersample=1)
        for mask in masks:
            assert mask.sum() > 0.02 * mask.size
            assert not (mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any())
        assert masks.sum(axis=0).max() <= 1


def test_the_clips_cover_what_the_examples_need() -> None:
    aspects = {name: c.width / c.height for name, c in CLIPS.items()}
    assert any(abs(a - 16 / 9) < 0.01 for a in aspects.values())
    assert any(len(c.clip(2).scene.things) == 2 for c in CLIPS.values())
    moving = [name for name, c in CLIPS.items() if len(set(c.clip().cameras)) > 1]
    assert moving and any(c.clip().cameras[-1].zoom != 1 for c in CLIPS.values())
    textured = [t.texture != "plain" for c in CLIPS.values() for t in c.clip(1).scene.things]
    assert sum(textured) >= 3
    assert {c.clip(1).scene.background for c in CLIPS.values()} <= set(world.BACKGROUNDS) - {"wall"}


def test_the_demo_edits_the_square_clip_with_its_caption() -> None:
    words = shlex.split((ROOT / "scripts" / "demo.sh").read_text().replace("\\\n", " "))
    (assignment,) = [w for w in words if w.startswith("clip=")]
    clip = Path(assignment.split("=", 1)[1]).stem
    example = CLIPS[clip]
    assert example.height == example.width and 16 <= example.frames <= 24
    assert words[words.index("--inversion-prompt") + 1] == example.caption()


def test_the_readme_and_the_consistency_benchmark_use_the_captions() -> None:
    table = (ROOT / "examples" / "README.md").read_text()
    rows = dict(re.findall(r"^\| `clips/(\w+)\.mp4` \|[^\n]*?\| `([^`]+)` \| `[^|\n]+ \|$",
                           table, re.M))  # the last column: measured prompts, in backticks
    assert rows == {name: c.caption() for name, c in CLIPS.items()}
    consistency = _load("consistency", ROOT / "benchmarks" / "consistency.py")
    assert {name: caption for name, (caption, _) in consistency.CLIPS.items()} == rows
    for caption, prompts in consistency.CLIPS.values():
        assert set(prompts) == set(consistency.EDITS)
        assert prompts["background"].rsplit(" ", 1)[0] == caption.rsplit(" ", 1)[0]
        assert _things(prompts["texture"]) != _things(caption)
        assert prompts["texture"].rsplit(" ", 1)[1] == caption.rsplit(" ", 1)[1]


def test_make_clips_refuses_a_folder_it_cannot_write_in_one_line(tmp_path: Path) -> None:
    import subprocess

    (tmp_path / "a-file").write_text("")
    result = subprocess.run([sys.executable, str(ROOT / "examples" / "make_clips.py"), "--out",
                             str(tmp_path / "a-file" / "clips")], capture_output=True, text=True)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.startswith("make_clips.py: cannot write ")
    assert len(result.stderr.splitlines()) == 1 and "Traceback" not in result.stderr
