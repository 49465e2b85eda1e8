"""Content keys of checkpoints: sha256 of weight, config and tokenizer files, memoised per file
in ``~/.cache/tokenflow/filehash.json`` (directory: ``TOKENFLOW_HASH_CACHE``) by path, size and
modification time."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tokenflow.models.checkpoints import WEIGHTS

if TYPE_CHECKING:  # pragma: no cover
    import torch


def _write_memo(path: Path, memo: dict[str, Any]) -> None:
    """Atomically replace the memo file (temp file + ``os.replace``); failures only cost a re-hash later."""
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".filehash-", suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump({p: e for p, e in memo.items() if os.path.exists(p)}, fh)  # drop vanished files
        os.replace(tmp, path)
    except OSError:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


def file_digests(files: list[Path]) -> list[str]:
    """sha256 of each file, memoised in ``filehash.json`` by (absolute path, size, mtime_ns)."""
    memo_path = Path(os.environ.get("TOKENFLOW_HASH_CACHE") or Path.home() / ".cache" / "tokenflow") / "filehash.json"
    try:
        memo = json.loads(memo_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        memo = {}  # missing or corrupt: start afresh
    memo = memo if isinstance(memo, dict) else {}
    changed = False
    digests = []
    for file in files:
        st = file.stat()
        entry = memo.get(str(file.absolute()))
        if isinstance(entry, dict) and entry.get("size") == st.st_size and entry.get("mtime_ns") == st.st_mtime_ns:
            digests.append(str(entry.get("sha256")))
            continue
        h = hashlib.sha256()
        with open(file, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        digests.append(h.hexdigest())
        memo[str(file.absolute())] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": digests[-1]}
        changed = True
    if changed:
        _write_memo(memo_path, memo)
    return digests


def directory_key(root: Path, dtype: torch.dtype) -> str:
    """Key of a checkpoint directory: weights, component configs, tokenizer and scheduler files, and dtype.

    The weights are hashed as files: nothing is loaded into torch (``dtype`` only names itself)."""
    files = [f for sub, stem in WEIGHTS for pattern in (f"{stem}.safetensors", f"{stem}-*-of-*.safetensors")
             for f in (root / sub).glob(pattern)]
    files += [root / sub / "config.json" for sub, _ in WEIGHTS]
    files += [f for sub in ("tokenizer", "scheduler") for f in (root / sub).glob("*") if f.is_file()]
    files = sorted(files, key=lambda f: f.relative_to(root).as_posix())
    h = hashlib.sha256(b"tokenflow-model-key-v1\n")
    for file, digest in zip(files, file_digests(files)):
        h.update(f"{file.relative_to(root).as_posix()}\0{digest}\n".encode())
    h.update(str(dtype).encode())
    return h.hexdigest()
