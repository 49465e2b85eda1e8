"""Scorers: how well edited frames match a prompt, registered by plugins (``tf eval``).

Scorer classes come from the ``register_scorers`` hook (the built-ins ``attribute``,
``attribute-background`` and ``clip`` live in ``plugins/scorers.py``). The contract is in the
hook's docstring (:func:`tokenflow.hookspecs.register_scorers`) and in docs/plugins.md. This module
collects the classes (:func:`scorers`), builds the ones a command asks for with its options
(:func:`make_scorers`) and runs them (:func:`score_all`), turning a scorer that cannot run or
fails into a one-line note instead of an error, so that one broken scorer never hides the others.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from tokenflow.oneline import error_line, first_line
from tokenflow.stages import StageError

#: What a scorer class must have; ``describe`` is optional.
REQUIRED_ATTRIBUTES = ("name", "version", "summary", "available", "score")


def _accepts(fn, name: str) -> bool:
    """Whether ``fn`` takes a keyword argument ``name`` (or ``**kwargs``)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # a builtin without a signature: do not guess
        return False
    return any(p.kind is p.VAR_KEYWORD
               or (p.name == name and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))
               for p in params)


# --------------------------------------------------------------------------------------------- registry


def _check_class(cls, owner: str) -> None:
    from tokenflow.registry import RegistryError

    if not isinstance(cls, type):
        raise RegistryError(f"{owner}: register_scorers takes scorer classes, got {cls!r}")
    for attr in REQUIRED_ATTRIBUTES:
        if not hasattr(cls, attr):
            raise RegistryError(f"{owner}: scorer class {cls.__name__} has no {attr!r}")
    if not isinstance(cls.name, str) or not cls.name:
        raise RegistryError(f"{owner}: scorer class {cls.__name__} needs a non-empty str name")
    if not isinstance(cls.version, int) or isinstance(cls.version, bool):
        raise RegistryError(f"{owner}: scorer {cls.name!r} has a version that is not an int")
    for method in ("available", "score"):
        if not callable(getattr(cls, method)):
            raise RegistryError(f"{owner}: scorer {cls.name!r} has no {method}() method")


def collect_scorers(pm) -> tuple[dict[str, type], dict[str, str]]:
    """``(classes, owners)``: every scorer class registered through ``register_scorers`` by
    name, and the plugin that registered each (``name (distribution version)``).

    A malformed class, a name registered twice (the message names both plugins) or a plugin
    raising in its hook (the message names it) is a :class:`tokenflow.registry.RegistryError`.
    """
    from tokenflow.registry import RegistryError, call_discovery_hook

    found: dict[str, type] = {}
    owners: dict[str, str] = {}

    def make_register(owner: str):
        def register(cls: type) -> None:
            _check_class(cls, owner)
            if cls.name in found:
                raise RegistryError(f"scorer {cls.name!r} is registered twice: by "
                                    f"{owners[cls.name]} and by {owner}")
            found[cls.name] = cls
            owners[cls.name] = owner

        return register

    call_discovery_hook(pm, "register_scorers", make_register, describe=error_line)
    return found, owners


def scorers(pm) -> dict[str, type]:
    """Every scorer class registered through ``register_scorers``, by name (see
    :func:`collect_scorers` for the errors, and for the plugin of each)."""
    return collect_scorers(pm)[0]


# --------------------------------------------------------------------------------------------- instances


@dataclass(frozen=True)
class Scorer:
    """A scorer built for one command: its instance (``None`` if its constructor raised, then
    ``error`` says so), the plugin that registered it, and checked calls of its methods."""

    name: str
    instance: Any
    owner: str
    version: int = 1
    summary: str = ""
    error: str | None = None

    @property
    def label(self) -> str:
        """The scorer's ``describe()`` (first line), or its name; for a table's column."""
        describe = getattr(self.instance, "describe", None)
        if callable(describe):
            try:
                text = describe()
            except Exception:  # noqa: BLE001 - cosmetic: a failing describe() loses the label
                return self.name
            if isinstance(text, str) and text.strip():
                return first_line(text, default="(no reason given)")
        return self.name

    def available(self, prompt: str | None = None) -> str | None:
        """``None`` if the scorer can score ``prompt``, else the one-line reason it is skipped.
        ``prompt`` is passed only if the scorer's ``available`` declares it. May raise (the
        scorer's own bug); :func:`score_all` turns that into a note."""
        if self.error is not None:
            return self.error
        method = self.instance.available
        reason = method(prompt=prompt) if _accepts(method, "prompt") else method()
        if reason is None:
            return None
        if not isinstance(reason, str):
            raise StageError(f"available() returned {type(reason).__name__}, "
                             "expected None or a str")
        return first_line(reason, default="(no reason given)")

    def score(self, frames: np.ndarray, prompt: str, source: np.ndarray | None = None
              ) -> np.ndarray:
        """The scorer's per-frame scores, checked: ``float64`` of shape ``(N,)``, all finite
        (otherwise a :class:`StageError` saying what is wrong)."""
        out = self.instance.score(frames, prompt, source=source)
        try:
            values = np.asarray(out, dtype=np.float64)
        except (TypeError, ValueError):
            raise StageError(f"score() returned {type(out).__name__}, not numbers") from None
        if values.shape != (len(frames),):
            raise StageError(f"score() returned shape {values.shape}, expected ({len(frames)},)")
        if not np.isfinite(values).all():
            raise StageError("score() returned non-finite values")
        return values


def _options_for(cls: type, options: Mapping[str, Any]) -> dict[str, Any]:
    """The options ``cls.__init__`` declares by name (all if it takes ``**options``); values of
    ``None`` are left out so that the scorer's own default applies."""
    given = {k: v for k, v in options.items() if v is not None}
    return {k: v for k, v in given.items() if _accepts(cls, k)}


def make_scorers(pm, names: Iterable[str] | None = None, options: Mapping[str, Any] | None = None
                 ) -> list[Scorer]:
    """Build the scorers called ``names`` (every registered one, sorted by name, if ``None``).

    Each is constructed as ``ScorerClass(**opts)`` with those of ``options`` its ``__init__``
    declares (all of them if it takes ``**options``; ``None`` values are dropped). An unknown
    name is a :class:`StageError` listing the installed scorers; a constructor that raises does
    not stop the others: its :class:`Scorer` has ``instance=None`` and an ``error`` note naming
    the plugin, which :func:`score_all` reports.
    """
    found, owners = collect_scorers(pm)
    options = dict(options or {})
    if names is None:
        wanted = sorted(found)
    else:
        wanted = list(dict.fromkeys(names))  # once each, in the order given
        unknown = [n for n in wanted if n not in found]
        if unknown:
            valid = ", ".join(sorted(found)) or "none installed"
            raise StageError(f"unknown scorer {unknown[0]!r}; installed: {valid}")
    made: list[Scorer] = []
    for name in wanted:
        cls, owner = found[name], owners[name]
        common = {"name": name, "owner": owner, "version": cls.version,
                  "summary": cls.summary if isinstance(cls.summary, str) else ""}
        try:
            made.append(Scorer(instance=cls(**_options_for(cls, options)), **common))
        except Exception as exc:  # noqa: BLE001 - a plugin's bug: reported by score_all
            made.append(Scorer(instance=None, error=(
                f"failed to start in plugin {owner}: {error_line(exc)}"), **common))
    return made


# --------------------------------------------------------------------------------------------- scoring


def _check_frames(frames: np.ndarray, what: str) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or not len(frames):
        raise StageError(f"{what} must be uint8 of shape (N, H, W, 3) with N >= 1, got "
                         f"{frames.dtype} {frames.shape}")
    view = np.ascontiguousarray(frames).view()
    view.flags.writeable = False  # one scorer cannot change what the next one sees
    return view


def _as_scorer(item) -> Scorer:
    """A :class:`Scorer` as is; a bare scorer instance wrapped, its module standing for its
    plugin (use :func:`make_scorers` to have the plugin's registered name)."""
    if isinstance(item, Scorer):
        return item
    cls = type(item)
    return Scorer(name=str(getattr(item, "name", cls.__name__)), instance=item,
                  owner=cls.__module__, version=getattr(item, "version", 1),
                  summary=str(getattr(item, "summary", "")))


def score_all(instances: Iterable, frames: np.ndarray, prompt: str,
              source: np.ndarray | None = None) -> tuple[dict[str, list[float]], list[str]]:
    """Run every scorer on ``frames`` against ``prompt``: ``(scores, notes)``.

    ``instances`` are what :func:`make_scorers` returns (bare scorer instances are accepted
    too). ``frames`` and ``source`` (optional, the same shape) are ``uint8 (N, H, W, 3)``;
    anything else is a :class:`StageError` (the caller's mistake, not a scorer's).

    ``scores`` maps each scorer that ran to its per-frame scores (a list of ``N`` floats), in
    the order given. ``notes`` has one line per scorer that did not: ``scorer 'clip' skipped:
    REASON`` when ``available`` says it cannot run, ``scorer 'x' failed in plugin NAME (DIST
    VERSION): TYPE: MESSAGE`` when one of its methods raised or ``score`` returned something
    malformed. Exceptions are never let through (except ``KeyboardInterrupt`` and the like).
    """
    frames = _check_frames(frames, "frames")
    if source is not None:
        source = _check_frames(source, "source")
        if source.shape != frames.shape:
            raise StageError(f"source frames have shape {source.shape} but the edited frames "
                             f"{frames.shape}: resize them to the same shape first")
    scores: dict[str, list[float]] = {}
    notes: list[str] = []
    for scorer in map(_as_scorer, instances):
        if scorer.error is not None:
            notes.append(f"scorer {scorer.name!r} {scorer.error}")
            continue
        try:
            reason = scorer.available(prompt)
            if reason is not None:
                notes.append(f"scorer {scorer.name!r} skipped: {reason}")
                continue
            values = scorer.score(frames, prompt, source)
        except Exception as exc:  # noqa: BLE001 - a plugin's bug: a note, the others still run
            detail = str(exc) if isinstance(exc, StageError) else error_line(exc)
            notes.append(f"scorer {scorer.name!r} failed in plugin {scorer.owner}: "
                         f"{first_line(detail, default='(no reason given)')}")
            continue
        scores[scorer.name] = [float(v) for v in values]
    return scores, notes
