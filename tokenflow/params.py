"""Typed stage parameters: the :class:`Params` base, and converting loose values (often command
line strings) to a Params class's field types with one-line errors."""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:  # pragma: no cover
    from tokenflow.stages import Stage


class ParamError(ValueError):
    """A stage parameter is unknown or has a value of the wrong type; one line for the user."""


#: Field metadata of an :func:`opt_in` parameter.
OPT_IN = "tokenflow.opt_in"


@dataclass(frozen=True)
class Params:
    """Base of every stage's parameters. Subclass as a frozen dataclass; every field is hashed
    (an :func:`opt_in` field only when it is not at its default)."""

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def key_dict(self) -> dict[str, Any]:
        """What the cache key hashes: every field, except :func:`opt_in` fields at their
        default."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.metadata.get(OPT_IN) and value == f.default:
                continue
            out[f.name] = value
        return out


def opt_in(default: Any) -> Any:
    """A Params field whose default leaves the stage's output exactly as it was before the field
    existed (an option added later, off by default): at that default it is left out of the cache
    key, so existing cache entries stay valid; any other value is hashed like every field."""
    return dataclasses.field(default=default, metadata={OPT_IN: True})


def param_fields(params_cls: type[Params]) -> dict[str, tuple[Any, Any]]:
    """``{name: (type hint, default)}`` of a Params class, with string annotations resolved."""
    hints = typing.get_type_hints(params_cls)
    out = {}
    for f in dataclasses.fields(params_cls):
        default = f.default if f.default is not dataclasses.MISSING else None
        if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = f.default_factory()  # type: ignore[misc]
        out[f.name] = (hints[f.name], default)
    return out


def type_label(hint: Any) -> str:
    """A short human name for a type hint (``float``, ``one of reference|linear``, ...)."""
    origin = typing.get_origin(hint)
    if origin is Literal:
        return "one of " + "|".join(str(a) for a in typing.get_args(hint))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(type_label(a) for a in typing.get_args(hint) if a is not type(None))
    if origin in (tuple, list):
        return "comma-separated list"
    return getattr(hint, "__name__", str(hint))


def coerce(hint: Any, value: Any, *, name: str = "value") -> Any:
    """Convert ``value`` (often a CLI string) to the type ``hint``; :class:`ParamError` if it cannot."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None or (isinstance(value, str) and value.lower() == "none"):
            if type(None) in args:
                return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(arg, value, name=name)
            except ParamError:
                continue
        raise ParamError(f"{name}: expected {type_label(hint)}, got {value!r}")
    if origin is Literal:
        choices = typing.get_args(hint)
        for choice in choices:
            if value == choice or str(value) == str(choice):
                return choice
        raise ParamError(f"{name}: expected one of {', '.join(map(str, choices))}, got {value!r}")
    if origin in (tuple, list):
        (item,) = typing.get_args(hint)[:1] or (str,)
        items = value.split(",") if isinstance(value, str) else list(value)
        items = [i.strip() if isinstance(i, str) else i for i in items]
        return tuple(coerce(item, i, name=name) for i in items if i != "")
    if hint is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise ParamError(f"{name}: expected true or false, got {value!r}")
    if hint in (int, float):
        if isinstance(value, bool):
            raise ParamError(f"{name}: expected {hint.__name__}, got {value!r}")
        try:
            number = hint(value)
        except (TypeError, ValueError):
            raise ParamError(f"{name}: expected {hint.__name__}, got {value!r}") from None
        if hint is int and isinstance(value, float) and not float(value).is_integer():
            raise ParamError(f"{name}: expected int, got {value!r}")
        if hint is float and number != number:
            raise ParamError(f"{name}: NaN is not allowed")
        return number
    if hint is str:
        if not isinstance(value, str):
            raise ParamError(f"{name}: expected text, got {value!r}")
        return value
    return value


def make_params(stage_cls: type[Stage], values: dict[str, Any]) -> Params:
    """Build ``stage_cls.Params`` from loose values, validating names and types.

    Unknown names raise :class:`ParamError` listing the valid ones; the Params class may check
    ranges in ``__post_init__`` by raising ``ValueError``, which becomes a ParamError too.
    """
    fields = param_fields(stage_cls.Params)
    label = f"{stage_cls.kind} '{stage_cls.name}'"
    unknown = sorted(set(values) - set(fields))
    if unknown:
        valid = ", ".join(fields) or "none"
        raise ParamError(f"unknown parameter {unknown[0]!r} for {label}; valid: {valid}")
    converted = {k: coerce(fields[k][0], v, name=f"{stage_cls.name}.{k}") for k, v in values.items()}
    try:
        return stage_cls.Params(**converted)
    except (TypeError, ValueError) as exc:
        raise ParamError(f"{label}: {exc}") from None
