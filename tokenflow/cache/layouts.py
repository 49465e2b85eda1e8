"""The store layouts that stages of different kinds exchange, with their readers.

A replacement stage must write the layout of its kind so that downstream stages can read it.

* **inversion**: ``latents`` (timestep, frame, latent_channel, latent_y, latent_x) at every
  editing timestep in editing order (noisiest first); ``x0`` and ``x_max`` (frame,
  latent_channel, latent_y, latent_x); attrs ``t_max``, ``prompt``.
* **features**: attr ``layers`` (every self-attention layer path) and ``groups`` ({layer or conv
  path: group}); one group per resolution ``<h>x<w>x<channels>`` holding ``tokens`` (timestep,
  frame, layer, token, channel; float, or int8 with ``tokens_scale`` and ``tokens_offset``
  (layer, channel) beside it: see ``tokenflow.cache.quantized``) and, where conv residuals of that shape are kept, ``conv``
  (conv_timestep, frame, conv_layer, channel, y, x; int8 with ``conv_scale`` and
  ``conv_offset`` (conv_layer, channel) when the tokens are) for the first
  ``len(conv_timestep)`` steps.
* **keyframes**: ``keyframes`` (timestep, chunk): frame index of each chunk's keyframe.
* **correspondence**: ``reference`` (timestep, frame, ref): the two keyframes each frame reads
  from (equal when it reads from one); per resolution group ``index`` (timestep, frame, layer,
  ref, token): for every token, the token of that reference keyframe it takes.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
import torch
import zarr

from tokenflow.cache.quantized import dequantize, quiet_numcodecs
from tokenflow.stages import LAYER, TIMESTEP, TOKEN



def group_name(height: int, width: int, channels: int) -> str:
    return f"{height}x{width}x{channels}"


def token_grid(tokens: int, latent_hw: tuple[int, int]) -> tuple[int, int]:
    """(h, w) of a layer with ``tokens`` tokens in a UNet fed ``latent_hw`` latents."""
    lat_h, lat_w = latent_hw
    factor = round(math.sqrt(lat_h * lat_w / tokens))
    h, w = -(-lat_h // factor), -(-lat_w // factor)
    if h * w != tokens:
        raise ValueError(f"cannot place {tokens} tokens on a grid of latents {lat_h}x{lat_w}")
    return h, w


def _factor(unet, path: str) -> int:
    parts = path.split(".")
    n_down, n_up = len(unet.down_blocks), len(unet.up_blocks)
    if parts[0] == "down_blocks":
        return 2 ** int(parts[1])
    if parts[0] == "mid_block":
        return 2 ** (n_down - 1)
    if parts[0] == "up_blocks":
        return 2 ** (n_up - 1 - int(parts[1]))
    raise ValueError(f"cannot place {path!r} in the UNet")


def layer_shapes(unet, latent_hw: tuple[int, int]) -> dict[str, tuple[int, ...]]:
    """Shapes of what the feature store keeps, without running the UNet.

    Self-attention layers (``...attn1``): ``(tokens, channels, h, w)``; ResNets
    (``...resnets.N``): ``(channels, h, w)`` of their residual branch. SD-shaped UNets only
    (down/mid/up blocks, one 2x resampling between consecutive blocks).
    """
    from tokenflow.editing.attention import self_attention_layers

    lat_h, lat_w = latent_hw
    out: dict[str, tuple[int, ...]] = {}
    for path in self_attention_layers(unet):
        f = _factor(unet, path)
        h, w = -(-lat_h // f), -(-lat_w // f)
        out[path] = (h * w, unet.get_submodule(path).to_q.in_features, h, w)
    for name, module in unet.named_modules():
        if ".resnets." in name and name.split(".")[-2] == "resnets":
            f = _factor(unet, name)
            out[name] = (module.conv2.out_channels, -(-lat_h // f), -(-lat_w // f))
    return out


def read_timesteps(group: zarr.Group) -> list[int]:
    return [int(t) for t in group[TIMESTEP][...]]


def _array(opened: dict, store: zarr.Group, group: str, name: str) -> zarr.Array:
    """``store[group][name]``, opened once per reader (opening reads its metadata from disk)."""
    key = (group, name)
    if key not in opened:
        with warnings.catch_warnings():
            quiet_numcodecs()
            opened[key] = store[group][name]
    return opened[key]


class FeatureReader:
    """Reads source-branch tokens and conv residuals from a features store.

    A store written with ``store_tokens=False`` keeps no tokens; they are then recomputed with
    ``source`` (a :class:`tokenflow.editing.source.SourcePass`), which must be given.
    """

    def __init__(self, store: zarr.Group, source=None) -> None:
        self.store = store
        self.source = source
        self.stores_tokens = bool(store.attrs.get("store_tokens", True))
        self.groups: dict[str, str] = dict(store.attrs["groups"])
        self.layers: list[str] = list(store.attrs["layers"])
        self.timesteps = read_timesteps(store)
        self.n_frames = int(store.attrs["n_frames"])
        self._layer_index: dict[str, int] = {}
        self._conv_index: dict[str, int] = {}
        self._arrays: dict[tuple[str, str], zarr.Array] = {}
        self._grids: dict[tuple[str, str], tuple[np.ndarray, ...]] = {}
        for name in {self.groups[layer] for layer in self.layers}:
            for i, layer in enumerate(store[name][LAYER][...]):
                self._layer_index[str(layer)] = i
        self.conv_layers: list[str] = list(store.attrs.get("conv_layers", []))
        self.conv_steps: int = 0
        for path in self.conv_layers:
            group = store[self.groups[path]]
            for i, name in enumerate(group["conv_layer"][...]):
                self._conv_index[str(name)] = i
            self.conv_steps = int(group["conv"].shape[0])

    def token_count(self, layer: str) -> int:
        return int(self.store[self.groups[layer]][TOKEN].shape[0])

    def tokens(self, step: int, layer: str, frames: Sequence[int]) -> torch.Tensor:
        """(F, S, C) float32 norm1 tokens of ``layer`` at step index ``step`` for ``frames``."""
        if not self.stores_tokens:
            if self.source is None:
                raise ValueError("this feature store keeps no tokens and no source pass was given")
            return self.source.run(step, frames, conv=False)[0][layer].to(torch.float32)
        return self._read(layer, "tokens", step, frames, self._layer_index[layer], -1)

    def _read(self, member: str, name: str, step: int, frames: Sequence[int], index: int,
              channel_axis: int) -> torch.Tensor:
        group = self.groups[member]
        arr = _array(self._arrays, self.store, group, name)
        data = arr.get_orthogonal_selection((step, np.asarray(frames, dtype=np.int64), index))
        if data.dtype == np.int8:  # NAME * NAME_scale + NAME_offset (tokenflow.cache.quantized)
            key = (group, name)
            if key not in self._grids:
                self._grids[key] = tuple(
                    np.asarray(_array(self._arrays, self.store, group, f"{name}_{part}")[...])
                    for part in ("scale", "offset"))
            scale, offset = self._grids[key]
            return dequantize(data, scale[index], offset[index], channel_axis)
        return torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32))

    def has_conv(self, step: int, path: str) -> bool:
        return path in self._conv_index and step < self.conv_steps

    def conv(self, step: int, path: str, frames: Sequence[int]) -> torch.Tensor:
        """(F, C, h, w) float32 residual of ResNet ``path`` at step ``step`` for ``frames``."""
        return self._read(path, "conv", step, frames, self._conv_index[path], 1)


class CorrespondenceReader:
    """Reads reference keyframes and token indices from a correspondence store."""

    def __init__(self, store: zarr.Group) -> None:
        self.store = store
        self.groups: dict[str, str] = dict(store.attrs["groups"])
        self.reference = np.asarray(store["reference"][...])
        self._arrays: dict[tuple[str, str], zarr.Array] = {}
        self._layer_index: dict[str, int] = {}
        for name in set(self.groups.values()):
            for i, layer in enumerate(store[name][LAYER][...]):
                self._layer_index[str(layer)] = i

    def references(self, step: int, frames: Sequence[int]) -> np.ndarray:
        """(F, 2) frame indices of the reference keyframes."""
        return self.reference[step, np.asarray(frames)]

    def index(self, step: int, layer: str, frames: Sequence[int]) -> torch.Tensor:
        """(F, 2, S) int64 token indices into the two reference keyframes."""
        arr = _array(self._arrays, self.store, self.groups[layer], "index")
        data = arr.get_orthogonal_selection(
            (step, np.asarray(frames, dtype=np.int64), self._layer_index[layer])
        )
        return torch.from_numpy(np.asarray(data, dtype=np.int64))


