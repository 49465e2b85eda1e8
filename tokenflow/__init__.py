"""tokenflow: consistent text-driven video editing with a frozen diffusion model (TokenFlow).

This module is the public API: everything a plugin, a notebook or another front end may import,
and nothing else. Names are resolved on first use (``import tokenflow`` stays light: the
command line lists plugins without importing torch). docs/plugins.md lists them with their
stability promise: within a major version, names here are never removed or renamed, and
functions and classes only gain optional arguments. Submodules are internal and may move.

Running an edit::

    import tokenflow
    result = tokenflow.edit("clip.mp4", prompt="a blue checkered ball on wood")
    result.frames            # (N, H, W, 3) uint8
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tokenflow.lazy import resolve

__version__ = "0.1.0"

#: Public name -> the module that defines it.
_EXPORTS: dict[str, str] = {}


def _export(module: str, *names: str) -> None:
    for name in names:
        _EXPORTS[name] = module


# hooks
_export("tokenflow.hookspecs", "hookimpl", "hookspec")
# stages: kinds, dimension names, the base class, the protocols, the context
_export("tokenflow.stages",
        "INVERSION", "FEATURES", "KEYFRAMES", "CORRESPONDENCE", "EDITOR", "BLENDER", "KINDS",
        "STEP_KINDS", "TIMESTEP", "FRAME", "LAYER", "TOKEN", "CHANNEL", "HEIGHT", "WIDTH", "RGB",
        "LATENT_CHANNEL", "LATENT_Y", "LATENT_X", "LATENT_DIMS", "CHUNK", "REF", "BRANCH",
        "KEYFRAME", "TOKEN_DIMS",
        "Stage", "InversionStage", "FeatureStage", "KeyframeSampler", "CorrespondenceStage",
        "Editor", "Blender", "StageBase", "StageContext", "RunConfig", "StageError")
_export("tokenflow.params", "Params", "ParamError", "opt_in")
# stores: writing arrays with named dims, reading each kind's layout
_export("tokenflow.cache.store", "create_array", "write_coord")
_export("tokenflow.cache.writer", "BackgroundWriter")
_export("tokenflow.cache.quantized", "Int8Grid")
_export("tokenflow.cache.layouts", "FeatureReader", "CorrespondenceReader", "group_name",
        "layer_shapes", "token_grid", "read_timesteps")
# the editing loop and its building blocks
_export("tokenflow.editing.loop", "EditRun", "EditStep", "EditorOutput", "start_latents")
_export("tokenflow.editing.attention", "self_attention_layers")
_export("tokenflow.editing.source", "SourcePass")
_export("tokenflow.editing.diffusion", "ddim_scheduler", "editing_grid", "to_epsilon")
_export("tokenflow.editing.grids", "timestep_grid", "check_inversion_grid")
_export("tokenflow.editing.editors", "KeyframeEditor", "Injection", "TextParams", "PnPParams",
        "guided", "check_strength", "sdedit_steps", "strength_first_step", "PNP_QK_LAYERS",
        "pnp_qk_layers", "PNP_CONV_LAYERS", "DEFAULT_NEGATIVE_PROMPT")
_export("tokenflow.editing.controls", "ControlExtractor", "get_extractor")
# models
_export("tokenflow.models", "Model", "ModelError", "load_model", "load_controlnet",
        "controlnet_key", "Checkpoint")
# running an edit
_export("tokenflow.api", "edit", "invert", "prepare", "EditResult", "EditError", "Source")
_export("tokenflow.cache.lookup", "StageResult")

#: Public modules: ``from tokenflow import world`` (the embedded model's world, v2, and its
#: rule-based checks, for scorers and clips of that world).
_MODULES: dict[str, str] = {"world": "tokenflow.embedded.public_world"}

__all__ = sorted([*_EXPORTS, *_MODULES, "__version__"])


def __getattr__(name: str) -> Any:
    return resolve(globals(), name, _EXPORTS, _MODULES)


def __dir__() -> list[str]:
    return __all__


if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs
    from tokenflow.api import EditError, EditResult, Source, edit, invert, prepare
    from tokenflow.cache.lookup import StageResult
    from tokenflow.cache.layouts import (
        CorrespondenceReader,
        FeatureReader,
        group_name,
        layer_shapes,
        read_timesteps,
        token_grid,
    )
    from tokenflow.cache.store import create_array, write_coord
    from tokenflow.cache.writer import BackgroundWriter
    from tokenflow.editing.attention import self_attention_layers
    from tokenflow.editing.controls import ControlExtractor, get_extractor
    from tokenflow.editing.diffusion import ddim_scheduler, editing_grid, to_epsilon
    from tokenflow.editing.grids import check_inversion_grid, timestep_grid
    from tokenflow.editing.editors import (
        DEFAULT_NEGATIVE_PROMPT,
        PNP_CONV_LAYERS,
        PNP_QK_LAYERS,
        Injection,
        pnp_qk_layers,
        KeyframeEditor,
        PnPParams,
        TextParams,
        check_strength,
        guided,
        sdedit_steps,
        strength_first_step,
    )
    from tokenflow.editing.loop import EditorOutput, EditRun, EditStep, start_latents
    from tokenflow.editing.source import SourcePass
    from tokenflow.embedded import public_world as world
    from tokenflow.hookspecs import hookimpl, hookspec
    from tokenflow.models import (
        Checkpoint,
        Model,
        ModelError,
        controlnet_key,
        load_controlnet,
        load_model,
    )
    from tokenflow.params import ParamError, Params, opt_in
    from tokenflow.stages import (
        BLENDER,
        BRANCH,
        CHANNEL,
        CHUNK,
        CORRESPONDENCE,
        EDITOR,
        FEATURES,
        FRAME,
        HEIGHT,
        INVERSION,
        KEYFRAME,
        KEYFRAMES,
        KINDS,
        LATENT_CHANNEL,
        LATENT_DIMS,
        LATENT_X,
        LATENT_Y,
        LAYER,
        REF,
        RGB,
        STEP_KINDS,
        TIMESTEP,
        TOKEN,
        TOKEN_DIMS,
        WIDTH,
        Blender,
        CorrespondenceStage,
        Editor,
        FeatureStage,
        InversionStage,
        KeyframeSampler,
        RunConfig,
        Stage,
        StageBase,
        StageContext,
        StageError,
    )
