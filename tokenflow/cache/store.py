"""Zarr v3 stores of the stage cache: atomic writing, lookup, listing and removal.

An entry lives at ``<root>/<kind>/<name>-<key[:16]>.zarr``. It is written into a hidden
temporary sibling, marked complete in the root attributes, then renamed into place with
``os.replace``; a directory at the final path is therefore always complete, and a temporary one
is never read.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
import uuid
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from tokenflow.cache.keys import _plain

META = "tokenflow"
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_name(text: str) -> str:
    """A file-name-safe version of a stage name (no separators, no leading dots)."""
    return _SAFE.sub("_", text).lstrip(".") or "_"


def video_name(video: str | os.PathLike) -> str | None:
    """The file (or frame folder) name of a video path, as cache entries record it."""
    return Path(str(video).rstrip("/\\")).name or None


@dataclass(frozen=True)
class CacheEntry:
    kind: str
    name: str
    key: str
    path: Path
    size: int
    params: dict
    created: float
    #: The file name of the video the entry was computed from (None for entries written before
    #: tokenflow recorded it, or by a run given frames rather than a file).
    video: str | None = None


def select(entries: Sequence[CacheEntry], *, key: str | None = None, kind: str | None = None,
           video: str | None = None) -> list[CacheEntry]:
    """The entries matching every selector given: ``key`` a prefix of the key (at least 4
    characters, any case), ``kind`` the stage kind, ``video`` the recorded file name of the
    source video (a path selects by its file name)."""
    if key is not None and len(key) < 4:
        raise ValueError("give at least 4 characters of the key")
    name = video_name(video) if video is not None else None
    return [e for e in entries
            if (key is None or e.key.startswith(key.lower()))
            and (kind is None or e.kind == kind)
            and (name is None or e.video == name)]


def dir_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def create_array(
    group: zarr.Group,
    name: str,
    *,
    dims: Sequence[str],
    shape: Sequence[int] | None = None,
    dtype: Any = None,
    data: np.ndarray | None = None,
    chunks: Sequence[int] | None = None,
    filters: Sequence[Any] | None = None,
    compressors: Sequence[Any] | None = None,
) -> zarr.Array:
    """An array with ``dimension_names`` (what xarray reads as dims); data written if given.
    ``filters``/``compressors``: zarr codecs (default: zarr's, zstd)."""
    if data is not None:
        data = np.asarray(data)
        shape, dtype = data.shape, data.dtype
    if len(dims) != len(shape):
        raise ValueError(f"{name}: {len(dims)} dims for shape {tuple(shape)}")
    chunks = tuple(max(1, min(c, s)) for c, s in zip(chunks or shape, shape))
    if name in group:  # a resumed store: keep what an interrupted run already wrote
        old = group[name]
        if (isinstance(old, zarr.Array) and old.shape == tuple(shape)
                and np.dtype(old.dtype) == np.dtype(dtype) and old.chunks == chunks
                and tuple(old.metadata.dimension_names or ()) == tuple(dims)):
            if data is not None:
                old[...] = data
            return old
        del group[name]
    codecs = {k: list(v) for k, v in (("filters", filters), ("compressors", compressors))
              if v is not None}
    arr = group.create_array(
        name, shape=tuple(shape), dtype=dtype, chunks=chunks, dimension_names=list(dims), **codecs
    )
    if data is not None:
        arr[...] = data
    return arr


def write_coord(group: zarr.Group, dim: str, values: Sequence[Any]) -> zarr.Array:
    """A 1-D coordinate array named after its dimension (strings stored as variable-length)."""
    values = list(values)
    if values and isinstance(values[0], str):
        if dim in group:
            del group[dim]
        arr = group.create_array(dim, shape=(len(values),), dtype=str, dimension_names=[dim])
        arr[...] = np.array(values, dtype=object)
        return arr
    return create_array(group, dim, dims=[dim], data=np.asarray(values))


#: The child group whose attributes list the sha256 of every other file of a complete store.
MANIFEST = "tokenflow_manifest"


def consolidate(path: Path) -> None:
    """Write the consolidated metadata of the store at ``path`` (every group's and array's
    metadata copied into the root's ``zarr.json``): xarray then opens it in one read and without
    its warning about stores that lack it. zarr's notices that consolidated metadata and
    numcodecs' codecs are not in the zarr v3 specification are silenced (both are zarr-python's
    own, and xarray reads them)."""
    from tokenflow.cache.quantized import quiet_numcodecs

    with warnings.catch_warnings():
        quiet_numcodecs()
        warnings.filterwarnings("ignore", message="Consolidated metadata is currently not part")
        zarr.consolidate_metadata(str(path))


def _write_json_atomic(path: Path, doc: Any) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_text(json.dumps(doc))
    os.replace(tmp, path)


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _files(path: Path) -> list[Path]:
    """Every file of a store but its manifest's."""
    return [f for f in sorted(path.rglob("*"))
            if f.is_file() and f.relative_to(path).parts[0] != MANIFEST]


def manifest(path: Path) -> dict[str, str]:
    """sha256 of every file of a store but the manifest's own, by relative path."""
    return {f.relative_to(path).as_posix(): _file_sha256(f) for f in _files(path)}


class Progress:
    """What an interrupted computation of one entry already finished, kept in the partial
    store (``progress.json``, replaced atomically) so that a rerun resumes after it.

    A stage marks units of work (``mark("t3:f8", "t4:f8")``) only after their results are
    written; ``done(tag)`` tells a resumed run to skip one. ``state`` holds small JSON values
    (counters). The entry's lock makes this the file's only writer, so the write-aside copies a
    killed run left behind are removed here.
    """

    def __init__(self, path: Path | None, key: str) -> None:
        self.path, self.key = path, key
        self.tags: set[str] = set()
        self.state: dict[str, Any] = {}
        if path is not None:
            for stale in path.parent.glob(f".{path.name}.*.tmp"):
                stale.unlink(missing_ok=True)
        if path is not None:
            self.tags, self.state = self.read(path, key)

    @staticmethod
    def read(path: Path, key: str) -> tuple[set[str], dict[str, Any]]:
        """The units marked done and the state in the progress file at ``path``, if it is
        ``key``'s (else nothing). Only reads: safe while another process writes it."""
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError):
            return set(), {}
        if not isinstance(doc, dict) or doc.get("key") != key:
            return set(), {}
        return set(doc.get("done", [])), dict(doc.get("state", {}))

    @property
    def resumed(self) -> bool:
        return bool(self.tags)

    def done(self, tag: str) -> bool:
        return tag in self.tags

    def mark(self, *tags: str, **state: Any) -> None:
        self.tags.update(tags)
        self.state.update(state)
        if self.path is not None:
            _write_json_atomic(self.path, {"key": self.key, "done": sorted(self.tags),
                                           "state": self.state})


class StageCache:
    """The cache rooted at ``root`` (created on first write)."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)

    def path(self, kind: str, name: str, key: str) -> Path:
        return self.root / safe_name(kind) / f"{safe_name(name)}-{key[:16]}.zarr"

    @staticmethod
    def meta(path: Path) -> dict | None:
        """The completion metadata of an entry, or None if it is not a complete entry."""
        try:
            group = zarr.open_group(str(path), mode="r")
        except Exception:
            return None
        meta = group.attrs.get(META)
        if not isinstance(meta, dict) or meta.get("complete") is not True:
            return None
        return meta

    def lookup(self, kind: str, name: str, key: str) -> Path | None:
        """The path of the complete entry for ``key``, or None."""
        path = self.path(kind, name, key)
        if not path.is_dir():
            return None
        meta = self.meta(path)
        if meta is None or meta.get("key") != key:
            return None
        return path

    def open(self, path: Path) -> zarr.Group:
        return zarr.open_group(str(path), mode="r")

    def partial_path(self, kind: str, name: str, key: str) -> Path:
        final = self.path(kind, name, key)
        return final.with_name(f".{final.stem}.partial.zarr")

    def partial_units(self, kind: str, name: str, key: str) -> int:
        """Units of work an interrupted run of this entry finished (0: nothing to resume). Reads
        the progress file only; safe while another process holds the entry's lock."""
        partial = self.partial_path(kind, name, key)
        if not partial.is_dir():
            return 0
        return len(Progress.read(self.progress_path(partial), key)[0])

    @staticmethod
    def progress_path(partial: Path) -> Path:
        """Beside the partial store (a file inside it would not be part of the Zarr hierarchy)."""
        return partial.with_name(partial.name.removesuffix(".zarr") + ".progress.json")

    @contextmanager
    def lock(self, kind: str, name: str, key: str, *, on_wait=None) -> Iterator[None]:
        """Hold the lock of one entry (an OS file lock, released when its holder exits or dies).

        Only the holder computes the entry or touches its partial store; another process asking
        for the same entry waits (``on_wait()`` is called once if it has to), then finds it
        complete. Different entries never wait for each other.
        """
        import fcntl

        final = self.path(kind, name, key)
        final.parent.mkdir(parents=True, exist_ok=True)
        lock_path = final.with_name(f".{final.stem}.lock")
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if on_wait is not None:
                    on_wait()
                fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    @contextmanager
    def writer(
        self, kind: str, name: str, key: str, *, params: Any = None, version: int = 1,
        resumable: bool = False, progress_out: list | None = None, video: str | None = None,
    ) -> Iterator[zarr.Group]:
        """Yield a Zarr group; on normal exit it becomes the complete entry for ``key``.

        The group is written aside and renamed into place when complete, with its consolidated
        metadata (:func:`consolidate`) and a manifest of its files' sha256 (``tf cache verify``
        checks it); ``video`` (the source video's file name) is recorded beside the parameters.
        On an exception the store is deleted and nothing at the final path changes. With
        ``resumable`` (the caller holds the entry's :meth:`lock`) the store is the entry's
        partial store, kept when the run is interrupted (Ctrl-C, a kill, a crash) and reopened
        by the next run; the :class:`Progress` appended to ``progress_out`` says what it already
        holds.
        """
        final = self.path(kind, name, key)
        final.parent.mkdir(parents=True, exist_ok=True)
        if resumable:
            tmp = self.partial_path(kind, name, key)
            progress = Progress(self.progress_path(tmp), key)
            if not progress.resumed and tmp.exists():
                shutil.rmtree(tmp)  # a partial store of nothing finished, or of another key
            mode = "a" if progress.resumed else "w"
        else:
            tmp = final.with_name(f".{final.stem}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}.zarr")
            progress = Progress(None, key)
            mode = "w"
        keep_partial = False
        try:
            # never through consolidated metadata: a resumed store may hold a stale copy
            group = zarr.open_group(str(tmp), mode=mode, zarr_format=3, use_consolidated=False)
            if progress_out is not None:
                progress_out.append(progress)
            yield group
            group.attrs[META] = {
                "complete": True,
                "kind": kind,
                "name": name,
                "key": key,
                "version": version,
                "params": _plain(params) if params is not None else {},
                "created": time.time(),
                "video": video,
            }
            if MANIFEST in group:  # from a run killed between its manifest and the rename
                del group[MANIFEST]
            consolidate(tmp)  # the manifest stays out of it: it hashes the root's zarr.json
            group.create_group(MANIFEST).attrs.update({"key": key, "files": manifest(tmp)})
            if final.exists():
                meta = self.meta(final)
                if meta is not None and meta.get("key") == key:  # someone finished it first
                    shutil.rmtree(tmp, ignore_errors=True)
                    return
                shutil.rmtree(final)  # partial, or another key sharing the 16-char prefix
            os.replace(tmp, final)
            if resumable:
                self.progress_path(tmp).unlink(missing_ok=True)
        except (KeyboardInterrupt, SystemExit):
            keep_partial = resumable  # resume after Ctrl-C; a kill keeps it anyway
            raise
        finally:
            if not keep_partial:
                if tmp.exists():
                    shutil.rmtree(tmp, ignore_errors=True)
                if resumable:
                    self.progress_path(tmp).unlink(missing_ok=True)

    def entries(self) -> list[CacheEntry]:
        """Every complete entry, oldest first."""
        out = []
        if not self.root.is_dir():
            return out
        for kind_dir in sorted(p for p in self.root.iterdir() if p.is_dir()):
            for path in sorted(kind_dir.glob("*.zarr")):
                if path.name.startswith("."):
                    continue
                meta = self.meta(path)
                if meta is None:
                    continue
                out.append(
                    CacheEntry(
                        kind=meta["kind"],
                        name=meta["name"],
                        key=meta["key"],
                        path=path,
                        size=dir_size(path),
                        params=meta.get("params", {}),
                        created=meta.get("created", 0.0),
                        video=meta.get("video"),
                    )
                )
        return sorted(out, key=lambda e: e.created)

    @staticmethod
    def discard(entries: Sequence[CacheEntry]) -> list[CacheEntry]:
        """Delete the stores of ``entries``; returns them."""
        for entry in entries:
            shutil.rmtree(entry.path)
        return list(entries)

    def remove(self, key_prefix: str) -> list[CacheEntry]:
        """Remove the entries whose key starts with ``key_prefix`` (at least 4 characters)."""
        return self.discard(select(self.entries(), key=key_prefix))

    def clear(self) -> list[CacheEntry]:
        """Remove every entry and every leftover temporary store; README files stay."""
        gone = self.discard(self.entries())
        if self.root.is_dir():
            for pattern in ("*/.*.tmp-*.zarr", "*/.*.partial.zarr"):
                for leftover in self.root.glob(pattern):
                    shutil.rmtree(leftover, ignore_errors=True)
            for leftover in self.root.glob("*/.*.partial.progress.json"):
                leftover.unlink(missing_ok=True)
        return gone

    def verify(self, *, remove: bool = False) -> list[tuple[Path, str]]:
        """Check every store under the root: complete entries against their manifest (files
        present, sha256 equal, arrays readable with their recorded shapes), partial stores
        reported as such. Returns ``(path, problem)`` for each broken or partial store;
        ``remove`` deletes the broken ones (partial stores of a live run are left alone: their
        lock is held)."""
        problems: list[tuple[Path, str]] = []
        if not self.root.is_dir():
            return problems
        for kind_dir in sorted(p for p in self.root.iterdir() if p.is_dir()):
            for path in sorted(kind_dir.glob("*.zarr")):  # hidden ones too: pathlib's * matches dots
                problem = self._check(path)
                if problem is None:
                    continue
                problems.append((path, problem))
                if remove and not (path.name.endswith(".partial.zarr") and self._locked(path)):
                    shutil.rmtree(path, ignore_errors=True)
                    self.progress_path(path).unlink(missing_ok=True)
        return problems

    @staticmethod
    def _locked(partial: Path) -> bool:
        import fcntl

        lock = partial.with_name(partial.name.removesuffix(".partial.zarr") + ".lock")
        if not lock.exists():
            return False
        fd = os.open(lock, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return False
        except BlockingIOError:
            return True
        finally:
            os.close(fd)

    def _check(self, path: Path) -> str | None:
        if path.name.endswith(".partial.zarr"):
            try:
                done = len(json.loads(self.progress_path(path).read_text()).get("done", []))
            except (OSError, ValueError):
                done = 0
            return f"partial (an interrupted run; {done} units of work done; rerunning resumes it)"
        if ".tmp-" in path.name:
            return "temporary store of a run that did not finish"
        meta = self.meta(path)
        if meta is None:
            return "no completeness marker"
        try:
            recorded = dict(zarr.open_group(str(path / MANIFEST), mode="r").attrs)
        except Exception:  # noqa: BLE001 - missing or unreadable alike
            return "no readable manifest (written by an older tokenflow?)"
        if recorded.get("key") != meta.get("key"):
            return "manifest of another entry"
        expected: dict[str, str] = recorded.get("files", {})
        actual = {f.relative_to(path).as_posix() for f in _files(path)}
        missing = sorted(set(expected) - actual)
        if missing:
            return f"{len(missing)} file(s) missing, e.g. {missing[0]}"
        extra = sorted(actual - set(expected))
        if extra:
            return f"{len(extra)} unexpected file(s), e.g. {extra[0]}"
        for rel, digest in expected.items():
            if _file_sha256(path / rel) != digest:
                return f"checksum mismatch in {rel}"
        try:
            group = zarr.open_group(str(path), mode="r")
            for name, node in group.members(max_depth=None):
                if name.startswith(MANIFEST):
                    continue
                if isinstance(node, zarr.Array) and node.size and node.size < 1 << 26:
                    node[(0,) * node.ndim]  # the first element decodes
        except Exception as exc:  # noqa: BLE001 - anything unreadable is broken
            return f"unreadable arrays ({type(exc).__name__}: {exc})"
        return None
