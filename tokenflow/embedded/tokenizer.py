"""The BPE vocabulary of tokenflow's small offline CLIP tokenizer: byte tokens plus whole words,
among them every word of the embedded model's world. The embedded model's tokenizer files and the
tiny test models' are written from it (no hub needed)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from transformers import CLIPTokenizer

#: The whole words, in vocabulary order (the last nine were added for the first embedded model's
#: world; a new world's words come as ``extra_words``, so these token ids never change).
_TINY_WORDS: tuple[str, ...] = tuple((
    "a an the of on in with and at is photo painting picture video style cartoon red blue green yellow white black "
    "small big ball box floor table cat dog car man woman person tree sky house water street road beach grass snow "
    "city sunset walking running orange purple triangle striped dotted checkered gray wall sand"
).split())


def _byte_chars() -> list[str]:
    """The 256 byte-level BPE symbols (printable bytes map to themselves, the rest to code points >= 256)."""
    printable = {*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)}
    extra = iter(range(256, 512))
    return [chr(b) if b in printable else chr(next(extra)) for b in range(256)]


def _apply_merges(symbols: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """Plain BPE on one word: repeatedly merge the lowest-ranked (then leftmost) adjacent pair."""
    while True:
        candidates = [(ranks[pair], i) for i, pair in enumerate(zip(symbols, symbols[1:])) if pair in ranks]
        if not candidates:
            return symbols
        _, i = min(candidates)
        symbols = [*symbols[:i], symbols[i] + symbols[i + 1], *symbols[i + 2:]]


def write_tokenizer_files(directory: Path, extra_words: tuple[str, ...] = ()) -> None:
    """Write ``vocab.json`` and ``merges.txt`` of the tiny CLIP BPE vocabulary into ``directory``;
    ``extra_words`` (e.g. a new world's :data:`WORDS`) are added after the built-in ones."""
    chars = _byte_chars()
    vocab = chars + [c + "</w>" for c in chars]
    ranks: dict[tuple[str, str], int] = {}
    for word in _words(extra_words):
        # New merges go after all existing ones, so words that already merge to one token are unaffected.
        symbols = _apply_merges([*word[:-1], word[-1] + "</w>"], ranks)
        while len(symbols) > 1:
            ranks[(symbols[0], symbols[1])] = len(ranks)
            symbols = [symbols[0] + symbols[1], *symbols[2:]]
            if symbols[0] not in vocab:
                vocab.append(symbols[0])
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}, ensure_ascii=False),
                                          encoding="utf-8")
    lines = ["#version: 0.2"] + [f"{a} {b}" for a, b in sorted(ranks, key=ranks.__getitem__)]
    (directory / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")


def _words(extra_words: tuple[str, ...]) -> tuple[str, ...]:
    return _TINY_WORDS + tuple(dict.fromkeys(w for w in extra_words if w not in _TINY_WORDS))


def tiny_tokenizer(directory: str | os.PathLike, extra_words: tuple[str, ...] = ()) -> CLIPTokenizer:
    """Write and load a small offline CLIP tokenizer (bytes + a few dozen whole English words and
    ``extra_words``, 77 tokens)."""
    directory = Path(directory)
    write_tokenizer_files(directory, extra_words)
    tokenizer = CLIPTokenizer.from_pretrained(directory, model_max_length=77, local_files_only=True)
    for word in _words(extra_words):  # invariant: every listed word is a single token
        ids = tokenizer(word, add_special_tokens=False).input_ids
        if len(ids) != 1:
            raise RuntimeError(f"tiny tokenizer splits {word!r} into {len(ids)} tokens")
    return tokenizer
