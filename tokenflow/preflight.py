"""Checks before work, and sizing it: whether the frames fit in memory, whether the cache is
writable and has room, and how many frames one UNet call takes."""

from __future__ import annotations

import os
import shutil
from pathlib import Path


#: ``--cache-budget`` default: above this estimate a run says what it will write and what
#: shrinks it.
DEFAULT_CACHE_BUDGET = 16 * 2**30
#: What shrinks the cache, said when it does not fit or is over the budget.
SHRINK_HINT = ("-o features.store_tokens false keeps no tokens (recomputed when read), "
               "-o features.levels 8 stores them coarser, fewer --frames or --steps store less "
               "(see docs/cache.md)")


class EditError(Exception):
    """An edit could not be planned or run; the message is one line for the user. ``usage`` is
    True when the request itself is wrong (a size, a stage, a parameter), False when running it
    failed. The original exception, if any, is the ``__cause__``."""

    def __init__(self, message: str, *, usage: bool = False) -> None:
        super().__init__(message)
        self.usage = usage


def human_bytes(n: float) -> str:
    """``1.5 GiB``-style size, in binary units (as :func:`parse_bytes` reads them)."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def parse_bytes(text: str) -> int:
    """``"16G"``, ``"500MB"``, ``"2.5 GiB"`` or a number of bytes (binary units)."""
    import re

    m = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*([kmgt]?)(?:i?b)?\s*", str(text), re.IGNORECASE)
    if not m:
        raise ValueError(f"{text!r} is not a size (e.g. 16G, 500MB)")
    power = " kmgt".index(m.group(2).lower() or " ")
    return int(float(m.group(1)) * 1024 ** power)


def say(log, text: str) -> None:
    """Send a note line to ``log`` (a callable), if there is one."""
    if log is not None:
        log(text)


def _total_memory(device) -> tuple[int, str]:
    """Bytes of memory the run's device has, and what to call it."""
    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory, f"the GPU {device}"
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "this machine"
    except (AttributeError, OSError, ValueError):  # not a POSIX system: no check
        return 0, "this machine"


def check_memory(model, n: int, height: int, width: int, size) -> None:
    """Refuse a working size whose frames cannot fit in memory.

    A lower bound, never an overestimate: the resized frames (uint8), and one frame through the
    VAE's first block (its input and output, ``block_out_channels[0]`` channels at full size).
    """
    import torch

    frames = n * height * width * 3
    vae = 2 * model.vae.config.block_out_channels[0] * height * width
    vae *= torch.finfo(model.dtype).bits // 8
    need = frames + vae
    have, where = _total_memory(model.device)
    if have and need > have:
        given = f"--size {size}" if size else f"the video's size (native {model.native_size})"
        raise EditError(
            f"{given} makes {n} frames of {width}x{height}, which need at least "
            f"{human_bytes(need)} of memory ({human_bytes(frames)} for the frames, "
            f"{human_bytes(vae)} for the VAE on one frame) and {where} has {human_bytes(have)}; "
            f"use a smaller --size (the model's native size is {model.native_size}) or fewer "
            "--frames")


#: Off CUDA, ``unet_batch="auto"`` fits one UNet call's activations (per branch, by the upper
#: bound of :func:`frame_activation_bytes`) in this many bytes. Measured on 2 CPU cores
#: (docs/benchmarks.md, "Memory"): it gives 16 frames a call on issue 11's SD-2.1-shaped UNet at
#: 128x192, which keeps peak memory flat from 16 frames of video up at the same wall time as 32
#: (within 3 %), and whole videos of up to 64 frames on the embedded model at 64x64, whose calls
#: are so small that fewer, larger ones pay (24 frames a call: 39 s for the README's first
#: command, 57 s at 16).
CPU_CALL_BYTES = 640 << 20
#: ... and never more frames a call than this (a bound on a call's size for the smallest models;
#: on the SD-shaped UNet 64 frames a call were no faster than 32).
CPU_MAX_UNET_BATCH = 64


def frame_activation_bytes(model, latent_hw: tuple[int, int]) -> int:
    """An upper bound of one frame's activations in a UNet call: ``64 * latent_h * latent_w *
    sum(block_out_channels)`` values of the model's dtype (covers SD's UNet with its attention
    maps at every level)."""
    import torch

    return (64 * latent_hw[0] * latent_hw[1] * sum(model.unet.config.block_out_channels)
            * torch.finfo(model.dtype).bits // 8)


def auto_unet_batch(model, n_frames: int, batch_size: int, latent_hw: tuple[int, int]) -> int:
    """Frames per UNet call when the user gives none: whole chunks of ``batch_size``, as many as
    the device holds by :func:`frame_activation_bytes`: on CUDA half its free memory, elsewhere
    :data:`CPU_CALL_BYTES` (at most :data:`CPU_MAX_UNET_BATCH` frames). Never below one chunk,
    never above the video."""
    per_frame = max(1, frame_activation_bytes(model, latent_hw))
    if model.device.type == "cuda":
        import torch

        free, _ = torch.cuda.mem_get_info(model.device)
        frames = int(0.5 * free // per_frame)
    else:
        frames = min(CPU_MAX_UNET_BATCH, CPU_CALL_BYTES // per_frame)
    frames = min(max(frames, batch_size), max(n_frames, batch_size))
    return max(batch_size, frames // batch_size * batch_size)


def _free_bytes(path: Path) -> int:
    path = path.resolve()
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


def plan_line(job, pending: list[str], need: int) -> str:
    """One line on what a run will do with the cache: the stages it reuses, resumes (an
    interrupted run left their partial stores) and computes, and the ``need`` bytes it may
    write."""
    cache = job.base.cache
    folder = f"{cache.root}{os.sep}"
    reused = [k for k in job.stages if k not in pending]
    resumed = [k for k in pending
               if cache.partial_units(k, job.stages[k].name, job.keys[k]) > 0]
    fresh = [k for k in pending if k not in resumed]
    parts = []
    if not pending:
        return f"stage cache: every stage is cached ({', '.join(reused)}) in {folder}"
    if reused:
        parts.append(f"reusing {', '.join(reused)}")
    if resumed:
        parts.append(f"resuming {', '.join(resumed)} (left partly done by an interrupted run)")
    if fresh:
        parts.append(f"computing {', '.join(fresh)}")
    return f"stage cache: {'; '.join(parts)}; up to {human_bytes(need)} to write to {folder}"


def preflight(job, log: Log | None = None) -> None:
    """Before any work: every store to write must be writable, and the cache must have room."""
    root = job.base.cache.root
    pending = job.pending()
    for kind in pending:
        folder = root / kind
        try:
            folder.mkdir(parents=True, exist_ok=True)
            probe = folder / f".write-probe-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise EditError(f"the cache directory {folder} is not writable "
                            f"({exc.strerror or exc}); pass another --cache-dir") from None
    need = job.estimate_bytes() if pending else 0
    say(log, plan_line(job, pending, need))
    if not pending:
        return
    free = _free_bytes(root)
    if need > free:
        raise EditError(f"the cache needs about {human_bytes(need)} but only "
                        f"{human_bytes(free)} is free at {root}; {SHRINK_HINT}")
    budget = int(job.base.options.get("cache_budget", DEFAULT_CACHE_BUDGET))
    if need > budget:
        say(log, f"note: this run writes up to {human_bytes(need)} to the cache, over the "
                 f"--cache-budget of {human_bytes(budget)}; {SHRINK_HINT}")
