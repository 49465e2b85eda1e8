"""What a planned run would do, said before it does it (``tf run --dry-run``): every stage with its
parameters and where each value comes from, whether its store is cached or will be computed,
the bytes it writes and the UNet frame-evaluations it makes."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tokenflow.cache.keys import _plain
from tokenflow.preflight import human_bytes
from tokenflow.stages import BLENDER, EDITOR

#: A stage's status in a plan: its complete store is in the cache; it will be computed; it will
#: be computed from where an interrupted run left its partial store.
CACHED, COMPUTE, RESUME = "cached", "compute", "resume"


@dataclass
class StagePlan:
    """One stage of a plan: ``params`` and their ``sources`` (``{param: source}``, see
    :data:`tokenflow.plan.SOURCES`), ``status`` (:data:`CACHED`, :data:`COMPUTE` or
    :data:`RESUME`), the bytes its store takes before compression and its UNet
    frame-evaluations (None: the stage does not say)."""

    kind: str
    name: str
    version: int
    key: str
    status: str
    params: dict[str, Any]
    sources: dict[str, str]
    bytes: int
    frame_evaluations: int | None


@dataclass
class RunPlan:
    """A planned run: its stages in pipeline order and what it runs on."""

    stages: list[StagePlan]
    frames: int
    width: int
    height: int
    steps: int
    batch_size: int
    model: str
    model_key: str
    cache: Path
    out: Path | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def to_compute(self) -> list[StagePlan]:
        return [s for s in self.stages if s.status != CACHED]

    @property
    def bytes(self) -> int:
        """Bytes the stages to compute will write (before compression: an upper bound)."""
        return sum(s.bytes for s in self.to_compute)

    @property
    def frame_evaluations(self) -> int:
        """UNet frame-evaluations of the stages to compute (those that say)."""
        return sum(s.frame_evaluations or 0 for s in self.to_compute)

    def as_dict(self) -> dict[str, Any]:
        doc = _plain({k: v for k, v in self.__dict__.items() if k != "stages"})
        doc["stages"] = [_plain(s) for s in self.stages]
        doc.update(to_compute=[s.kind for s in self.to_compute], bytes=self.bytes,
                   frame_evaluations=self.frame_evaluations)
        return doc

    def lines(self) -> list[str]:
        """The plan as ``tf run --dry-run`` prints it."""
        out = [f"plan: {self.frames} frames of {self.width}x{self.height}, {self.steps} editing "
               f"steps, chunks of {self.batch_size} frames; model {self.model} "
               f"(key {self.model_key[:12]}); stage cache in {self.cache}{os.sep}"]
        for s in self.stages:
            what = {CACHED: "cached", COMPUTE: "to compute",
                    RESUME: "to compute (resumes a partial store)"}[s.status]
            if s.status != CACHED:
                evals = ("UNet frame-evaluations not given" if s.frame_evaluations is None
                         else f"{s.frame_evaluations:,} UNet frame-evaluations")
                what += f", up to {human_bytes(s.bytes)}, {evals}"
            out.append(f"{s.kind} {s.name} v{s.version} [{s.key[:16]}]: {what}")
            for param, value in s.params.items():
                out.append(f"    {param} = {json.dumps(value)}  ({s.sources.get(param, 'default')})")
        todo = self.to_compute
        if todo:
            unknown = [s.kind for s in todo if s.frame_evaluations is None]
            loop = [s.frame_evaluations for s in self.stages if s.kind in (EDITOR, BLENDER)]
            per_step = (f"; the editing loop {sum(loop) / self.steps:g} per step"
                        if loop and None not in loop else "")
            out.append(f"to compute: {', '.join(s.kind for s in todo)}: up to "
                       f"{human_bytes(self.bytes)} to write, {self.frame_evaluations:,} UNet "
                       f"frame-evaluations" + (f" (and those of {', '.join(unknown)}, which do "
                                               "not say)" if unknown else "") + per_step)
        else:
            out.append("to compute: nothing, every stage is cached")
        out += [f"note: {n}" for n in self.notes]
        return out


def _status(job, kind: str, stage, pending: list[str]) -> str:
    if kind not in pending:
        return CACHED
    if kind == EDITOR and BLENDER in job.stages:  # the loop writes both or neither
        kind, stage = BLENDER, job.stages[BLENDER]
    # a partial store with nothing marked done is discarded by the writer, not resumed
    return RESUME if job.base.cache.partial_units(kind, stage.name, job.keys[kind]) > 0 else COMPUTE


def describe_job(job, out: Path | None = None) -> RunPlan:
    """The :class:`RunPlan` of a planned :class:`tokenflow.run.Job` (nothing is computed)."""
    ctx = job.base
    stages = []
    pending = job.pending()
    for kind, stage in job.stages.items():
        estimate = getattr(stage, "estimate_bytes", None)
        counter = getattr(stage, "frame_evaluations", None)
        evals = counter(ctx) if counter is not None else None
        stages.append(StagePlan(
            kind=kind, name=stage.name, version=stage.version, key=job.keys[kind],
            status=_status(job, kind, stage, pending), params=_plain(stage.params),
            sources=dict(job.sources.get(kind, {})),
            bytes=int(estimate(ctx)) if estimate is not None else 0,
            frame_evaluations=None if evals is None else int(evals)))
    n, height, width = ctx.frames.shape[:3]
    model = ctx.model
    return RunPlan(stages=stages, frames=int(n), width=int(width), height=int(height),
                   steps=ctx.config.steps, batch_size=ctx.config.batch_size,
                   model=str(getattr(model, "model_id", model)), model_key=str(model.key),
                   cache=Path(ctx.cache.root), out=out)


__all__ = ["CACHED", "COMPUTE", "RESUME", "RunPlan", "StagePlan", "describe_job"]
