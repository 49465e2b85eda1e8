"""Cache keys: sha256 of canonical JSON of everything that can change a stage's output."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from typing import Any


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _plain(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"cannot hash a non-finite number: {value!r}")
        return value
    if value is None or isinstance(value, (str, int, bool)):
        return value
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalars
        return _plain(value.item())
    return str(value)


def canonical_json(value: Any) -> str:
    """Sorted keys, no whitespace, no NaN: the same value always gives the same text."""
    return json.dumps(_plain(value), sort_keys=True, separators=(",", ":"), allow_nan=False)


def key_params(params: Any) -> Any:
    """What a key hashes of a stage's parameters: their ``key_dict()`` when they have one
    (:class:`tokenflow.params.Params`: opt-in fields at their default are left out), else them."""
    key_dict = getattr(params, "key_dict", None)
    return key_dict() if callable(key_dict) else params


def stage_key(
    *,
    kind: str,
    name: str,
    version: int,
    params: Any,
    upstream: dict[str, str],
    inputs: dict[str, Any],
) -> str:
    """The cache key of a stage: a Merkle chain over its upstream stages' keys.

    ``inputs`` holds the content hashes of what the stage reads besides upstream stores (frames,
    model weights, dtype, run-wide settings such as the timestep grid). Things that cannot change
    the output (device, memory batch sizes, paths, verbosity) must not be passed. ``params`` is
    hashed through its ``key_dict()`` when it has one (:class:`tokenflow.params.Params`: opt-in
    fields at their default are left out).
    """
    doc = {
        "kind": kind,
        "name": name,
        "version": int(version),
        "params": key_params(params),
        "upstream": upstream,
        "inputs": inputs,
    }
    return hashlib.sha256(canonical_json(doc).encode()).hexdigest()
