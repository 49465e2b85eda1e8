"""The training loop every phase of :mod:`tokenflow.embedded.train` shares: atomic safetensors
checkpoints of modules and optimiser, a CSV log, the learning-rate schedule, and resuming from the
last checkpoint."""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


def atomic_save(tensors: dict[str, torch.Tensor], path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp))
    os.replace(tmp, path)


def _optimizer_tensors(opt: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    out = {}
    for i, state in opt.state_dict()["state"].items():
        for name, value in state.items():
            out[f"{i}.{name}"] = value if torch.is_tensor(value) else torch.tensor(value)
    return out


def _load_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor]) -> None:
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        i, name = key.split(".", 1)
        state.setdefault(int(i), {})[name] = value
    sd = opt.state_dict()
    sd["state"] = state
    opt.load_state_dict(sd)


def save_checkpoint(directory: Path, phase: str, modules: dict, opt, step: int, extra=None) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name, module in modules.items():
        atomic_save(module.state_dict(), directory / f"{phase}_{name}.safetensors")
    atomic_save(_optimizer_tensors(opt), directory / f"{phase}_optimizer.safetensors")
    meta = {"step": step, **(extra or {})}
    tmp = directory / f".{phase}_state.json.tmp"
    tmp.write_text(json.dumps(meta))
    os.replace(tmp, directory / f"{phase}_state.json")


def load_checkpoint(directory: Path, phase: str, modules: dict, opt) -> dict:
    state_file = directory / f"{phase}_state.json"
    if not state_file.exists():
        return {"step": 0}
    for name, module in modules.items():
        module.load_state_dict(load_file(str(directory / f"{phase}_{name}.safetensors")))
    if opt is not None:
        _load_optimizer(opt, load_file(str(directory / f"{phase}_optimizer.safetensors")))
    return json.loads(state_file.read_text())


class _Log:
    def __init__(self, path: Path, header: str) -> None:
        self.path = path
        if not path.exists():
            path.write_text(header + "\n")

    def write(self, *values) -> None:
        with self.path.open("a") as fh:
            fh.write(",".join(f"{v:.6g}" if isinstance(v, float) else str(v) for v in values) + "\n")


def _lr(step: int, base: float, warmup: int, total: int) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup))))


def train_loop(directory: Path, phase: str, modules: dict, opt, params, steps: int, *,
                lr: float, warmup: int, every: int, compute, after=None, extra=None,
                metrics: tuple[str, ...] = ()) -> None:
    """The loop every phase shares: resume, learning-rate schedule, optimiser step with gradient
    clipping, progress bar, CSV log, atomic checkpoints. ``compute(step)`` returns the loss and a
    dict of ``metrics``; ``after(step)`` runs after the optimiser step (EMA)."""
    from tqdm.auto import tqdm

    state = load_checkpoint(directory, phase, modules, opt)
    log = _Log(directory / f"{phase}_log.csv", ",".join(("step", "loss", *metrics, "lr", "seconds")))
    start = time.time()
    bar = tqdm(total=steps, initial=state["step"], desc=phase, dynamic_ncols=True)
    for step in range(state["step"], steps):
        for group in opt.param_groups:
            group["lr"] = _lr(step, lr, warmup, steps)
        loss, values = compute(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if after is not None:
            after(step)
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.4f}", **{k: f"{v:.1f}" for k, v in values.items()})
        if step % 10 == 0:
            log.write(step, loss.item(), *(values[k] for k in metrics), opt.param_groups[0]["lr"],
                      time.time() - start)
        if (step + 1) % every == 0 or step + 1 == steps:
            save_checkpoint(directory, phase, modules, opt, step + 1, extra)
    bar.close()


def psnr(mse: torch.Tensor) -> float:
    """PSNR in dB of pixels in [-1, 1] (peak-to-peak 2)."""
    return 10 * math.log10(4 / max(mse.item(), 1e-10))
