"""Checkpoints: :mod:`~tokenflow.models.loading` (devices, dtypes, :class:`Model`,
:func:`load_model`), :mod:`~tokenflow.models.checkpoints` (validation before loading),
:mod:`~tokenflow.models.hashing` (content keys of weights) and :mod:`~tokenflow.models.controlnet`."""

from tokenflow.models.checkpoints import SD_SCHEDULER_CONFIG, ModelError
from tokenflow.models.controlnet import controlnet_key, load_controlnet
from tokenflow.models.loading import (
    EMBEDDED_DIR,
    Model,
    default_device,
    default_dtype,
    load_model,
    parse_dtype,
)

__all__ = ["EMBEDDED_DIR", "SD_SCHEDULER_CONFIG", "Model", "ModelError", "controlnet_key",
           "default_device", "default_dtype", "load_controlnet", "load_model", "parse_dtype"]
