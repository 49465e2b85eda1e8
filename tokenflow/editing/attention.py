"""Attention processors for TokenFlow and a context manager that installs and restores them.

One :class:`TokenFlowAttnProcessor` sits on every self-attention layer (``attn1``) of the UNet;
every one of them reads the same :class:`AttentionState`, which the caller fills before each UNet
call. The state says, for that call only:

* ``record``: keep each layer's input tokens (the output of the block's norm1);
* ``extended``: attend across all frames of the same branch (keys/values concatenated);
* ``inject``: replace queries and keys by those of given source tokens (PnP);
* ``provide``: skip attention and return a given output instead (propagation);
* ``keep``: keep each layer's output.

The batch of a UNet call is branch-major: ``n_branches`` blocks of ``n_frames`` frames each.
Residual convolutions are injected and recorded through forward hooks on their ``conv2`` (the
residual branch before the shortcut is added), never by replacing ``forward``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F


@dataclass
class AttentionState:
    """Instructions for the next UNet call, shared by all processors and conv hooks."""

    n_branches: int = 1
    record: dict[str, torch.Tensor] | None = None
    record_conv: dict[str, torch.Tensor] | None = None
    extended: bool = False
    inject: dict[str, torch.Tensor] = field(default_factory=dict)
    conv: dict[str, torch.Tensor] = field(default_factory=dict)
    provide: Callable[[str], torch.Tensor | None] | None = None
    keep: dict[str, torch.Tensor] | None = None
    #: Extended attention takes its queries in pieces whose attention matrix (if a backend
    #: materialises it) stays under this many bytes (None: one piece). Not reset per call.
    attention_bytes: int | None = None
    #: Set on the state of one UNet batch of a split keyframe call (``lockstep.unet_call``):
    #: the :class:`tokenflow.editing.lockstep.Lockstep` and this batch's index.
    lockstep: Any = None
    group: int = 0
    _bound: AttentionState | None = field(default=None, repr=False, compare=False)

    def reset(self) -> None:
        self.n_branches = 1
        self.record = None
        self.record_conv = None
        self.extended = False
        self.inject = {}
        self.conv = {}
        self.provide = None
        self.keep = None
        self.lockstep = None
        self.group = 0
        self._bound = None

    def bind(self, state: AttentionState | None) -> None:
        """Make ``state`` what the processors read instead of this one (None: this one again);
        a split UNet call binds each batch's state before running that batch."""
        self._bound = state

    def current(self) -> AttentionState:
        """The state the processors follow (see :meth:`bind`)."""
        return self._bound or self


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    b, n, d = x.shape
    return x.view(b, n, heads, d // heads).transpose(1, 2)


class TokenFlowAttnProcessor:
    """Self-attention processor driven by an :class:`AttentionState` (see module docs)."""

    def __init__(self, layer: str, state: AttentionState) -> None:
        self.layer = layer
        self.state = state

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None,
                 temb=None, *args, **kwargs) -> torch.Tensor:
        state = self.state.current()
        if hidden_states.ndim != 3 or encoder_hidden_states is not None:
            raise RuntimeError(f"{self.layer}: expected self-attention on (batch, tokens, channels)")
        if state.record is not None:
            state.record[self.layer] = hidden_states.detach()
        if state.provide is not None:
            out = state.provide(self.layer)
            if out is not None:
                if out.shape != hidden_states.shape[:2] + (attn.to_out[0].out_features,):
                    raise RuntimeError(
                        f"{self.layer}: provided output {tuple(out.shape)} does not fit "
                        f"{tuple(hidden_states.shape)}"
                    )
                if state.keep is not None:
                    state.keep[self.layer] = out
                return out.to(hidden_states.dtype)
        residual = hidden_states
        batch, tokens, _ = hidden_states.shape
        x = hidden_states
        if attn.spatial_norm is not None:
            x = attn.spatial_norm(x, temb)
        if attn.group_norm is not None:
            x = attn.group_norm(x.transpose(1, 2)).transpose(1, 2)
        query, key, value = attn.to_q(x), attn.to_k(x), attn.to_v(x)
        source = state.inject.get(self.layer)
        if source is not None:
            src = source.to(x.dtype)
            if attn.group_norm is not None:
                src = attn.group_norm(src.transpose(1, 2)).transpose(1, 2)
            if src.shape[0] * state.n_branches != batch:
                raise RuntimeError(f"{self.layer}: {src.shape[0]} source frames for batch {batch}")
            query = attn.to_q(src).repeat(state.n_branches, 1, 1)
            key = attn.to_k(src).repeat(state.n_branches, 1, 1)
        query, key, value = (_heads(t, attn.heads) for t in (query, key, value))
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        if attention_mask is not None:
            raise RuntimeError(f"{self.layer}: self-attention masks are not supported")
        if state.extended and state.lockstep is not None:  # one UNet batch of the keyframes
            keys, values = state.lockstep.exchange(state.group, key, value, state.n_branches)
            out = extended_attention(query, key, value, state.n_branches,
                                     max_bytes=state.attention_bytes, gathered=(keys, values))
        elif state.extended:
            out = extended_attention(query, key, value, state.n_branches,
                                     max_bytes=state.attention_bytes)
        else:
            out = F.scaled_dot_product_attention(query, key, value)
        out = out.transpose(1, 2).reshape(batch, tokens, -1).to(query.dtype)
        out = attn.to_out[1](attn.to_out[0](out))
        if attn.residual_connection:
            out = out + residual
        out = out / attn.rescale_output_factor
        if state.keep is not None:
            state.keep[self.layer] = out
        return out


def merge_frames(t: torch.Tensor, n_branches: int) -> torch.Tensor:
    """``(n_branches * F, heads, S, d)`` -> ``(n_branches, heads, F * S, d)``: the frames of a
    branch side by side on the token axis."""
    frames = t.shape[0] // n_branches
    return t.view(n_branches, frames, t.shape[1], -1, t.shape[-1]).transpose(1, 2).reshape(
        n_branches, t.shape[1], -1, t.shape[-1])


def chunked_attention(query, key, value, max_bytes: int | None = None) -> torch.Tensor:
    """``softmax(q k^T / sqrt(d)) v`` (torch SDPA) with the queries taken in pieces of as many
    rows as keep one piece's attention matrix (``batch x heads x rows x keys``, the query's
    dtype) under ``max_bytes``; at least one row. Rows are independent, so the result equals
    one call's, to float rounding; memory no longer grows with the number of queries even
    where a backend materialises the matrix (SDPA's math fallback)."""
    rows = query.shape[-2]
    step = rows
    if max_bytes is not None:
        per_row = query.shape[0] * query.shape[1] * key.shape[-2] * query.element_size()
        step = max(1, int(max_bytes) // max(1, per_row))
    if step >= rows:
        return F.scaled_dot_product_attention(query, key, value)
    return torch.cat([F.scaled_dot_product_attention(query[..., s:s + step, :], key, value)
                      for s in range(0, rows, step)], dim=-2)


def extended_attention(query, key, value, n_branches: int, *, max_bytes: int | None = None,
                       gathered: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """Attention in which every frame of a branch attends to the keys/values of all its frames.

    Inputs are ``(n_branches * frames, heads, tokens, dim)``, branch-major; so is the output.
    Equivalent to concatenating the frames' keys and values along the token axis. The keys and
    values are gathered once per branch, the queries taken in pieces (:func:`chunked_attention`,
    ``max_bytes``). ``gathered``: the branch's keys and values of all its frames,
    ``(n_branches, heads, K * tokens, dim)``, when ``query`` holds only some of the frames (one
    UNet batch of a split call); ``key`` and ``value`` are then unused.
    """
    bf, heads, tokens, dim = query.shape
    frames = bf // n_branches
    keys, values = gathered or (merge_frames(key, n_branches), merge_frames(value, n_branches))
    out = chunked_attention(merge_frames(query, n_branches), keys, values, max_bytes)
    out = out.view(n_branches, heads, frames, tokens, dim).transpose(1, 2)
    return out.reshape(bf, heads, tokens, dim)


class ConvHook:
    """Forward hook on a ResNet's ``conv2``: records or replaces its output (the residual)."""

    def __init__(self, path: str, state: AttentionState) -> None:
        self.path = path
        self.state = state

    def __call__(self, module, args, output):
        state = self.state.current()
        if state.record_conv is not None:
            state.record_conv[self.path] = output.detach()
        source = state.conv.get(self.path)
        if source is None:
            return None
        if source.shape[0] * state.n_branches != output.shape[0]:
            raise RuntimeError(f"{self.path}: {source.shape[0]} source frames for {output.shape[0]}")
        return source.to(output.dtype).repeat(state.n_branches, 1, 1, 1)


def self_attention_layers(unet) -> list[str]:
    """Module paths of every self-attention (``attn1``) layer, in the UNet's module order."""
    out = []
    for name in unet.attn_processors:
        path = name.removesuffix(".processor")
        if path.endswith(".attn1") and not unet.get_submodule(path).is_cross_attention:
            out.append(path)
    return out


@contextmanager
def tokenflow_attention(
    unet, state: AttentionState, conv_layers: Iterable[str] = ()
) -> Iterator[list[str]]:
    """Install :class:`TokenFlowAttnProcessor` on every self-attention layer and
    :class:`ConvHook` on each ResNet in ``conv_layers``; restore everything on exit.

    Yields the self-attention layer paths.
    """
    original = dict(unet.attn_processors)
    layers = set(self_attention_layers(unet))
    procs = {}
    for name, proc in original.items():
        path = name.removesuffix(".processor")
        procs[name] = TokenFlowAttnProcessor(path, state) if path in layers else proc
    handles = []
    try:
        unet.set_attn_processor(procs)
        for path in conv_layers:
            conv = unet.get_submodule(f"{path}.conv2")
            handles.append(conv.register_forward_hook(ConvHook(path, state)))
        yield [n.removesuffix(".processor") for n in original if n.removesuffix(".processor") in layers]
    finally:
        for handle in handles:
            handle.remove()
        unet.set_attn_processor(original)
        state.reset()
