"""An extended-attention UNet call split into UNet batches, exactly.

In the keyframe call every self-attention layer attends over the keys and values of all K
keyframes, and each layer's keys and values depend on every keyframe's output of the layers
before it. So the call cannot be split into independent UNet passes over groups of keyframes,
nor can a first pass gather the keys and values of every layer (later layers depend on earlier
layers' results of the joint attention). What can be split is the work between two
self-attention layers: :func:`unet_call` runs one UNet pass per group of at most ``unet_batch``
frames, each in its own greenlet (a coroutine on the caller's thread: one allocator arena, the
caller's grad mode), in lockstep. The passes take turns, one at a time, in group order; at each
self-attention layer a pass leaves its keys and values with the :class:`Lockstep` and hands
the turn on; when the turn comes back (every group has left its keys and values for that
layer) it attends with its own queries over all of them, in pieces
(:func:`tokenflow.editing.attention.chunked_attention`). Outputs equal those of one call over
all frames, to float rounding.

What stays in memory is one UNet batch's working set (convolutions, feed-forward, attention in
pieces) plus, per keyframe, what a suspended pass holds between two layers (its hidden states and
skip connections) and the keys and values of the current layer: these grow with K and cannot be
avoided without recomputing every earlier layer for every layer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from greenlet import GreenletExit, getcurrent, greenlet

from tokenflow.editing.attention import AttentionState


class Lockstep:
    """The exchange of keys and values between the UNet passes of one split call; each pass
    runs in a greenlet whose parent is the scheduler (:func:`unet_call`)."""

    def __init__(self, groups: int) -> None:
        self.groups = groups
        self._kv: dict[int, list] = {}  # exchange number -> [(key, value) per group]
        self._taken: dict[int, int] = {}
        self._count = [0] * groups  # exchanges made per group

    def exchange(self, group: int, key: torch.Tensor, value: torch.Tensor,
                 n_branches: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Leave this group's ``(n_branches * G, heads, S, d)`` keys and values; once every
        group has, return all of them per branch, ``(n_branches, heads, K * S, d)``, frames in
        group order."""
        n = self._count[group]
        self._count[group] += 1
        self._kv.setdefault(n, [None] * self.groups)[group] = (key, value)
        getcurrent().parent.switch()  # the scheduler runs every other group up to here
        parts = self._kv[n]
        if any(p is None for p in parts):
            raise RuntimeError("the UNet batches of a split keyframe call fell out of step")
        self._taken[n] = self._taken.get(n, 0) + 1
        if self._taken[n] == self.groups:  # the last reader frees them
            del self._kv[n], self._taken[n]
        return tuple(_per_branch([p[i] for p in parts], n_branches) for i in (0, 1))


def _per_branch(parts: list[torch.Tensor], n_branches: int) -> torch.Tensor:
    """Groups' ``(nb * G_i, h, S, d)`` tensors -> ``(nb, h, sum(G_i) * S, d)``."""
    merged = []
    for t in parts:
        frames = t.shape[0] // n_branches
        merged.append(t.view(n_branches, frames, *t.shape[1:]).transpose(1, 2)
                      .reshape(n_branches, t.shape[1], -1, t.shape[-1]))
    return torch.cat(merged, dim=2)


def _branch_rows(n_branches: int, frames: int, sl: slice) -> torch.Tensor:
    """Rows of a branch-major batch of ``frames`` per branch that hold the frames ``sl``."""
    return torch.cat([torch.arange(b * frames + sl.start, b * frames + sl.stop)
                      for b in range(n_branches)])


def unet_call(unet, state: AttentionState, x: torch.Tensor, t: int, emb: torch.Tensor, *,
              unet_batch: int,
              extra: Callable[[torch.Tensor, int, torch.Tensor], dict[str, Any]] | None = None
              ) -> torch.Tensor:
    """``unet(x, t, emb)`` with the instructions already in ``state`` (``n_branches``,
    ``extended``, ``inject``, ``conv``, ``keep``), on ``x`` of ``n_branches * F`` frames
    (branch-major): one pass when ``F <= unet_batch`` or without extended attention, else one
    pass per group of ``unet_batch`` frames in lockstep (module docs). Returns the model output
    and fills ``state.keep`` as one pass would."""
    nb = state.n_branches
    frames = x.shape[0] // nb

    def run(xb, embb):
        kwargs = extra(xb, int(t), embb) if extra is not None else {}
        return unet(xb, int(t), encoder_hidden_states=embb, return_dict=False, **kwargs)[0]

    if not state.extended or frames <= unet_batch:
        return run(x, emb)
    slices = [slice(s, min(s + unet_batch, frames)) for s in range(0, frames, unet_batch)]
    lockstep = Lockstep(len(slices))
    outputs: list[torch.Tensor | None] = [None] * len(slices)
    keeps: list[dict[str, torch.Tensor]] = [{} for _ in slices]
    subs = [AttentionState(
        n_branches=nb, extended=True, lockstep=lockstep, group=g,
        inject={k: v[sl] for k, v in state.inject.items()},
        conv={k: v[sl] for k, v in state.conv.items()},
        keep=keeps[g] if state.keep is not None else None,
        attention_bytes=state.attention_bytes) for g, sl in enumerate(slices)]

    def worker(g: int) -> None:
        rows = _branch_rows(nb, frames, slices[g])
        outputs[g] = run(x[rows], emb[rows])

    passes = [greenlet(lambda g=g: worker(g)) for g in range(len(slices))]
    try:
        while not all(p.dead for p in passes):  # one round: every pass to its next layer
            for g, p in enumerate(passes):
                if not p.dead:
                    state.bind(subs[g])
                    p.switch()
    finally:
        state.bind(None)
        for p in passes:  # after an error: unwind the passes still suspended
            if not p.dead:
                p.throw(GreenletExit)
    if state.keep is not None:
        for layer in list(keeps[0]):
            state.keep[layer] = _join(nb, [k.pop(layer) for k in keeps])
    return _join(nb, outputs)


def _join(n_branches: int, parts: list) -> torch.Tensor:
    """Groups' branch-major ``(nb * G_i, ...)`` -> branch-major ``(nb * sum(G_i), ...)``."""
    per = [p.view(n_branches, -1, *p.shape[1:]) for p in parts]
    out = torch.cat(per, dim=1)
    return out.reshape(-1, *out.shape[2:])
