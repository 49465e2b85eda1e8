"""What a stage is: the Stage protocol, typed parameters, the context a stage runs in, and names.

A stage is a stateless class with a ``kind`` (one of :data:`KINDS`), a ``name`` unique within its
kind, a ``version`` (bump it and old cache entries stop matching), the kinds it ``requires`` and a
``Params`` dataclass whose every field changes the output. Whole-video stages implement
``run(ctx)``; the editor and the blender are called once per timestep by :mod:`tokenflow.loop`.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol, runtime_checkable

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import zarr

    from .models import Model

# Stage kinds, in pipeline order.
INVERSION = "inversion"
FEATURES = "features"
KEYFRAMES = "keyframes"
CORRESPONDENCE = "correspondence"
EDITOR = "editor"
BLENDER = "blender"
KINDS: tuple[str, ...] = (INVERSION, FEATURES, KEYFRAMES, CORRESPONDENCE, EDITOR, BLENDER)
#: Kinds whose stages are called per timestep by the editing loop instead of ``run(ctx)``.
STEP_KINDS: tuple[str, ...] = (EDITOR, BLENDER)

# Dimension names used in every store.
TIMESTEP = "timestep"
FRAME = "frame"
LAYER = "layer"
TOKEN = "token"
CHANNEL = "channel"
HEIGHT = "y"
WIDTH = "x"
RGB = "rgb"
LATENT_CHANNEL = "latent_channel"
LATENT_Y = "latent_y"
LATENT_X = "latent_x"
LATENT_DIMS = (LATENT_CHANNEL, LATENT_Y, LATENT_X)
CHUNK = "chunk"
REF = "ref"
BRANCH = "branch"
KEYFRAME = "keyframe"


class StageError(RuntimeError):
    """A stage could not run; the message is one line for the user."""


class ParamError(ValueError):
    """A stage parameter is unknown or has a value of the wrong type; one line for the user."""


@dataclass(frozen=True)
class Params:
    """Base of every stage's parameters. Subclass as a frozen dataclass; every field is hashed."""

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


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


@runtime_checkable
class Stage(Protocol):
    """What every stage class provides (structural: no base class is needed).

    ``kind``: one of :data:`KINDS`. ``name``: unique within the kind. ``version``: part of the
    cache key. ``requires``: kinds whose stores this stage reads (their keys chain into its key).
    ``Params``: frozen dataclass subclassing :class:`Params`. Instances hold ``params`` only.
    """

    kind: ClassVar[str]
    name: ClassVar[str]
    version: ClassVar[int]
    requires: ClassVar[tuple[str, ...]]
    Params: ClassVar[type[Params]]
    params: Params


class StageBase:
    """Convenience base for stage classes: stores ``params`` and offers defaults."""

    kind: ClassVar[str] = ""
    name: ClassVar[str] = ""
    version: ClassVar[int] = 1
    requires: ClassVar[tuple[str, ...]] = ()
    Params: ClassVar[type[Params]] = Params
    #: One line shown by ``tf stages``.
    summary: ClassVar[str] = ""
    #: The :class:`RunConfig` fields this stage's output depends on (hashed into its key).
    reads_config: ClassVar[tuple[str, ...]] = ("steps",)

    def __init__(self, params: Params | None = None) -> None:
        self.params = params if params is not None else self.Params()

    def upstream_params(self, config: RunConfig) -> dict[str, dict[str, Any]]:
        """Parameters this stage needs upstream stages to have, as ``{kind: {name: value}}``.

        For example the PnP editor asks the feature store to keep conv residuals for as many
        timesteps as it injects them. The pipeline applies these before hashing keys; a user
        value that contradicts one is an error.
        """
        return {}

    def estimate_bytes(self, ctx: StageContext) -> int:
        """Bytes this stage will write to its store (for the size printed before a run)."""
        return 0

    # Optional: ``check(self, pm, model, config) -> None`` (any subset of the arguments, by name):
    # raise StageError for a run that cannot work (a word not in the prompt, a missing file), so
    # it fails when planned rather than after the upstream stages ran.
    # Optional: ``key_inputs(self, pm, model) -> dict``: more inputs of the output that the params
    # only name (the hash of weights a path points at, the version of a helper looked up by
    # name). JSON-able; hashed into this stage's key. Raise StageError if they cannot be resolved.

    def __repr__(self) -> str:
        return f"<{self.kind} {self.name!r} v{self.version} {self.params}>"


@dataclass(frozen=True)
class RunConfig:
    """Run-wide settings stages may read. They are inputs, hashed into the key of every stage
    that lists the field in its ``reads_config``.

    ``steps``: the editing grid size. ``batch_size``: frames per chunk (B; it defines the
    keyframe chunks, so it changes the result, not only memory use).
    """

    steps: int = 50
    batch_size: int = 8


@dataclass
class StageContext:
    """What a stage runs with. Built by the pipeline; stages must not keep references to it.

    ``inputs`` maps each required kind to its store (a read-only ``zarr.Group``), ``output`` is
    the store being written (a temporary Zarr group renamed into place when complete), ``keys``
    maps kinds to cache keys, ``stages`` the other stages of this run by kind.
    """

    model: Model
    frames: np.ndarray
    config: RunConfig
    inputs: dict[str, zarr.Group] = field(default_factory=dict)
    output: zarr.Group | None = None
    keys: dict[str, str] = field(default_factory=dict)
    stages: dict[str, Any] = field(default_factory=dict)
    cache: Any = None
    quiet: bool = False
    hook: Any = None
    #: The run's plugin manager (``hook`` is ``pm.hook``), for helpers registered by plugins.
    pm: Any = None
    #: Runtime knobs that do not change outputs (memory batch sizes etc.).
    options: dict[str, Any] = field(default_factory=dict)
    #: While a stage runs: a :class:`tokenflow.cache.store.Progress` of its partial store. A stage
    #: may skip units of work it marks done (``ctx.progress.done(tag)``) and mark each one after
    #: writing it (``ctx.progress.mark(tag)``), so that a rerun after a crash resumes there.
    progress: Any = None

    def bar(self, total: int, desc: str):
        """A progress bar on stderr (a no-op one when quiet)."""
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, disable=self.quiet, leave=False, dynamic_ncols=True)
