"""One-line messages: what every error the user sees is reduced to (the first line of a text or
an exception's message, optionally its type in front)."""

from __future__ import annotations


def first_line(text: str, limit: int = 300, *, default: str = "") -> str:
    """The first non-blank line of ``text``, stripped, at most ``limit`` characters."""
    lines = [ln.strip() for ln in str(text).splitlines() if ln.strip()]
    return lines[0][:limit] if lines else default


def error_line(exc: BaseException, limit: int = 300, *, sentence: bool = False) -> str:
    """``Type: first line of the message`` (the type alone if there is none); with ``sentence``
    only the message's first sentence."""
    text = first_line(str(exc), limit)
    if sentence:
        text = text.split(". ")[0]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
