"""The stage cache's answer to ``run_stage``: the complete entry for the stage's key, if any
(registered ``tryfirst``, so nothing is computed that the cache holds)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tokenflow.hookspecs import hookimpl
from tokenflow.stages import BLENDER, EDITOR, StageContext


@dataclass
class StageResult:
    """Where a stage's store is and how it got there."""

    kind: str
    name: str
    key: str
    path: Path
    cached: bool
    seconds: float = 0.0
    stats: dict[str, Any] = field(default_factory=dict)


class CacheLookup:
    """Answers ``run_stage`` with the complete cache entry for the stage's key, if any."""

    @hookimpl(tryfirst=True)
    def run_stage(self, ctx: StageContext, stage) -> StageResult | None:
        key = ctx.keys[stage.kind]
        path = ctx.cache.lookup(stage.kind, stage.name, key)
        if path is None:
            return None
        if stage.kind == BLENDER:  # the loop writes both; both must be there
            editor = ctx.stages[EDITOR]
            if ctx.cache.lookup(EDITOR, editor.name, ctx.keys[EDITOR]) is None:
                return None
        stats = dict(ctx.cache.open(path).attrs.get("stats", {}))
        return StageResult(stage.kind, stage.name, key, path, cached=True, stats=stats)
