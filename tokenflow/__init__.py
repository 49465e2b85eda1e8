"""tokenflow: consistent text-driven video editing with a frozen diffusion model (TokenFlow).

The public API for plugin authors is what this module exports; see docs/plugins.md.
"""

from __future__ import annotations

__version__ = "0.1.0"

from .hookspecs import hookimpl, hookspec
from .stages import (
    BLENDER,
    CORRESPONDENCE,
    EDITOR,
    FEATURES,
    INVERSION,
    KEYFRAMES,
    KINDS,
    Params,
    ParamError,
    RunConfig,
    StageBase,
    StageContext,
    StageError,
)

__all__ = [
    "BLENDER",
    "CORRESPONDENCE",
    "EDITOR",
    "FEATURES",
    "INVERSION",
    "KEYFRAMES",
    "KINDS",
    "ParamError",
    "Params",
    "RunConfig",
    "StageBase",
    "StageContext",
    "StageError",
    "__version__",
    "hookimpl",
    "hookspec",
]
