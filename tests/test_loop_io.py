"""The I/O around the UNet: ``tokenflow.BackgroundWriter`` (writes in order, bounded, errors
re-raised), the editing loop's UNet groups (``EditRun.call_groups``), and what the loop reads."""

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


def test_propagation_calls_read_no_source_queries_or_keys(tf_plugin_manager, tf_tiny_model,
                                                          tmp_path, monkeypatch) -> None:
    """Only the keyframe call injects queries and keys, so only it reads the source tokens (with
    ``store_tokens false`` each read is a source UNet pass): at most K frames per step, in the
    first ``int(pnp_attn_t * steps)`` steps."""
    from tokenflow import FeatureReader
    from tokenflow.testing import make_job, synthetic_frames

    reads: list[tuple[int, int]] = []
    original = FeatureReader.tokens

    def counting(self, step, layer, frames):
        reads.append((step, len(list(frames))))
        return original(self, step, layer, frames)

    job = make_job(tf_plugin_manager, tf_tiny_model, synthetic_frames(6, 64, 64), cache=tmp_path,
                   steps=4, batch_size=3, params={"inversion": {"inversion_steps": 4}},
                   until="correspondence")
    job.run()  # the upstream stores (the correspondence stage reads every frame's tokens)
    monkeypatch.setattr(FeatureReader, "tokens", counting)
    make_job(tf_plugin_manager, tf_tiny_model, synthetic_frames(6, 64, 64), cache=tmp_path,
             steps=4, batch_size=3, params={"inversion": {"inversion_steps": 4}},
             options=[("editor.pnp_attn_t", "0.5")]).run()
    assert reads and {step for step, _ in reads} == {0, 1}  # int(0.5 * 4) steps
    assert all(count == 2 for _, count in reads)  # the K = 2 keyframes, never a chunk


def test_the_loops_label_says_whether_frames_are_propagated_or_edited_alone() -> None:
    from types import SimpleNamespace

    from tokenflow.editing.loop import loop_label

    blender = SimpleNamespace(name="tokenflow")
    assert loop_label(SimpleNamespace(name="pnp", propagates=True), blender) == \
        "edit (pnp + tokenflow)"
    assert loop_label(SimpleNamespace(name="pnp-frames", propagates=False), blender) == \
        "edit (pnp-frames, every frame edited alone)"


def test_a_finished_bar_stays_at_100_percent(capsys) -> None:
    """Bars are left on screen when done, at their total (tqdm redraws only every 0.1 s, so a
    bar cleared on close could show 792/800 as its last state)."""
    import numpy as np

    from tokenflow.stages import RunConfig, StageContext

    ctx = StageContext(model=None, frames=np.zeros((1, 8, 8, 3), np.uint8), config=RunConfig())
    with ctx.bar(800, "correspondence") as bar:
        for _ in range(800):
            bar.update(1)
    last = capsys.readouterr().err.replace("\r", "\n").strip().splitlines()[-1]
    assert last.startswith("correspondence: 100%") and "800/800" in last, last
    quiet = StageContext(model=None, frames=np.zeros((1, 8, 8, 3), np.uint8), config=RunConfig(),
                         quiet=True)
    with quiet.bar(3, "quiet") as bar:
        bar.update(3)
    assert capsys.readouterr().err == ""
