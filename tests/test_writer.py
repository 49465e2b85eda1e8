"""``tokenflow.BackgroundWriter``: writes in order, bounded, errors re-raised; and the editing
loop's UNet groups (``EditRun.call_groups``)."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import pytest

from tokenflow import BackgroundWriter, EditRun


def test_writes_run_in_order_on_another_thread_and_finish_before_the_block_ends() -> None:
    done: list[tuple[int, str]] = []
    with BackgroundWriter() as writer:
        for i in range(20):
            writer.submit(lambda i=i: (time.sleep(0.001), done.append((i, threading.current_thread().name))))
    assert [i for i, _ in done] == list(range(20))
    assert all(name.startswith("tokenflow-writer") for _, name in done)


def test_at_most_pending_writes_wait() -> None:
    gate = threading.Event()
    started: list[int] = []

    def slow(i: int) -> None:
        started.append(i)
        gate.wait(5)

    with BackgroundWriter(pending=2) as writer:
        writer.submit(slow, 0)
        writer.submit(slow, 1)
        blocked = threading.Thread(target=writer.submit, args=(slow, 2))
        blocked.start()
        time.sleep(0.05)
        assert blocked.is_alive()  # the third submit waits for the first write
        gate.set()
        blocked.join(5)
    assert started == [0, 1, 2]


def test_a_failed_write_is_raised_when_the_block_ends() -> None:
    def boom() -> None:
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"), BackgroundWriter() as writer:
        writer.submit(boom)


def test_an_error_in_the_block_is_not_hidden_by_queued_writes() -> None:
    done: list[int] = []
    with pytest.raises(KeyError, match="first"), BackgroundWriter() as writer:
        writer.submit(lambda: (time.sleep(0.01), done.append(1)))
        raise KeyError("first")
    assert done == [1]  # what was queued was still written


@pytest.mark.parametrize(("n", "batch", "unet_batch", "groups"), [
    (10, 4, 4, [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]),
    (10, 4, 8, [[0, 1, 2, 3, 4, 5, 6, 7], [8, 9]]),
    (10, 4, 6, [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]),  # whole chunks only
    (10, 4, 2, [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]),  # at least one chunk
    (10, 4, 32, [list(range(10))]),
])
def test_call_groups_are_whole_chunks_up_to_the_unet_batch(n, batch, unet_batch, groups) -> None:
    import torch

    ctx = SimpleNamespace(config=SimpleNamespace(batch_size=batch),
                          options={"unet_batch": unet_batch})
    run = EditRun(ctx=ctx, editor=None, blender=None, timesteps=[], scheduler=None,
                  features=None, correspondence=None, keyframes=None,
                  x0=torch.zeros(n, 4, 2, 2), x_max=None, t_max=0)
    assert run.call_groups() == groups
    assert sum(run.call_groups(), []) == list(range(n))
