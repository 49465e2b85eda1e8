"""The words a model knows: a checkpoint may declare them in its ``tokenflow.json``
(``"vocabulary": {"words": [...], "lost_in_edits": {"word": "why"}, "not_added_by_edits": {...}}``), as the embedded model
does for its procedural world; a run then names the prompt words the model cannot use.

Checkpoints without a declaration (Stable Diffusion's: its CLIP tokenizer splits any text into
tokens it has seen) get no notes.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Vocabulary:
    """``words``: every word the model was trained on. Known words an edit does not show, each
    with why: ``lost_in_edits`` whenever ``--prompt`` has them; ``not_added_by_edits`` only where
    the source's prompt lacks them (the model keeps them from the source but draws no new one)."""

    words: frozenset[str]
    lost_in_edits: Mapping[str, str] = field(default_factory=dict)
    not_added_by_edits: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_json(cls, doc: Any) -> Vocabulary | None:
        """The ``vocabulary`` entry of a ``tokenflow.json``, or None when it declares none.
        Raises ValueError on a malformed entry."""
        if doc is None:
            return None
        if not isinstance(doc, Mapping) or not isinstance(doc.get("words"), list):
            raise ValueError('"vocabulary" must be {"words": [...], "lost_in_edits": {...}, '
                             '"not_added_by_edits": {...}}')
        notes = {}
        for name in ("lost_in_edits", "not_added_by_edits"):
            value = doc.get(name, {})
            if not isinstance(value, Mapping):
                raise ValueError(f'"vocabulary.{name}" must map words to reasons')
            notes[name] = {str(k).lower(): str(v) for k, v in value.items()}
        return cls(frozenset(str(w).lower() for w in doc["words"]), **notes)

    def unknown(self, text: str) -> list[str]:
        """The words of ``text`` the model does not know, in order, each once."""
        return _unique(w for w in words_of(text) if w not in self.words)

    def notes(self, prompt: str, source_prompt: str = "") -> list[str]:
        """``note:`` lines for a run editing towards ``prompt`` from a source described by
        ``source_prompt``: unknown words (of either), then known words of ``prompt`` the edit
        will not show."""
        out = []
        unknown = _unique([*self.unknown(prompt), *self.unknown(source_prompt)])
        if unknown:
            out.append(f"note: the model does not know {_quoted(unknown)} and will ignore "
                       f"{'it' if len(unknown) == 1 else 'them'}; its words: "
                       f"{', '.join(sorted(self.words))}")
        have = set(words_of(source_prompt))
        for word in _unique(words_of(prompt)):
            why = self.lost_in_edits.get(word)
            if why is None and word not in have:
                why = self.not_added_by_edits.get(word)
            if why is not None:
                out.append(f"note: the edit will most likely not show {word!r}: {why}")
        return out


def words_of(text: str) -> list[str]:
    """Lower-case words (letters, with inner apostrophes or hyphens) of ``text``."""
    return re.findall(r"[a-z]+(?:['-][a-z]+)*", str(text).lower())


def _unique(items) -> list[str]:
    return list(dict.fromkeys(items))


def _quoted(words: list[str]) -> str:
    return ", ".join(repr(w) for w in words)
