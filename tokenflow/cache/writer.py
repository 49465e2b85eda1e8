"""Writing stores in the background: compression and disk writes of one unit of work overlap the
UNet computing the next (the UNet runs on one core or a GPU; a store write mostly waits on zstd
and the file system, which release the GIL)."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any


class BackgroundWriter:
    """One writer thread, in order. ``submit(fn, *args)`` queues a write (``fn`` should only
    write arrays already computed, and mark progress after them, so a crash never marks a unit
    that is not on disk); at most ``pending`` writes wait, so memory stays bounded. Leaving the
    ``with`` block waits for every write; the first write that failed re-raises there (or at the
    next ``submit``)."""

    def __init__(self, pending: int = 2) -> None:
        self.pending = max(1, pending)
        self._pool: ThreadPoolExecutor | None = None
        self._futures: list[Future] = []

    def __enter__(self) -> BackgroundWriter:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tokenflow-writer")
        return self

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        assert self._pool is not None, "use BackgroundWriter in a with block"
        self._futures.append(self._pool.submit(fn, *args))
        while len(self._futures) > self.pending:  # back-pressure: wait for the oldest
            self._futures.pop(0).result()
        for done in [f for f in self._futures if f.done()]:
            self._futures.remove(done)
            done.result()

    def __exit__(self, exc_type, exc, tb) -> None:
        pool, self._pool = self._pool, None
        try:
            for future in self._futures:
                if exc_type is None:
                    future.result()
                else:  # already failing: let queued writes finish, keep the first error
                    future.exception()
        finally:
            self._futures = []
            if pool is not None:
                pool.shutdown(wait=True)
