"""The two core ``run_stage`` implementations: the cache lookup (first) and the runner (last)."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .hookspecs import hookimpl
from .stages import BLENDER, EDITOR, STEP_KINDS, StageContext, StageError


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


class StageRunner:
    """Computes a stage into its partial store and renames it into place when complete.

    The entry's lock is held meanwhile: a second process asking for the same entry waits and
    then finds it complete. The partial store survives an interrupted run; the next run resumes
    it where the stage supports that (``ctx.progress``, see :class:`tokenflow.cache.store.Progress`).
    """

    @hookimpl(trylast=True)
    def run_stage(self, ctx: StageContext, stage) -> StageResult:
        start = time.perf_counter()
        cache = ctx.cache
        key = ctx.keys[stage.kind]
        if stage.kind == EDITOR:
            raise StageError("the editor runs inside the editing loop: run the blender stage")

        def waiting() -> None:
            if not ctx.quiet:
                print(f"waiting for another tf process computing {stage.kind} {stage.name!r} "
                      f"({key[:16]})", file=sys.stderr)

        with cache.lock(stage.kind, stage.name, key, on_wait=waiting):
            done = CacheLookup().run_stage(ctx, stage)  # another process may have finished it
            if done is not None:
                return done
            progress: list = []
            if stage.kind == BLENDER:
                from .loop import run_edit

                editor = ctx.stages[EDITOR]
                with cache.writer(EDITOR, editor.name, ctx.keys[EDITOR], params=editor.params,
                                  version=editor.version, resumable=True,
                                  progress_out=progress) as ed_group, \
                        cache.writer(BLENDER, stage.name, key, params=stage.params,
                                     version=stage.version, resumable=True,
                                     progress_out=progress) as bl_group:
                    run_edit(ctx, ed_group, bl_group, progress=tuple(progress))
                    stats = dict(bl_group.attrs.get("stats", {}))
            else:
                assert stage.kind not in STEP_KINDS
                with cache.writer(stage.kind, stage.name, key, params=stage.params,
                                  version=stage.version, resumable=True,
                                  progress_out=progress) as group:
                    ctx.output, ctx.progress = group, progress[0]
                    try:
                        stage.run(ctx)
                    finally:
                        ctx.output, ctx.progress = None, None
                    stats = dict(group.attrs.get("stats", {}))
        path = cache.path(stage.kind, stage.name, key)
        return StageResult(stage.kind, stage.name, key, path, cached=False,
                           seconds=time.perf_counter() - start, stats=stats)
