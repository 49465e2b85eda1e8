"""Planning and running a job: choose stages, apply parameters, hash keys, run through the hooks."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tokenflow.cache.keys import key_params, stage_key
from tokenflow.params import ParamError, coerce, make_params, param_fields
from tokenflow.registry import Registry
from tokenflow.run import Job
from tokenflow.stages import BLENDER, EDITOR, KINDS, RunConfig, StageContext

#: The stage of each kind used unless the user picks another.
DEFAULT_STAGES: dict[str, str] = {
    "inversion": "ddim",
    "features": "unet",
    "keyframes": "random",
    "correspondence": "nn",
    "editor": "pnp",
    "blender": "tokenflow",
}


def _closure(classes: Mapping[str, type], roots: list[str]) -> set[str]:
    active: set[str] = set()
    todo = list(roots)
    while todo:
        kind = todo.pop()
        if kind in active:
            continue
        active.add(kind)
        if kind == BLENDER and not getattr(classes[EDITOR], "propagates", True):
            continue  # an editor that does not propagate leaves the blender nothing to read
        todo.extend(classes[kind].requires)
    return active


def resolve_option(stages: Mapping[str, type], key: str) -> tuple[str, str]:
    """Map ``-o`` KEY (``kind.param``, ``name.param`` or a bare ``param``) to (kind, param)."""
    if "." in key:
        head, param = key.split(".", 1)
        for kind, cls in stages.items():
            if head in (kind, cls.name):
                if param not in param_fields(cls.Params):
                    valid = ", ".join(param_fields(cls.Params)) or "none"
                    raise ParamError(f"{kind} '{cls.name}' has no parameter {param!r}; valid: {valid}")
                return kind, param
        raise ParamError(f"-o {key}: no stage {head!r} in this run; stages: "
                         + ", ".join(f"{k}={c.name}" for k, c in stages.items()))
    owners = [kind for kind, cls in stages.items() if key in param_fields(cls.Params)]
    if not owners:
        valid = sorted({f"{k}.{p}" for k, c in stages.items() for p in param_fields(c.Params)})
        raise ParamError(f"-o {key}: no stage of this run has that parameter; valid: {', '.join(valid)}")
    if len(owners) > 1:
        raise ParamError(f"-o {key} is ambiguous ({', '.join(owners)}); write KIND.{key}")
    return owners[0], key


#: Where a planned parameter's value comes from (:func:`plan`'s ``sources``), weakest first; a
#: value a downstream stage imposes (``upstream_params``) is marked with that stage instead.
SOURCES = ("default", "model", "flag", "-o")


def suggested(defaults: Mapping[str, Any] | None, kind: str, cls: type) -> dict[str, Any]:
    """The values a model's suggestions (``{"kind.param": value}`` or ``{"name.param": value}``,
    its ``tokenflow.json`` defaults) give the parameters of stage class ``cls`` of ``kind``."""
    fields = param_fields(cls.Params)
    out = {}
    for key, value in (defaults or {}).items():
        head, _, name = key.partition(".")
        if head in (kind, cls.name) and name in fields:
            out[name] = value
    return out


def plan(
    registry: Registry,
    config: RunConfig,
    *,
    choices: Mapping[str, str] | None = None,
    params: Mapping[str, Mapping[str, Any]] | None = None,
    options: list[tuple[str, str]] | None = None,
    until: str = BLENDER,
    defaults: Mapping[str, Any] | None = None,
    sources: dict[str, dict[str, str]] | None = None,
) -> dict[str, Any]:
    """The stage instances of a run, in pipeline order.

    ``choices``: {kind: name} overriding :data:`DEFAULT_STAGES`. ``params``: {kind: {param:
    value}} from dedicated CLI flags (ignored for stages that lack the field). ``options``: the
    ``-o KEY VALUE`` pairs. ``until``: the last kind to run (``features`` for ``tf invert``).
    ``defaults``: ``{"kind.param": value}`` suggested by the model (its ``tokenflow.json``), the
    weakest of all: used where neither a flag nor ``-o`` gives a value, ignored for stages of this
    run that lack the parameter.
    Parameters that downstream stages need upstream (``upstream_params``) are applied here; a
    user value that contradicts one is an error. ``sources``, if given, is filled with where
    every parameter's value comes from: ``{kind: {param: source}}``, a source being one of
    :data:`SOURCES` or the stage that imposed it (``"editor 'pnp'"``).
    """
    choices = {**DEFAULT_STAGES, **(choices or {})}
    unknown = set(choices) - set(KINDS)
    if unknown:
        raise ParamError(f"unknown stage kind {sorted(unknown)[0]!r}; kinds: {', '.join(KINDS)}")
    classes = {kind: registry.get(kind, choices[kind]) for kind in KINDS}
    roots = [EDITOR, BLENDER] if until == BLENDER else [until]
    active = _closure(classes, roots)
    classes = {k: c for k, c in classes.items() if k in active}
    values: dict[str, dict[str, Any]] = {k: suggested(defaults, k, c) for k, c in classes.items()}
    origin: dict[str, dict[str, str]] = {k: {n: "model" for n in v} for k, v in values.items()}
    for kind, given in (params or {}).items():
        if kind in classes:
            fields = param_fields(classes[kind].Params)
            flags = {k: v for k, v in given.items() if k in fields and v is not None}
            values[kind].update(flags)
            origin[kind].update({k: "flag" for k in flags})
    user: dict[str, dict[str, Any]] = {k: {} for k in classes}
    for key, value in options or []:
        kind, name = resolve_option(classes, key)
        values[kind][name] = value
        user[kind][name] = value
        origin[kind][name] = "-o"
    stages: dict[str, Any] = {}
    for kind in reversed(KINDS):
        if kind not in classes:
            continue
        stage = classes[kind](make_params(classes[kind], values[kind]))
        imposer = getattr(stage, "upstream_params", None)
        for up_kind, imposed in (imposer(config) if imposer else {}).items():
            if up_kind not in classes:
                continue
            fields = param_fields(classes[up_kind].Params)
            for name, needed in imposed.items():
                if name not in fields:
                    continue  # a replacement stage without that knob
                if name in user[up_kind]:
                    given = coerce(fields[name][0], user[up_kind][name], name=name)
                    if given != coerce(fields[name][0], needed, name=name):
                        raise ParamError(
                            f"-o {up_kind}.{name}={user[up_kind][name]} contradicts {kind} "
                            f"'{stage.name}', which needs {needed}"
                        )
                values[up_kind][name] = needed
                origin[up_kind][name] = f"{kind} '{stage.name}'"
        stages[kind] = stage
    if sources is not None:
        sources.update({kind: {name: origin[kind].get(name, "default")
                               for name in param_fields(classes[kind].Params)} for kind in classes})
    return {kind: stages[kind] for kind in KINDS if kind in stages}


def _call_with_known(method, **arguments):
    """Call a stage's optional method with the subset of ``arguments`` it declares, by name (as
    pluggy calls hooks), so tokenflow can add arguments without breaking older plugins."""
    import inspect

    params = inspect.signature(method).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return method(**arguments)
    return method(**{k: v for k, v in arguments.items() if k in params})


def run_checks(stages: Mapping[str, Any], *, pm: Any = None, config: RunConfig | None = None,
               model: Any = None, checkpoint: Any = None, before_model: bool = False) -> None:
    """Call stages' optional ``check`` with the arguments each declares, by name.

    ``before_model`` (the argument checks of :mod:`tokenflow.arguments`, before torch and the
    model load): the checks that declare no ``model``, given ``pm``, ``config`` and
    ``checkpoint``; one that declares ``checkpoint`` only when it is known (the model's files
    are on this machine). Otherwise (a job being built): the checks that declare no
    ``checkpoint``, given ``pm``, ``model`` and ``config``; a check on the checkpoint is one of
    the arguments, not of the job (a stage repeats it when it runs if it must hold)."""
    import inspect

    for stage in stages.values():
        check = getattr(stage, "check", None)
        if check is None:
            continue
        declared = inspect.signature(check).parameters
        if before_model:
            if "model" in declared or ("checkpoint" in declared and checkpoint is None):
                continue
            _call_with_known(check, pm=pm, config=config, checkpoint=checkpoint)
        elif "checkpoint" not in declared:
            _call_with_known(check, pm=pm, model=model, config=config)


def compute_keys(stages: Mapping[str, Any], *, model_key: str, video_hash: str,
                 config: RunConfig, pm: Any = None, model: Any = None) -> dict[str, str]:
    """Cache keys of every stage: a Merkle chain through ``requires`` (blender <- editor).

    A stage with a ``key_inputs(pm, model)`` method (taking any subset of those arguments, by
    name) adds what it returns to its inputs.
    """
    keys: dict[str, str] = {}
    for kind, stage in stages.items():
        upstream = {k: keys[k] for k in stage.requires if k in keys}
        inputs: dict[str, Any] = {
            "model": model_key,
            "video": video_hash,
            "config": {f: getattr(config, f) for f in getattr(stage, "reads_config", ("steps",))},
        }
        extra = getattr(stage, "key_inputs", None)
        if extra is not None:
            inputs["stage"] = _call_with_known(extra, pm=pm, model=model)
        if kind == EDITOR and BLENDER in stages:
            blender = stages[BLENDER]
            inputs["blender"] = {"name": blender.name, "version": blender.version,
                                 "params": key_params(blender.params)}
        if kind == BLENDER:
            upstream[EDITOR] = keys[EDITOR]
        keys[kind] = stage_key(kind=kind, name=stage.name, version=stage.version,
                               params=stage.params, upstream=upstream, inputs=inputs)
    return keys


def build_job(pm, model, frames, config: RunConfig, *, cache, registry: Registry | None = None,
              choices: Mapping[str, str] | None = None,
              params: Mapping[str, Mapping[str, Any]] | None = None,
              options: list[tuple[str, str]] | None = None, until: str = BLENDER,
              quiet: bool = True, runtime: Mapping[str, Any] | None = None) -> Job:
    """Plan a run and hash its keys, as ``tf run`` does (the model's suggested defaults, then
    ``params``, then ``options``), calling each stage's optional ``check(pm, model, config)``
    (any subset of those arguments; :func:`run_checks`) to refuse a run that cannot work before
    anything is computed. ``cache``: a :class:`tokenflow.cache.StageCache` or its
    directory; ``runtime``: knobs that do not change outputs (``unet_batch``). Raises
    :class:`ParamError` or :class:`StageError` for a run that cannot be planned."""
    from tokenflow.cache.store import StageCache
    from tokenflow.registry import build_registry
    from tokenflow.video import frames_hash

    registry = registry if registry is not None else build_registry(pm)
    sources: dict[str, dict[str, str]] = {}
    stages = plan(registry, config, choices=choices, params=params,
                  options=[tuple(o) for o in options or []], until=until,
                  defaults=getattr(model, "defaults", None), sources=sources)
    # a run that cannot work fails now, before anything is computed
    run_checks(stages, pm=pm, model=model, config=config)
    keys = compute_keys(stages, model_key=model.key, video_hash=frames_hash(frames),
                        config=config, pm=pm, model=model)
    store = cache if isinstance(cache, StageCache) else StageCache(cache)
    knobs = {"unet_batch": config.batch_size, **(runtime or {})}
    base = StageContext(model=model, frames=frames, config=config, keys=keys, stages=stages,
                        cache=store, quiet=quiet, hook=pm.hook, pm=pm, options=knobs)
    return Job(pm=pm, stages=stages, keys=keys, base=base, registry=registry, sources=sources)


__all__ = ["DEFAULT_STAGES", "SOURCES", "build_job", "compute_keys", "plan", "resolve_option",
           "run_checks", "suggested"]
