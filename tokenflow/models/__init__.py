"""Checkpoints: :mod:`~tokenflow.models.loading` (devices, dtypes, :class:`Model`,
:func:`load_model`), :mod:`~tokenflow.models.checkpoints` (validation before loading),
:mod:`~tokenflow.models.hashing` (content keys of weights) and :mod:`~tokenflow.models.controlnet`.

Names are resolved on first use: ``ModelError`` or reading a checkpoint's configs
(:mod:`~tokenflow.models.checkpoints`) does not import torch or diffusers, so that arguments can
be checked before they load.
"""

from __future__ import annotations

from typing import Any

from tokenflow.lazy import resolve

#: Public name -> the submodule that defines it.
_EXPORTS: dict[str, str] = {
    "SD_SCHEDULER_CONFIG": "tokenflow.models.checkpoints",
    "Checkpoint": "tokenflow.models.checkpoints",
    "read_checkpoint": "tokenflow.models.checkpoints",
    "ModelError": "tokenflow.models.checkpoints",
    "controlnet_key": "tokenflow.models.controlnet",
    "load_controlnet": "tokenflow.models.controlnet",
    "EMBEDDED_DIR": "tokenflow.models.checkpoints",
    "Model": "tokenflow.models.loading",
    "default_device": "tokenflow.models.loading",
    "default_dtype": "tokenflow.models.loading",
    "describe_model": "tokenflow.models.loading",
    "load_model": "tokenflow.models.loading",
    "parse_dtype": "tokenflow.models.loading",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    return resolve(globals(), name, _EXPORTS)


def __dir__() -> list[str]:
    return __all__

