"""Running a planned job: :class:`Job` (every stage through the ``run_stage`` hook with the
lifecycle hooks around it) and :class:`StageRunner`, the ``run_stage`` implementation that
computes a stage (registered ``trylast``, after the cache lookup)."""

from __future__ import annotations

import dataclasses
import sys
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

from tokenflow.cache.lookup import CacheLookup, StageResult
from tokenflow.hookspecs import hookimpl
from tokenflow.memory import release_memory
from tokenflow.stages import BLENDER, EDITOR, STEP_KINDS, StageContext, StageError


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
                from tokenflow.editing.loop import run_edit

                editor = ctx.stages[EDITOR]
                with cache.writer(EDITOR, editor.name, ctx.keys[EDITOR], params=editor.params,
                                  version=editor.version, resumable=True, video=ctx.video,
                                  progress_out=progress) as ed_group, \
                        cache.writer(BLENDER, stage.name, key, params=stage.params,
                                     version=stage.version, resumable=True, video=ctx.video,
                                     progress_out=progress) as bl_group:
                    run_edit(ctx, ed_group, bl_group, progress=tuple(progress))
                    stats = dict(bl_group.attrs.get("stats", {}))
            else:
                assert stage.kind not in STEP_KINDS
                with cache.writer(stage.kind, stage.name, key, params=stage.params,
                                  version=stage.version, resumable=True, video=ctx.video,
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


@dataclass
class Job:
    """A planned run: stages, keys and the context every stage gets (inputs filled per stage)."""

    pm: Any
    stages: dict[str, Any]
    keys: dict[str, str]
    base: StageContext
    results: dict[str, StageResult] = field(default_factory=dict)
    #: The kind being run when ``run`` raised (None after a complete run), and the lifecycle
    #: hook that raised, if it was one (``before_stage``/``after_stage``).
    failed: str | None = None
    failed_hook: str | None = None
    #: The registry the stages came from (names the plugin of each stage in error messages).
    registry: Any = None
    #: Where each stage parameter's value came from: ``{kind: {param: source}}``
    #: (:func:`tokenflow.plan.plan`'s ``sources``).
    sources: dict[str, dict[str, str]] = field(default_factory=dict)

    def pending(self) -> list[str]:
        """Kinds whose store is not in the cache yet, in stage order. The editing loop writes the
        editor's and the blender's stores together, so when both are planned and either is
        missing, both are pending (the loop computes both again)."""
        cache = self.base.cache
        missing = {k for k, s in self.stages.items()
                   if cache.lookup(k, s.name, self.keys[k]) is None}
        loop = {EDITOR, BLENDER}
        if loop <= set(self.stages) and missing & loop:
            missing |= loop
        return [k for k in self.stages if k in missing]

    def estimate_bytes(self) -> int:
        """Bytes the pending stages will write."""
        ctx = self.base
        return sum(int(self.stages[k].estimate_bytes(ctx)) for k in self.pending()
                   if hasattr(self.stages[k], "estimate_bytes"))

    def _context(self, kinds: list[str]) -> StageContext:
        cache = self.base.cache
        needed = {k for kind in kinds for k in self.stages[kind].requires if k in self.results}
        inputs = {k: cache.open(self.results[k].path) for k in sorted(needed)}
        return dataclasses.replace(self.base, inputs=inputs, output=None)

    def run(self) -> dict[str, StageResult]:
        """Run every stage through ``run_stage`` with the lifecycle hooks around it (zarr's
        notice that the int8 store's delta codec is outside the zarr v3 specification is
        silenced meanwhile: see :mod:`tokenflow.cache.quantized`)."""
        from tokenflow.cache.quantized import quiet_numcodecs  # torch: only once a run starts

        with warnings.catch_warnings():
            quiet_numcodecs()
            return self._run()

    def _run(self) -> dict[str, StageResult]:
        hook = self.pm.hook
        for kind, stage in self.stages.items():
            if kind == EDITOR and BLENDER in self.stages:
                continue  # runs inside the loop, with the blender
            kinds = [EDITOR, BLENDER] if kind == BLENDER else [kind]
            ctx = self._context(kinds)
            observed = [(k, self.stages[k]) for k in kinds]  # the loop runs editor and blender
            self.failed, self.failed_hook = kind, "before_stage"
            for k, s in observed:
                hook.before_stage(ctx=ctx, stage=s, key=self.keys[k])
            self.failed_hook = None
            try:
                result = hook.run_stage(ctx=ctx, stage=stage)
            except BaseException as exc:
                self.failed_hook = "on_stage_error"
                for k, s in observed:
                    hook.on_stage_error(ctx=ctx, stage=s, key=self.keys[k], error=exc)
                self.failed_hook = None
                raise
            self.results[kind] = result
            release_memory()  # what the stage freed, before the next one allocates its own
            if kind == BLENDER:
                editor = self.stages[EDITOR]
                self.results[EDITOR] = StageResult(
                    EDITOR, editor.name, self.keys[EDITOR],
                    self.base.cache.path(EDITOR, editor.name, self.keys[EDITOR]),
                    cached=result.cached, seconds=result.seconds, stats=result.stats)
            self.failed_hook = "after_stage"
            for k, s in observed:
                hook.after_stage(ctx=ctx, stage=s, key=self.keys[k], result=self.results[k])
            self.failed_hook = None
        self.failed = None
        return self.results

    def failure_line(self, exc: BaseException) -> str:
        """One line for an unexpected error in :meth:`run`: the stage (or the lifecycle hook)
        that failed and the plugin whose code raised it."""
        from tokenflow.manager import blame
        from tokenflow.oneline import error_line

        kind = self.failed
        stage = self.stages.get(kind) if kind else None
        what = f"{kind} stage {stage.name!r}" if stage is not None else "the run"
        if kind == BLENDER and EDITOR in self.stages:
            what = (f"the editing loop (editor {self.stages[EDITOR].name!r}, blender "
                    f"{stage.name!r})")
        if self.failed_hook:
            what = f"the {self.failed_hook} hook of {what}"
        culprit = blame(self.pm, exc, self.registry)
        where = f" in plugin {culprit}" if culprit else ""
        return (f"{what} failed{where}: {error_line(exc)} (nothing partial was cached; "
                "--debug shows the traceback)")

