"""What a stage is: kinds in graph order, the dimension names of every store, the protocol of
each stage kind, the :class:`StageBase` convenience base, the run config and the context a stage
runs in. Parameters are :mod:`tokenflow.params`.

A stage is a stateless class with a ``kind`` (one of :data:`KINDS`), a ``name`` unique within its
kind, a ``version`` (bump it and old cache entries stop matching), the kinds it ``requires`` and a
``Params`` dataclass whose every field changes the output. Whole-video stages implement
``run(ctx)``; the editor and the blender are called once per timestep by
:mod:`tokenflow.editing.loop`. The registry checks every registered class against its kind's
protocol (:func:`missing_members`) and refuses it with one line naming what is missing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from tokenflow.params import Params

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import torch
    import zarr

    from tokenflow.editing.loop import EditorOutput, EditRun, EditStep
    from tokenflow.models import Model

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
#: Dims of the feature store's ``tokens`` arrays.
TOKEN_DIMS = (TIMESTEP, FRAME, LAYER, TOKEN, CHANNEL)


class StageError(RuntimeError):
    """A stage could not run; the message is one line for the user."""


# --- the protocol of every stage kind -----------------------------------------------------------


class Stage(Protocol):
    """What every stage class provides (structural: no base class is needed).

    ``kind``: one of :data:`KINDS`. ``name``: unique within the kind. ``version``: part of the
    cache key. ``requires``: kinds whose stores this stage reads (their keys chain into its key).
    ``Params``: frozen dataclass subclassing :class:`~tokenflow.params.Params`. Instances are
    built as ``StageClass(params)`` and hold ``params`` only.

    Optional, on any kind: ``summary`` (one line for ``tf stages``); ``reads_config`` (the
    :class:`RunConfig` fields the output depends on; default ``("steps",)``);
    ``upstream_params(config)``, ``estimate_bytes(ctx)``, ``frame_evaluations(ctx)``,
    ``check(pm, model, config, checkpoint)`` and ``key_inputs(pm, model)`` (see
    :class:`StageBase`).
    """

    kind: ClassVar[str]
    name: ClassVar[str]
    version: ClassVar[int]
    requires: ClassVar[tuple[str, ...]]
    Params: ClassVar[type[Params]]


class WholeVideoStage(Stage, Protocol):
    """A stage computed once for the whole video: ``run(ctx)`` writes its store."""

    def run(self, ctx: StageContext) -> None:
        """Compute the output into ``ctx.output`` (a Zarr group being written; renamed into
        place when ``run`` returns). ``ctx.inputs`` holds the stores of ``requires``. May resume
        through ``ctx.progress``; raise :class:`StageError` with one line for the user."""


class InversionStage(WholeVideoStage, Protocol):
    """Kind ``inversion``. ``run(ctx)`` writes: the ``timestep`` coordinate (the editing grid,
    noisiest first); ``latents`` (dims ``timestep, frame, latent_channel, latent_y, latent_x``):
    every frame's inverted latents at every editing timestep; ``x0`` (``frame, latent_*``): the
    clean latents; ``x_max`` (same dims): the noisiest latents reached, at the level the
    ``t_max`` root attribute gives. The editing loop and the feature store read these."""


class FeatureStage(WholeVideoStage, Protocol):
    """Kind ``features``. ``run(ctx)`` runs the source branch and writes, per spatial resolution
    group (:func:`tokenflow.cache.layouts.group_name`), the self-attention input tokens of every
    transformer block (``tokens``, dims :data:`TOKEN_DIMS`) and the residuals later stages
    inject (``conv``); :class:`tokenflow.cache.layouts.FeatureReader` is how others read it."""


class KeyframeSampler(WholeVideoStage, Protocol):
    """Kind ``keyframes``. ``run(ctx)`` writes ``keyframes`` (dims ``timestep, chunk``): the
    frame index of the keyframe of every chunk of ``batch_size`` frames at every timestep."""


class CorrespondenceStage(WholeVideoStage, Protocol):
    """Kind ``correspondence``. ``run(ctx)`` writes ``reference`` (dims ``timestep, frame,
    ref``: the keyframes each frame reads from) and, per resolution group, ``index`` (dims
    ``timestep, frame, layer, ref, token``: for each token of the frame, the token of the
    reference keyframe it takes); :class:`tokenflow.cache.layouts.CorrespondenceReader` reads
    it."""


class Editor(Stage, Protocol):
    """Kind ``editor``: called by the editing loop, per timestep. Per run, in this order:
    ``conv_layers(run)`` (the ResNets whose ``conv2`` output the loop hooks, to inject or record
    residuals), ``start(run)`` (per-run state, kept as ``run.editor_state``),
    ``initial_latents(run)`` (every frame's latents at the first timestep that runs); then per
    timestep ``edit_step(step)``.

    ``edit_step`` returns an :class:`~tokenflow.editing.loop.EditorOutput`: the keyframes'
    self-attention outputs per layer (``tokens``, each ``(2, K, S, C)``: branches [uncond,
    cond]) and their guided prediction. The blender then propagates the tokens, calling the
    editor's ``predict(step, frames, latents, provide=...)`` once per chunk of frames: the guided
    model output of those frames, with every self-attention layer's output replaced by what
    ``provide(layer)`` returns (pass it to ``EditRun.call_unet``). ``predict`` is required of
    editors that propagate (``propagates``, default True). An editor that does not propagate
    edits every frame itself and returns the next ``latents`` of all frames in its output.

    Optional: ``propagates`` (class attribute, default True), ``first_step(run) -> int`` (grid
    index the loop starts at, default 0), ``finish_step(step, latents) -> latents`` (after the
    blender's step), ``resumable`` (default True: the loop may resume after a crash from the
    stored latents; set False if state carries from one step to the next).
    """

    def conv_layers(self, run: EditRun) -> Sequence[str]: ...

    def start(self, run: EditRun) -> Any: ...

    def initial_latents(self, run: EditRun) -> torch.Tensor: ...

    def edit_step(self, step: EditStep) -> EditorOutput: ...

    def predict(self, step: EditStep, frames: list[int], latents: torch.Tensor, *,
                provide: Any = None) -> torch.Tensor: ...


class Blender(Stage, Protocol):
    """Kind ``blender``: called by the editing loop once per timestep, after the editor, with the
    editor's keyframe tokens: ``blend_step(step, tokens)`` returns every frame's latents after
    this timestep's DDIM step, ``(N, c, h, w)``. The ``tokenflow`` blender reads the
    correspondence store (``run.correspondence``) and calls ``run.editor.predict``."""

    def blend_step(self, step: EditStep, tokens: dict[str, torch.Tensor]) -> torch.Tensor: ...


#: The protocol of each stage kind.
PROTOCOLS: dict[str, type] = {
    INVERSION: InversionStage,
    FEATURES: FeatureStage,
    KEYFRAMES: KeyframeSampler,
    CORRESPONDENCE: CorrespondenceStage,
    EDITOR: Editor,
    BLENDER: Blender,
}


def protocol_members(protocol: type) -> list[str]:
    """The attributes and methods a protocol declares (its own and its bases'), in order."""
    names: list[str] = []
    for klass in reversed(protocol.__mro__):
        if klass in (object, Protocol) or not getattr(klass, "_is_protocol", False):
            continue
        declared = list(klass.__dict__.get("__annotations__", {}))
        declared += [k for k, v in klass.__dict__.items() if callable(v) and not k.startswith("_")]
        names += [n for n in declared if n not in names]
    return names


def missing_members(cls: type, kind: str) -> list[str]:
    """Members of ``kind``'s protocol that ``cls`` lacks (methods must be callable). An editor
    that does not propagate needs no ``predict``."""
    protocol = PROTOCOLS[kind]
    missing = []
    for name in protocol_members(protocol):
        if name == "predict" and kind == EDITOR and not getattr(cls, "propagates", True):
            continue
        declared = protocol.__dict__.get(name) or next(
            (k.__dict__[name] for k in protocol.__mro__ if name in k.__dict__), None)
        if not hasattr(cls, name):
            missing.append(name)
        elif callable(declared) and not callable(getattr(cls, name)):
            missing.append(name)
    return missing


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

    def frame_evaluations(self, ctx: StageContext) -> int | None:
        """UNet frame-evaluations this stage will make (one frame through the UNet once; a
        call on F frames in B branches is F x B), for the plan ``tf run --dry-run`` prints.
        None (the default): the stage does not say; return 0 for a stage that runs no UNet.
        ``ctx`` is as for :meth:`estimate_bytes`: ``ctx.stages`` holds the run's other stages,
        ``ctx.model`` may be a model described without its weights (``model.weights`` False)."""
        return None

    # Optional: ``check(self, pm, model, config, checkpoint) -> None`` (any subset of the
    # arguments, by name): raise StageError for a run that cannot work (a word not in the prompt,
    # a missing file), so it fails when planned rather than after the upstream stages ran. A
    # check that declares no ``model`` also runs before torch and the model load (errors in
    # about a second). One that declares ``checkpoint`` (a tokenflow.Checkpoint: the model's id,
    # directory, suggested defaults and scheduler config, read from its files) runs only then,
    # when the model's files are on this machine: repeat it in ``run`` if it must hold.
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
    #: The file name of the source video, recorded in the metadata of the cache entries the run
    #: writes (``tf cache ls``); not hashed (entries are keyed by the frames' content).
    video: str | None = None

    #: Called as ``on_progress(description, done, total)`` while long work advances (a front
    #: end's progress display); None for none.
    on_progress: Any = None
    #: Where :meth:`note` lines go (``log(text)``; the CLI's stderr); None for nowhere.
    log: Any = None

    def note(self, text: str) -> None:
        """Tell the user something worth knowing about this stage's work (one line, e.g. where
        a resumed stage starts again); nothing when quiet or without a log."""
        if self.log is not None and not self.quiet:
            self.log(text)

    def bar(self, total: int, desc: str):
        """A progress bar on stderr (a no-op one when quiet) that also reports to
        ``on_progress``. Use it as a context manager and call ``update(n)``; the finished bar
        stays on screen (what was computed, in how long)."""
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc=desc, disable=self.quiet, leave=True, dynamic_ncols=True)
        if self.on_progress is None:
            return bar
        return _ReportingBar(bar, self.on_progress, desc, total)


class _ReportingBar:
    """A tqdm bar that also calls ``report(desc, done, total)`` on every update."""

    def __init__(self, bar, report, desc: str, total: int) -> None:
        self.bar, self.report, self.desc, self.total, self.done = bar, report, desc, total, 0

    def update(self, n: int = 1) -> None:
        self.bar.update(n)
        self.done += n
        if n:
            self.report(self.desc, self.done, self.total)

    def __enter__(self):
        self.bar.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.bar.__exit__(*exc)

    def __getattr__(self, name: str):
        return getattr(self.bar, name)
