"""Hook specifications: the whole plugin API of tokenflow.

A plugin is a module or object with functions marked ``@hookimpl`` whose names match the specs
below; a package makes it discoverable by listing it in the ``tokenflow`` entry-point group::

    [project.entry-points.tokenflow]
    "my_package.editor" = "my_package.editor"

Argument names are part of the API: tokenflow never renames or removes one, it only adds. An
implementation may accept any subset of a hook's arguments.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from pluggy import HookimplMarker, HookspecMarker

if TYPE_CHECKING:  # pragma: no cover
    from tokenflow.stages import Stage, StageContext

hookspec = HookspecMarker("tokenflow")
hookimpl = HookimplMarker("tokenflow")


# --- discovery: one hook per stage kind -------------------------------------------------------


@hookspec
def register_inversions(register: Callable[[type], None]) -> None:
    """Register inversion stages (kind ``inversion``).

    :param register: call it once per stage class, e.g. ``register(DDIMInversion)``.

    An inversion stage's ``run(ctx)`` writes to ``ctx.output`` the latents of every frame at every
    editing timestep (array ``latents``, dims ``timestep, frame, latent_channel, latent_y,
    latent_x``), the clean latents ``x0`` and the noisiest latents ``x_max`` (attribute
    ``t_max``). See :class:`tokenflow.InversionStage`, the protocol.
    """


@hookspec
def register_features(register: Callable[[type], None]) -> None:
    """Register feature-store stages (kind ``features``).

    :param register: call it once per stage class.

    A feature store runs the source branch and writes, per spatial resolution group, the
    self-attention input tokens of every transformer block (``tokens``: dims ``timestep, frame,
    layer, token, channel``) and any module outputs later stages inject (``conv``).
    """


@hookspec
def register_keyframes(register: Callable[[type], None]) -> None:
    """Register keyframe samplers (kind ``keyframes``).

    :param register: call it once per stage class.

    A sampler writes ``keyframes`` (dims ``timestep, chunk``): the frame index of the keyframe of
    every chunk of ``batch_size`` frames at every editing timestep.
    """


@hookspec
def register_correspondences(register: Callable[[type], None]) -> None:
    """Register correspondence stages (kind ``correspondence``).

    :param register: call it once per stage class.

    A correspondence stage writes ``reference`` (dims ``timestep, frame, ref``: the keyframes each
    frame reads from) and, per resolution group, ``index`` (dims ``timestep, frame, layer, ref,
    token``: for each token of the frame, the token of the reference keyframe it takes).
    """


@hookspec
def register_editors(register: Callable[[type], None]) -> None:
    """Register editors (kind ``editor``).

    :param register: call it once per stage class.

    An editor is called once per timestep by :mod:`tokenflow.editing.loop` through
    ``edit_step(step)`` and must return the keyframes' self-attention outputs per transformer block (the tokens the
    blender propagates). See :class:`tokenflow.Editor`, the protocol.
    """


@hookspec
def register_blenders(register: Callable[[type], None]) -> None:
    """Register blenders (kind ``blender``).

    :param register: call it once per stage class.

    A blender is called once per timestep through ``blend_step(step, edited)`` and returns the
    next latents of every frame. See :class:`tokenflow.Blender`, the protocol.
    """


@hookspec
def register_control_extractors(register: Callable[..., None]) -> None:
    """Register control extractors: what turns source frames into ControlNet control images.

    :param register: call it as ``register(name, extract, version=1)``. ``extract(frames)`` gets
        the source frames, ``uint8`` of shape ``(N, H, W, 3)`` as the UNet sees them (the working
        size padded to its multiples), and
        returns the control images as ``float32`` in ``[0, 1]``, shape ``(N, H, W, 3)``. Bump
        ``version`` when the output changes: it is part of the cache key of editors that use it.

    Called when a run plans an editor that uses control images (``-o control NAME``) and by
    ``tf stages``; a name registered twice is an error naming both plugins.
    """


@hookspec
def register_scorers(register: Callable[[type], None]) -> None:
    """Register scorers: what measures how well edited frames match a prompt (``tf eval``).

    :param register: call it once per scorer class, e.g. ``register(ClipScorer)``.

    A scorer class has ``name`` (unique among all plugins' scorers), ``version`` (an int; bump it
    when scores change), ``summary`` (one line) and is built by tokenflow as
    ``ScorerClass(**options)``, given those of the command line's options (``clip=PATH``, ...)
    that its ``__init__`` declares by name (all of them if it takes ``**options``). Its methods:

    * ``available(prompt=None) -> str | None``: ``None`` if it can score (this prompt, when it
      declares ``prompt``), otherwise a one-line reason it is skipped, e.g. ``"no CLIP weights:
      pass --clip PATH"``.
    * ``score(frames, prompt, *, source=None) -> np.ndarray``: ``frames`` are ``uint8`` of shape
      ``(N, H, W, 3)``, ``source`` the source frames of the same shape or ``None``; returns one
      finite ``float`` per frame, shape ``(N,)``, higher is better, on a scale the scorer's
      docstring states (the built-ins: ``attribute`` 0 or 1, ``clip`` 0 to 100).
    * optionally ``describe() -> str``: the label of its column in ``tf eval``'s table.

    Called by :func:`tokenflow.eval.scoring.scorers` (``tf eval``); a name registered twice is an
    error naming both plugins.
    """


# --- execution --------------------------------------------------------------------------------


@hookspec(firstresult=True)
def run_stage(ctx: StageContext, stage: Stage) -> Any:
    """Produce the store of ``stage`` for this run; return a :class:`tokenflow.StageResult`.

    :param ctx: the stage's context; ``ctx.keys[stage.kind]`` is its cache key.
    :param stage: the stage instance (with its ``params``).

    Stops at the first non-None result. The stage cache answers first (``tryfirst``) when a
    complete entry exists; the built-in runner answers last (``trylast``) by computing the stage
    into a temporary store and renaming it into place. For the editing loop this hook is called
    once with the blender stage and ``ctx.stages["editor"]`` set; the lifecycle hooks are called
    for both the editor and the blender around that call.
    """


@hookspec
def before_stage(ctx: StageContext, stage: Stage, key: str) -> None:
    """Called before a stage is looked up or computed.

    :param key: the stage's cache key.
    """


@hookspec
def after_stage(ctx: StageContext, stage: Stage, key: str, result: Any) -> None:
    """Called after a stage's store is available (computed or found in the cache).

    :param result: the :class:`tokenflow.StageResult`; ``result.cached`` tells which.
    """


@hookspec
def on_stage_error(ctx: StageContext, stage: Stage, key: str, error: BaseException) -> None:
    """Called when computing a stage raised; the exception is re-raised afterwards.

    Nothing partial is left in the cache when this is called.
    """
