"""``tf cache ls|rm|verify``: inspect and clean the stage cache."""

from __future__ import annotations

import json
import time
from datetime import datetime

import click

from tokenflow.api import EditError, cache_root, human_bytes
from tokenflow.cache.store import CacheEntry, StageCache, select
from tokenflow.cli.app import cli
from tokenflow.stages import KINDS


def _store(cache_dir) -> StageCache:
    try:
        return StageCache(cache_root(cache_dir))
    except EditError as exc:  # the directory is a file
        raise click.ClickException(str(exc)) from None


@cli.group()
def cache() -> None:
    """Inspect or clean the stage cache."""


#: ``tf cache ls`` columns; the last (params) is not padded.
COLUMNS = ("KIND", "NAME", "KEY", "VIDEO", "COMPLETED", "SIZE", "PARAMS")
SORTS = ("date", "kind", "size", "video")


def _sorted(entries: list[CacheEntry], by: str) -> list[CacheEntry]:
    """``date``: oldest first (each run's entries together, the newest last); ``kind``: in
    pipeline order, then by date; ``size``: largest first; ``video``: by the source's name
    (entries without one last), then in pipeline order."""
    rank = {kind: i for i, kind in enumerate(KINDS)}

    def kind_key(e: CacheEntry) -> tuple:
        return rank.get(e.kind, len(KINDS)), e.kind, e.name, e.created

    keys = {"date": lambda e: e.created, "kind": kind_key, "size": lambda e: -e.size,
            "video": lambda e: (e.video is None, e.video or "", *kind_key(e))}
    return sorted(entries, key=keys[by])


def _completed(created: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(created)) if created else "-"


def _table(entries: list[CacheEntry]) -> list[str]:
    rows = [COLUMNS, *[(e.kind, e.name, e.key[:16], e.video or "-", _completed(e.created),
                        human_bytes(e.size), json.dumps(e.params, sort_keys=True))
                       for e in entries]]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS) - 1)]
    size = COLUMNS.index("SIZE")
    return ["  ".join([*(cell.rjust(w) if i == size else cell.ljust(w)
                         for i, (cell, w) in enumerate(zip(row, widths))), row[-1]]).rstrip()
            for row in rows]


@cache.command("ls")
@click.option("--cache-dir", default=None)
@click.option("--sort", "sort_by", type=click.Choice(SORTS), default="date", show_default=True,
              help="date: oldest first; kind: pipeline order; size: largest first; video: by "
                   "the source video's name.")
@click.option("--json", "as_json", is_flag=True, help="Every field of every entry, as JSON.")
def cache_ls(cache_dir, sort_by, as_json) -> None:
    """List complete cache entries: kind, name, key, source video (the file name; "-" for an
    entry of an earlier tokenflow, which did not record it), completion date, size and
    parameters."""
    entries = _sorted(_store(cache_dir).entries(), sort_by)
    if as_json:
        click.echo(json.dumps([{"kind": e.kind, "name": e.name, "key": e.key, "video": e.video,
                                "created": e.created,
                                "completed": (datetime.fromtimestamp(e.created).astimezone()
                                              .isoformat(timespec="seconds")
                                              if e.created else None),
                                "size": e.size, "path": str(e.path), "params": e.params}
                               for e in entries], indent=2))
        return
    if entries:
        click.echo("\n".join(_table(entries)))
    click.echo(f"{_entries(len(entries))}, {human_bytes(sum(e.size for e in entries))}", err=True)


def _entries(n: int) -> str:
    return f"{n} entry" if n == 1 else f"{n} entries"


def _selection(key, kind, video) -> str:
    parts = [f"a key starting with {key!r}" if key else "",
             f"kind {kind!r}" if kind else "", f"video {video!r}" if video else ""]
    return ", ".join(p for p in parts if p)


def _short(entries: list[CacheEntry], most: int = 3) -> str:
    named = [f"{e.kind}/{e.name} {e.key[:16]}" for e in entries[:most]]
    return ", ".join(named) + (f", ... ({len(entries) - most} more)" if len(entries) > most else "")


@cache.command("rm")
@click.argument("key", required=False)
@click.option("--kind", default=None, help="Remove every entry of this stage kind.")
@click.option("--video", default=None,
              help="Remove every entry computed from this video (its file name, or a path).")
@click.option("--all", "remove_all", is_flag=True, help="Remove every entry.")
@click.option("--cache-dir", default=None)
def cache_rm(key, kind, video, remove_all, cache_dir) -> None:
    """Remove the entry whose key starts with KEY, every entry of a --kind or of a --video
    (given together, an entry must match them all), or all of them; prints what it removed."""
    store = _store(cache_dir)
    if remove_all and (key or kind or video):
        raise click.UsageError("--all removes every entry: give it alone, or KEY/--kind/--video "
                               "without it")
    if not (remove_all or key or kind or video):
        raise click.UsageError("give a KEY (at least 4 characters), --kind KIND, --video NAME "
                               "or --all")
    if remove_all:
        gone = store.clear()
    else:
        entries = store.entries()
        if kind is not None and kind not in {*KINDS, *(e.kind for e in entries)}:
            raise click.UsageError(f"unknown kind {kind!r}; kinds: {', '.join(KINDS)}")
        try:
            chosen = select(entries, key=key, kind=kind, video=video)
        except ValueError as exc:
            raise click.UsageError(str(exc)) from None
        if not chosen:
            hint = ""
            unnamed = sum(e.video is None for e in entries)
            if video and unnamed:
                hint = (f" ({_entries(unnamed)} without a video name, written before tokenflow "
                        "recorded it: remove by KEY or --kind)")
            raise click.ClickException(f"no cache entry matches {_selection(key, kind, video)}"
                                       f"{hint}")
        if key and len(chosen) > 1:
            raise click.UsageError(f"key prefix {key!r} matches {_entries(len(chosen))} "
                                   f"({_short(chosen)}): give more characters, or --kind/--video "
                                   "as well")
        gone = store.discard(chosen)
    for e in gone:
        click.echo(f"removed {e.kind}/{e.name} {e.key[:16]}  {e.video or '-'}  "
                   f"{human_bytes(e.size)}")
    click.echo(f"{_entries(len(gone))} removed, {human_bytes(sum(e.size for e in gone))}", err=True)


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

