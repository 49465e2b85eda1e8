"""Editors ``pnp`` (keyframes edited jointly, then propagated) and ``pnp-frames`` (the per-frame
PnP baseline with no propagation). docs/algorithm.md, section 4.

``pnp``: one UNet call per timestep on the K keyframes, branches [uncond, cond]; extended attention
across the keyframes of a branch in every self-attention layer; PnP query/key injection from the
source tokens in the decoder layers during the first ``pnp_attn_t`` of the steps; conv injection
of the source residual in ``up_blocks.1.resnets.1`` during the first ``pnp_f_t``; CFG. The
machinery is tokenflow's :class:`~tokenflow.KeyframeEditor`; this plugin chooses PnP's schedule.
"""

from __future__ import annotations

from tokenflow import FEATURES, INVERSION, Injection, KeyframeEditor, PnPParams, hookimpl


class PnPEditor(KeyframeEditor):
    name = "pnp"
    version = 1
    Params = PnPParams
    summary = "Plug-and-Play on keyframes with extended attention (TokenFlow's editor)"

    def upstream_params(self, config) -> dict:
        return self.params.feature_needs()

    def injection(self, steps: int) -> Injection:
        return Injection.pnp(self.params, steps)


class PnPFramesEditor(PnPEditor):
    """Per-frame PnP: every frame edited on its own, no extended attention, no propagation."""

    name = "pnp-frames"
    requires = (INVERSION, FEATURES)
    summary = "per-frame Plug-and-Play, no propagation (the baseline for comparisons)"
    propagates = False
    extended = False


@hookimpl
def register_editors(register):
    register(PnPEditor)
    register(PnPFramesEditor)
