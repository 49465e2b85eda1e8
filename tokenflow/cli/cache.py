"""``tf cache ls|rm|verify``: inspect and clean the stage cache."""

from __future__ import annotations

import json

import click

from tokenflow.api import EditError, cache_root, human_bytes
from tokenflow.cache.store import StageCache
from tokenflow.cli.app import cli


def _store(cache_dir) -> StageCache:
    try:
        return StageCache(cache_root(cache_dir))
    except EditError as exc:  # the directory is a file
        raise click.ClickException(str(exc)) from None


@cli.group()
def cache() -> None:
    """Inspect or clean the stage cache."""


@cache.command("ls")
@click.option("--cache-dir", default=None)
@click.option("--json", "as_json", is_flag=True)
def cache_ls(cache_dir, as_json) -> None:
    """List complete cache entries: kind, name, key, size, params."""
    entries = _store(cache_dir).entries()
    if as_json:
        click.echo(json.dumps([{"kind": e.kind, "name": e.name, "key": e.key, "size": e.size,
                                "path": str(e.path), "params": e.params} for e in entries], indent=2))
        return
    for e in entries:
        params = json.dumps(e.params, sort_keys=True)
        click.echo(f"{e.kind:<15}{e.name:<12}{e.key[:16]}  {human_bytes(e.size):>9}  {params}")
    click.echo(f"{len(entries)} entries, {human_bytes(sum(e.size for e in entries))}", err=True)


@cache.command("rm")
@click.argument("key", required=False)
@click.option("--all", "remove_all", is_flag=True, help="Remove every entry.")
@click.option("--cache-dir", default=None)
def cache_rm(key, remove_all, cache_dir) -> None:
    """Remove the entries whose key starts with KEY, or all of them."""
    store = _store(cache_dir)
    if remove_all == bool(key):
        raise click.UsageError("give a KEY (at least 4 characters) or --all")
    try:
        gone = store.clear() if remove_all else store.remove(key)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    if key and not gone:
        raise click.ClickException(f"no cache entry has a key starting with {key!r}")
    for e in gone:
        click.echo(f"removed {e.kind}/{e.name} {e.key[:16]}")


@cache.command("verify")
@click.option("--cache-dir", default=None)
@click.option("--remove", is_flag=True, help="Delete the broken stores (not a live run's partial store).")
def cache_verify(cache_dir, remove) -> None:
    """Check every cache entry: completeness marker, files against their stored sha256, arrays
    readable. Partial stores of interrupted runs are listed too (rerunning resumes them)."""
    store = _store(cache_dir)
    total = len(store.entries())
    problems = store.verify(remove=remove)
    partial = [(p, why) for p, why in problems if why.startswith("partial")]
    broken = [(p, why) for p, why in problems if not why.startswith("partial")]
    for path, why in partial:
        click.echo(f"partial  {path}: {why}")
    for path, why in broken:
        click.echo(f"{'removed' if remove else 'BROKEN'}  {path}: {why}")
    complete_broken = sum(not p.name.startswith(".") for p, _ in broken)
    click.echo(f"{total - complete_broken} of {total} entries intact; {len(broken)} broken"
               f"{' and removed' if remove and broken else ''}; {len(partial)} partial", err=True)
    if broken and not remove:
        raise SystemExit(1)

