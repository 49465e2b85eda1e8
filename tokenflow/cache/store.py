"""Zarr v3 stores of the stage cache: atomic writing, lookup, listing and removal.

An entry lives at ``<root>/<kind>/<name>-<key[:16]>.zarr``. It is written into a hidden
temporary sibling, marked complete in the root attributes, then renamed into place with
``os.replace``; a directory at the final path is therefore always complete, and a temporary one
is never read.
"""

from __future__ import annotations

import os
import re
import shutil
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from .keys import _plain

META = "tokenflow"
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_name(text: str) -> str:
    """A file-name-safe version of a stage name (no separators, no leading dots)."""
    return _SAFE.sub("_", text).lstrip(".") or "_"


@dataclass(frozen=True)
class CacheEntry:
    kind: str
    name: str
    key: str
    path: Path
    size: int
    params: dict
    created: float


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
) -> zarr.Array:
    """An array with ``dimension_names`` (what xarray reads as dims); data written if given."""
    if data is not None:
        data = np.asarray(data)
        shape, dtype = data.shape, data.dtype
    if len(dims) != len(shape):
        raise ValueError(f"{name}: {len(dims)} dims for shape {tuple(shape)}")
    chunks = tuple(max(1, min(c, s)) for c, s in zip(chunks or shape, shape))
    arr = group.create_array(
        name, shape=tuple(shape), dtype=dtype, chunks=chunks, dimension_names=list(dims)
    )
    if data is not None:
        arr[...] = data
    return arr


def write_coord(group: zarr.Group, dim: str, values: Sequence[Any]) -> zarr.Array:
    """A 1-D coordinate array named after its dimension (strings stored as variable-length)."""
    values = list(values)
    if values and isinstance(values[0], str):
        arr = group.create_array(dim, shape=(len(values),), dtype=str, dimension_names=[dim])
        arr[...] = np.array(values, dtype=object)
        return arr
    return create_array(group, dim, dims=[dim], data=np.asarray(values))


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

    @contextmanager
    def writer(
        self, kind: str, name: str, key: str, *, params: Any = None, version: int = 1
    ) -> Iterator[zarr.Group]:
        """Yield a fresh Zarr group; on normal exit it becomes the complete entry for ``key``.

        On an exception the temporary store is deleted and nothing at the final path changes.
        """
        final = self.path(kind, name, key)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.with_name(f".{final.stem}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}.zarr")
        try:
            group = zarr.open_group(str(tmp), mode="w", zarr_format=3)
            yield group
            group.attrs[META] = {
                "complete": True,
                "kind": kind,
                "name": name,
                "key": key,
                "version": version,
                "params": _plain(params) if params is not None else {},
                "created": time.time(),
            }
            if final.exists():
                meta = self.meta(final)
                if meta is not None and meta.get("key") == key:  # someone finished it first
                    shutil.rmtree(tmp, ignore_errors=True)
                    return
                shutil.rmtree(final)  # partial, or another key sharing the 16-char prefix
            os.replace(tmp, final)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

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
                    )
                )
        return sorted(out, key=lambda e: e.created)

    def remove(self, key_prefix: str) -> list[CacheEntry]:
        """Remove the entries whose key starts with ``key_prefix`` (at least 4 characters)."""
        if len(key_prefix) < 4:
            raise ValueError("give at least 4 characters of the key")
        gone = [e for e in self.entries() if e.key.startswith(key_prefix.lower())]
        for entry in gone:
            shutil.rmtree(entry.path)
        return gone

    def clear(self) -> list[CacheEntry]:
        """Remove every entry and every leftover temporary store; README files stay."""
        gone = self.entries()
        for entry in gone:
            shutil.rmtree(entry.path)
        if self.root.is_dir():
            for leftover in self.root.glob("*/.*.tmp-*.zarr"):
                shutil.rmtree(leftover, ignore_errors=True)
        return gone
