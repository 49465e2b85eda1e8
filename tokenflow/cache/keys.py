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
    the output (device, memory batch sizes, paths, verbosity) must not be passed.
    """
    doc = {
        "kind": kind,
        "name": name,
        "version": int(version),
        "params": params,
        "upstream": upstream,
        "inputs": inputs,
    }
    return hashlib.sha256(canonical_json(doc).encode()).hexdigest()
