"""Tokens and conv residuals stored as 8-bit integers, delta-coded along the timestep (the
feature store's default).

The tokens a feature store keeps are a LayerNorm's output (each transformer block's norm1):
per token, ``gamma * (x - mean) / std + beta`` over the channels. So each channel's values are
spread about ``beta_c`` by about ``|gamma_c|``, whatever the video, and the model's own weights
give the quantisation grid before any frame is seen: channel ``c`` is stored as the integer
``round((value - beta_c) / step_c)`` with ``step_c = |gamma_c| / levels``, clipped to int8.
A ResNet's residual is ``conv2(silu(norm2(h)))``: its channel ``c`` is spread about the conv's
bias by about the norm of its weights scaled by norm2's (measured on the embedded model: the
spread is 0.3-1.0 times that norm, never more than 4 times it away), so its step is
``||W_c * gamma_in|| / (1.5 * levels)``. Reading is ``tokens * tokens_scale + tokens_offset``
(``conv * conv_scale + conv_offset``), the grids having dims (layer, channel) (``conv_layer``,
channel) beside the arrays, which xarray broadcasts by name.

A chunk holds several consecutive timesteps of a frame: the integers change little from one
editing timestep to the next, so the chunk is transposed to put the timestep last and
delta-coded (zarr's ``transpose`` and ``numcodecs.delta`` codecs, then zstd). Both are codecs
of zarr-python itself: any zarr-python 3 reader, and so xarray, decodes them without tokenflow.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import torch

#: Quantisation steps per unit of a channel's spread (``|gamma_c|`` for tokens).
DEFAULT_LEVELS = 16
#: Values a chunk of one layer aims at (smaller layers put several frames in one chunk).
CHUNK_VALUES = 2**18
#: A residual channel's spread in units of its weight norm, at most (see above).
CONV_SPREAD = 1.5


class Int8Grid:
    """The int8 encoding of a group's layers (tokens) or ResNets (conv residuals).

    ``create`` makes the array (``name``) with ``<name>_scale`` and ``<name>_offset`` beside it;
    ``quantize`` turns a layer's values into its int8 values. ``for_tokens`` and ``for_conv``
    build the grids from the model's weights.
    """

    def __init__(self, name: str, members: Sequence[str], scale: np.ndarray,
                 offset: np.ndarray, channel_axis: int) -> None:
        self.name, self.members = name, list(members)
        self.scale = np.asarray(scale, np.float32)
        self.offset = np.asarray(offset, np.float32)
        self.channel_axis = channel_axis  # of (frame, ...) values: -1 tokens, 1 residuals

    @classmethod
    def for_tokens(cls, unet, layers: Sequence[str], levels: int = DEFAULT_LEVELS) -> Int8Grid:
        _check(levels)
        scale, offset = [], []
        for layer in layers:
            channels = unet.get_submodule(layer).to_q.in_features
            norm = _child(unet, layer.rsplit(".", 1)[0], "norm1")
            gamma, beta = _affine(norm, channels)
            scale.append(_floor(np.abs(gamma)) / levels)
            offset.append(beta)
        return cls("tokens", layers, np.stack(scale), np.stack(offset), -1)

    @classmethod
    def for_conv(cls, unet, paths: Sequence[str], levels: int = DEFAULT_LEVELS) -> Int8Grid:
        _check(levels)
        scale, offset = [], []
        for path in paths:
            conv = unet.get_submodule(f"{path}.conv2")
            gamma, _ = _affine(_child(unet, path, "norm2"), conv.in_channels)
            weight = conv.weight.detach().float().cpu() * torch.from_numpy(gamma)[None, :, None,
                                                                                    None]
            spread = weight.flatten(1).norm(dim=1).numpy()
            scale.append(_floor(spread) / (CONV_SPREAD * levels))
            offset.append(conv.bias.detach().float().cpu().numpy() if conv.bias is not None
                          else np.zeros(conv.out_channels, np.float32))
        return cls("conv", paths, np.stack(scale), np.stack(offset), 1)

    @property
    def encoding(self) -> str:
        return f"{self.name} * {self.name}_scale + {self.name}_offset"

    def create(self, group, dims: Sequence[str], shape: Sequence[int], *, span: int,
               most_frames: int):
        """The int8 array of ``shape`` (timestep, frame, member, ...): chunks of ``span``
        timesteps and up to ``most_frames`` frames of one member."""
        from tokenflow.cache.store import create_array

        grid_dims = (dims[2], [dims[1], *dims[3:]][self.channel_axis])
        create_array(group, f"{self.name}_scale", dims=grid_dims, data=self.scale)
        create_array(group, f"{self.name}_offset", dims=grid_dims, data=self.offset)
        one = int(np.prod(shape[3:]))
        per = max(1, min(most_frames, CHUNK_VALUES // max(1, one * span)))
        chunks = (span, per, 1, *shape[3:])
        arr = create_array(group, self.name, dims=dims, shape=shape, dtype="int8",
                           chunks=chunks, **_codecs(chunks))
        arr.attrs["encoding"] = self.encoding
        return arr

    def quantize(self, member: str, values: torch.Tensor) -> tuple[np.ndarray, int]:
        """(F, ...) values (any device) of ``member``: int8 numpy, and how many were clipped."""
        i = self.members.index(member)
        shape = _along(values.dim(), self.channel_axis)
        s = torch.as_tensor(self.scale[i], device=values.device).reshape(shape)
        o = torch.as_tensor(self.offset[i], device=values.device).reshape(shape)
        q = torch.round((values.to(torch.float32) - o) / s)
        clipped = int((q.abs() > 127).sum())
        return q.clamp_(-127, 127).to(torch.int8).cpu().numpy(), clipped


def _along(ndim: int, axis: int) -> list[int]:
    """The shape that lays a (C,) grid along ``axis`` of an ``ndim``-dimensional array."""
    shape = [1] * ndim
    shape[axis] = -1
    return shape


def _check(levels: int) -> None:
    if levels < 1:
        raise ValueError("levels must be at least 1")


def _floor(spread: np.ndarray) -> np.ndarray:
    """No zero steps: a channel without spread gets a thousandth of the largest."""
    top = float(spread.max()) if spread.size and spread.max() > 0 else 1.0
    return np.maximum(spread, 1e-3 * top).astype(np.float32)


def _child(unet, parent: str, name: str):
    try:
        return unet.get_submodule(f"{parent}.{name}")
    except AttributeError:
        return None


def _affine(norm, channels: int) -> tuple[np.ndarray, np.ndarray]:
    """A norm's (weight, bias); ones and zeros when it has none (or there is no norm)."""
    weight = getattr(norm, "weight", None)
    bias = getattr(norm, "bias", None)
    if weight is None or tuple(weight.shape) != (channels,):
        return np.ones(channels, np.float32), np.zeros(channels, np.float32)
    return (weight.detach().float().cpu().numpy(),
            bias.detach().float().cpu().numpy() if bias is not None
            else np.zeros(channels, np.float32))


def dequantize(q: np.ndarray, scale: np.ndarray, offset: np.ndarray, channel_axis: int = -1
               ) -> torch.Tensor:
    """float32 values from int8 values on a (C,) grid whose channels lie on ``channel_axis``."""
    shape = _along(q.ndim, channel_axis)
    return torch.from_numpy(q.astype(np.float32) * scale.reshape(shape) + offset.reshape(shape))


def _codecs(chunks: Sequence[int]) -> dict:
    """``create_array`` keywords: timestep (axis 0) moved last, delta-coded, zstd.

    numcodecs' delta flattens a Fortran-contiguous array in Fortran order but restores it in C
    order (zarr-python 3.1, numcodecs 0.16): a transposed chunk that is Fortran-contiguous (one
    frame of a one-token layer, e.g. a 1x1 mid block) would come back scrambled, so such chunks
    are only compressed."""
    from zarr.codecs import TransposeCodec, ZstdCodec

    order = tuple(range(1, len(chunks))) + (0,)
    probe = np.empty(tuple(chunks), np.int8).transpose(order)
    if probe.flags.f_contiguous and not probe.flags.c_contiguous:
        return {"filters": None, "compressors": [ZstdCodec(level=3)]}
    with warnings.catch_warnings():
        quiet_numcodecs()
        from zarr.codecs.numcodecs import Delta

        delta = Delta(dtype="i1")
    return {"filters": [TransposeCodec(order=order), delta],
            "compressors": [ZstdCodec(level=3)]}


def quiet_numcodecs() -> None:
    """(Inside ``warnings.catch_warnings()``.) Silence zarr's notice that numcodecs' codecs are not in the zarr v3 specification (they
    are zarr-python's own, and every zarr-python 3 reader decodes them)."""
    warnings.filterwarnings("ignore", message="Numcodecs codecs are not in the Zarr version 3")
