"""Prompt words a model cannot use are named before the run (issue 12): the vocabulary a
checkpoint declares in its tokenflow.json (tokenflow.models.vocabulary)."""

from __future__ import annotations

import pytest

from tokenflow.models.vocabulary import Vocabulary, words_of

WORLD = Vocabulary(frozenset("a and on red blue ball box striped dotted checkered floor sky".split()),
                   lost_in_edits={"striped": "textures are lost", "dotted": "textures are lost"},
                   not_added_by_edits={"checkered": "kept, never drawn anew"})


def test_words_of_splits_on_anything_but_letters() -> None:
    assert words_of("A  red-ish ball, on SKY!") == ["a", "red-ish", "ball", "on", "sky"]
    assert words_of("1080p 16:9") == ["p"]


def test_unknown_words_in_order_and_once() -> None:
    assert WORLD.unknown("a blue car on a road, a car") == ["car", "road"]
    assert WORLD.unknown("a Blue ball on sky") == []


def test_notes_name_unknown_words_of_both_prompts_in_one_line() -> None:
    notes = WORLD.notes("a blue car on a sunset road", "a red ball on sky")
    assert len(notes) == 1
    assert notes[0].startswith("note: the model does not know 'car', 'sunset', 'road' and will "
                               "ignore them; its words: a, and, ball, blue")
    assert "'nope'" in WORLD.notes("a blue ball", "a red nope")[0]  # the source prompt's too
    assert WORLD.notes("a blue ball on sky", "a red ball on sky") == []


@pytest.mark.parametrize(("prompt", "source", "expected"), [
    ("a blue striped ball", "a red ball", ["striped"]),        # lost in edits: always said
    ("a blue striped ball", "a red striped ball", ["striped"]),
    ("a dotted striped box", "a box", ["dotted", "striped"]),
    ("a red ball on a checkered floor", "a red ball on sky", ["checkered"]),  # not added: said
    ("a blue ball on a checkered floor", "a red ball on a checkered floor", []),  # kept: fine
])
def test_notes_on_known_words_an_edit_will_not_show(prompt, source, expected) -> None:
    notes = WORLD.notes(prompt, source)
    assert [n.split("'")[1] for n in notes] == expected
    assert all(n.startswith("note: the edit will most likely not show '") for n in notes)
    assert all(("textures are lost" in n) != ("kept, never" in n) for n in notes)


def test_from_json() -> None:
    assert Vocabulary.from_json(None) is None
    with pytest.raises(ValueError, match="words"):
        Vocabulary.from_json({"lost_in_edits": {}})
    with pytest.raises(ValueError, match="not_added_by_edits"):
        Vocabulary.from_json({"words": ["a"], "not_added_by_edits": ["a"]})
    v = Vocabulary.from_json({"words": ["A"], "lost_in_edits": {"X": "y"}})
    assert v.words == {"a"} and v.lost_in_edits == {"x": "y"} and v.not_added_by_edits == {}


def test_tf_run_names_the_words_the_embedded_model_cannot_use(tmp_path) -> None:
    """End to end through the API on the embedded model (which declares its world's words),
    planned but stopped before any stage runs."""
    from tokenflow import api
    from tokenflow.testing import synthetic_frames
    from tokenflow.video import Video

    lines: list[str] = []
    source = api.prepare(Video(synthetic_frames(2, height=64, width=64), fps=8.0, source="s"),
                         log=lines.append)
    job = api.plan_edit(source, prompt="a blue striped car", inversion_prompt="a red ball on sky",
                        cache_dir=tmp_path)
    notes = api.prompt_notes(job)
    assert len(notes) == 2 and "'car'" in notes[0] and "'striped'" in notes[1]
    assert not list(tmp_path.rglob("*.zarr"))
