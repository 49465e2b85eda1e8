"""What both benchmarks of this folder set up: one torch thread count, a plugin manager with
``localblend`` (registered here when the package is only importable, not installed), the embedded
model, and a run planned as ``tf run`` plans it."""

from __future__ import annotations

import os

SOURCE = "a red ball on wood"


def setup(threads: int):
    """``(pm, model)``: the plugin manager and tokenflow's embedded model on the CPU."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import torch

    torch.set_num_threads(threads)
    import tokenflow_localblend.editor as plugin
    from tokenflow import load_model
    from tokenflow.manager import make_plugin_manager

    pm = make_plugin_manager()
    if not pm.is_registered(plugin):
        pm.register(plugin, name="tokenflow_localblend.editor")
    return pm, load_model(None, device="cpu")


def edit(pm, model, frames, cache, steps: int, editor: str, target: str, options=()) -> dict:
    """Run ``editor`` on ``frames`` (source :data:`SOURCE`, prompt ``target``); the results."""
    from tokenflow.testing import make_job

    return make_job(pm, model, frames, cache=cache, steps=steps, batch_size=4, editor=editor,
                    params={"inversion": {"prompt": SOURCE}, "editor": {"prompt": target}},
                    options=list(options)).run()
