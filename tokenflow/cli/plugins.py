"""``tf plugins``, ``tf stages``, ``tf install`` and ``tf uninstall``: what is loaded, and managing
plugin distributions with pip (:mod:`tokenflow.plugin_env`)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import click

from tokenflow import __version__
from tokenflow.cli.app import cli
from tokenflow.cli.common import manager_and_registry
from tokenflow.params import param_fields, type_label
from tokenflow.plugin_env import (
    PluginEnvError,
    fresh_plugin_state,
    pip,
    plugin_distributions,
    target_name,
)
from tokenflow.manager import BUILTIN_DISTRIBUTION, _norm
from tokenflow.stages import KINDS, StageError


@cli.command()
def plugins() -> None:
    """List loaded plugins with their distributions and hooks."""
    from tokenflow.manager import LOAD_PLUGINS_ENV

    pm, _ = manager_and_registry(warn=False)
    for name, plugin in sorted(pm.list_name_plugin(), key=lambda p: p[0]):
        if plugin is None:  # blocked by TOKENFLOW_LOAD_PLUGINS
            click.echo(f"{name}  [blocked by {LOAD_PLUGINS_ENV}]")
            continue
        dist = pm.distributions.get(name, ("tokenflow (core)", __version__))
        hooks = sorted(h.name for h in pm.get_hookcallers(plugin) or [])
        click.echo(f"{name}  [{dist[0]} {dist[1]}]  hooks: {', '.join(hooks)}")
    for name, message in sorted(pm.failures.items()):
        click.echo(f"{name}  [FAILED] {message}")
    if pm.failures:
        raise click.ClickException(f"{len(pm.failures)} plugin(s) failed to import (listed above)")



def _state() -> dict:
    try:
        return fresh_plugin_state()
    except PluginEnvError as exc:
        raise click.ClickException(str(exc)) from None


def _pip(args: list[str], quiet: bool) -> None:
    try:
        pip(args, quiet)
    except PluginEnvError as exc:
        raise click.ClickException(str(exc)) from None


@cli.command()
@click.argument("target")
@click.option("-e", "--editable", is_flag=True, help="Install a local project in editable mode.")
@click.option("-U", "--upgrade", is_flag=True, help="Upgrade if already installed.")
@click.option("--quiet", "-q", is_flag=True, help="Less pip output.")
def install(target, editable, upgrade, quiet) -> None:
    """Install a plugin distribution into this environment with pip.

    TARGET is a local project directory, a wheel or sdist file, or a requirement (a name with an
    optional version, from your package index). After pip, the new plugins are imported and
    their stages listed; a plugin that fails to import is reported (and stays installed, so
    that `tf uninstall` can remove it).
    """
    path = Path(target).expanduser()
    looks_like_path = path.exists() or target.startswith((".", "/", "~")) or os.sep in target
    if looks_like_path and not path.exists():
        raise click.ClickException(f"{target} does not exist")
    if editable and not path.is_dir():
        raise click.UsageError("--editable needs a local project directory")
    before = _state()["dists"]
    args = ["install"] + (["--upgrade"] if upgrade else [])
    args += ["-e", str(path.resolve())] if editable else [str(path.resolve()) if path.exists() else target]
    _pip(args, quiet)
    state = _state()
    after = state["dists"]
    changed = {n: v for n, v in after.items() if before.get(n) != v and v[1]}
    if not changed:
        wanted = _norm(target_name(target, path) or "")
        if after.get(wanted, ("", []))[1]:
            click.echo(f"{wanted} {after[wanted][0]} is already installed (--upgrade to update)",
                       err=True)
            return
        raise click.ClickException("pip installed nothing that provides tokenflow plugins (no "
                                   "entry points in the 'tokenflow' group); `pip uninstall` "
                                   "removes what it did install")
    failed = False
    for dist, (version, eps) in sorted(changed.items()):
        stages_of = [stage for stage, owner in state["stages"].items() if owner in eps]
        click.echo(f"installed {dist} {version}: plugins {', '.join(eps)}"
                   + (f"; stages: {', '.join(stages_of)}" if stages_of else ""))
        for ep in eps:
            if ep in state["failures"]:
                failed = True
                click.echo(f"error: {state['failures'][ep]} (tf uninstall {dist} removes it)",
                           err=True)
            elif ep in state["blocked"]:
                click.echo(f"note: {ep} is not loaded: TOKENFLOW_LOAD_PLUGINS does not list {dist}",
                           err=True)
    if state["error"]:
        failed = True
        click.echo(f"error: {state['error']}", err=True)
    if failed:
        raise SystemExit(1)


@cli.command()
@click.argument("name")
@click.option("--quiet", "-q", is_flag=True, help="Less pip output.")
def uninstall(name, quiet) -> None:
    """Remove the plugin distribution NAME from this environment with pip.

    Only distributions that provide tokenflow plugins are removed; tokenflow itself and other
    packages are refused (use pip for those).
    """
    dist = _norm(name)
    if dist == BUILTIN_DISTRIBUTION:
        raise click.ClickException("tf uninstall removes plugins, not tokenflow itself "
                                   "(pip uninstall tokenflow does that)")
    installed = plugin_distributions()
    if dist not in installed:
        plugins = sorted(n for n, (_, eps) in installed.items() if eps and n != BUILTIN_DISTRIBUTION)
        raise click.ClickException(f"{name} is not installed; installed plugin distributions: "
                                   f"{', '.join(plugins) or 'none'}")
    version, eps = installed[dist]
    if not eps:
        raise click.ClickException(f"{name} provides no tokenflow plugins; tf uninstall only "
                                   "removes plugin distributions (use pip for others)")
    _pip(["uninstall", "--yes", name], quiet)
    if dist in _state()["dists"]:
        raise click.ClickException(f"{name} is still installed after pip uninstall")
    click.echo(f"uninstalled {dist} {version}: plugins {', '.join(eps)}")


def _suggestions(model: str | None) -> tuple[dict | None, list[str]]:
    """The parameters ``model`` suggests (its ``tokenflow.json``; None without ``--model``) and
    notes on them, read from its files."""
    from tokenflow.models.checkpoints import ModelError, read_checkpoint

    if model is None:
        return None, []
    embedded = model == "embedded" and not Path(model).is_dir()
    try:
        checkpoint = read_checkpoint(None if embedded else model)
    except ModelError as exc:
        raise click.UsageError(f"--model: {exc}") from None
    if checkpoint is None:
        return {}, [f"{model} is not on this machine (a Hub model not in the local cache): "
                    "no suggestions read, tokenflow's defaults shown"]
    n = len(checkpoint.defaults)
    return checkpoint.defaults, [f"model {checkpoint.model_id}: its tokenflow.json suggests {n} "
                                 f"parameter{'s' * (n != 1)}; a run's flags, -o and what other "
                                 "stages need override them (tf run --dry-run shows a run's)"]


@cli.command()
@click.option("--json", "as_json", is_flag=True)
@click.option("--model", default=None, metavar="M",
              help="Show the values a run on model M uses: its suggested parameters (the "
                   "checkpoint's tokenflow.json) applied, with where each value comes from "
                   "(default or model); 'embedded' is the embedded model. Nothing is loaded.")
def stages(as_json, model) -> None:
    """List installed stages by kind, with their parameters, and the control extractors.

    The defaults listed are the stages' own; a model may suggest others in its tokenflow.json
    (the embedded model does), and a run on it uses those: --model M shows them.
    """
    from tokenflow.editing.controls import control_extractors
    from tokenflow.eval.scoring import collect_scorers
    from tokenflow.plan import suggested

    pm, registry = manager_and_registry()
    defaults, notes = _suggestions(model)
    used: set[str] = set()
    doc = {}
    for kind in KINDS:
        doc[kind] = []
        for name, cls in sorted(registry.stages[kind].items()):
            fields = {p: {"type": type_label(h), "default": d}
                      for p, (h, d) in param_fields(cls.Params).items()}
            if defaults is not None:
                given = suggested(defaults, kind, cls)
                used.update(key for key in defaults for p in given
                            if key in (f"{kind}.{p}", f"{name}.{p}"))
                for p, info in fields.items():
                    info.update(value=given.get(p, info["default"]),
                                source="model" if p in given else "default")
            doc[kind].append({"name": name, "version": cls.version, "plugin": registry.owner(kind, name),
                              "summary": getattr(cls, "summary", ""), "params": fields})
    if defaults is not None:
        notes += [f"the model suggests {key}, which no installed stage has"
                  for key in defaults if key not in used]
        doc["model"] = {"model": model, "suggestions": defaults, "notes": notes}
    try:
        extractors = control_extractors(pm)
    except StageError as exc:
        raise click.ClickException(str(exc)) from None
    doc["control_extractors"] = [{"name": e.name, "version": e.version, "plugin": e.owner}
                                 for _, e in sorted(extractors.items())]
    try:
        classes, owners = collect_scorers(pm)
    except StageError as exc:
        raise click.ClickException(str(exc)) from None
    doc["scorers"] = [{"name": n, "version": getattr(c, "version", 1), "plugin": owners[n],
                       "summary": getattr(c, "summary", "")} for n, c in sorted(classes.items())]
    if as_json:
        click.echo(json.dumps(doc, indent=2, default=str))
        return
    for note in notes:
        click.echo(f"note: {note}", err=True)
    for kind in KINDS:
        click.echo(f"{kind}:")
        for item in doc[kind]:
            click.echo(f"  {item['name']} (v{item['version']}, {item['plugin']}): {item['summary']}")
            for p, info in item["params"].items():
                if "source" not in info:
                    click.echo(f"      {p}: {info['type']} = {info['default']!r}")
                elif info["source"] == "model":
                    click.echo(f"      {p}: {info['type']} = {info['value']!r}  (model; "
                               f"default {info['default']!r})")
                else:
                    click.echo(f"      {p}: {info['type']} = {info['value']!r}  (default)")
    click.echo("control extractors (-o control NAME):")
    for item in doc["control_extractors"]:
        click.echo(f"  {item['name']} (v{item['version']}, {item['plugin']})")
    click.echo("scorers (tf eval / tf compare --scorer NAME):")
    for item in doc["scorers"]:
        click.echo(f"  {item['name']} (v{item['version']}, {item['plugin']}): {item['summary']}")

