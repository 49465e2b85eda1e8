"""Control extractors: source frames -> ControlNet control images, registered by plugins.

Extractors come from the ``register_control_extractors`` hook (the built-in ``canny`` lives in
``plugins/canny_control.py``). They are looked up by name when a run plans an editor with a
``control`` parameter; their ``version`` is hashed into that editor's cache key.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from tokenflow.stages import StageError


@dataclass(frozen=True)
class ControlExtractor:
    """A registered extractor: ``extract(uint8 (N, H, W, 3)) -> float32 (N, H, W, 3) in [0, 1]``."""

    name: str
    extract: Callable[[np.ndarray], np.ndarray]
    version: int
    owner: str

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        """Run the extractor and check what it returns (one clear line if it is malformed)."""
        out = np.asarray(self.extract(np.ascontiguousarray(frames)))
        want = frames.shape[:3] + (3,)
        if out.shape != want:
            raise StageError(f"control extractor {self.name!r} ({self.owner}) returned shape "
                             f"{out.shape}, expected {want}")
        out = out.astype(np.float32, copy=False)
        if not np.isfinite(out).all() or out.min() < 0.0 or out.max() > 1.0:
            raise StageError(f"control extractor {self.name!r} ({self.owner}) returned values "
                             "outside [0, 1]")
        return out


def control_extractors(pm) -> dict[str, ControlExtractor]:
    """Every extractor registered through ``register_control_extractors``, by name."""
    from tokenflow.registry import RegistryError, call_discovery_hook

    found: dict[str, ControlExtractor] = {}

    def make_register(owner: str):
        def register(name: str, extract, version: int = 1) -> None:
            if not isinstance(name, str) or not name:
                raise RegistryError(f"{owner}: a control extractor needs a non-empty name")
            if not callable(extract):
                raise RegistryError(f"{owner}: control extractor {name!r} is not callable")
            if name in found:
                raise RegistryError(f"control extractor {name!r} is registered twice: by "
                                    f"{found[name].owner} and by {owner}")
            found[name] = ControlExtractor(name, extract, int(version), owner)

        return register

    call_discovery_hook(pm, "register_control_extractors", make_register,
                        describe=lambda exc: f"{type(exc).__name__}: {exc}")
    return found


def get_extractor(pm, name: str) -> ControlExtractor:
    """The extractor called ``name``, or a :class:`StageError` listing the installed ones."""
    found = control_extractors(pm)
    if name not in found:
        valid = ", ".join(sorted(found)) or "none installed"
        raise StageError(f"unknown control extractor {name!r}; installed: {valid} "
                         "(others come from plugins, e.g. a depth estimator)")
    return found[name]
