"""Feature-store stage ``unet``: the source branch's tokens and conv residuals (docs/algorithm.md section 2).

For every frame and editing timestep the UNet runs on the inverted latents with the inversion
prompt; every self-attention layer's input tokens (the block's norm1 output) are stored, and the
residual branch of each requested ResNet for the first ``conv_t * steps`` timesteps. PnP's queries
and keys are linear maps of those tokens, so the editor derives them from the stored tokens
instead of storing them twice (see docs/cache.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from tokenflow import (
    CHANNEL,
    FEATURES,
    FRAME,
    HEIGHT,
    INVERSION,
    LAYER,
    TIMESTEP,
    TOKEN,
    TOKEN_DIMS,
    WIDTH,
    BackgroundWriter,
    Params,
    SourcePass,
    StageBase,
    StageContext,
    StageError,
    create_array,
    group_name,
    hookimpl,
    layer_shapes,
    self_attention_layers,
    write_coord,
)


@dataclass(frozen=True)
class UNetFeatureParams(Params):
    """``conv_layers``: ResNets whose residual is kept (module paths); ``conv_t``: fraction of
    the editing steps, from the noisiest, for which it is kept; ``dtype``: storage precision;
    ``store_tokens``: keep every layer's tokens (the default, ~23 MB per frame and step for SD at
    512x512 in float16) or keep none and let readers recompute them with a source pass."""

    conv_layers: tuple[str, ...] = ("up_blocks.1.resnets.1",)
    conv_t: float = 0.8
    dtype: Literal["float16", "float32"] = "float16"
    store_tokens: bool = True

    def __post_init__(self) -> None:
        if not 0.0 <= self.conv_t <= 1.0:
            raise ValueError("conv_t must be between 0 and 1")


class UNetFeatures(StageBase):
    kind = FEATURES
    name = "unet"
    version = 1
    requires = (INVERSION,)
    reads_config = ("steps",)
    Params = UNetFeatureParams
    summary = "source-branch norm1 tokens of every self-attention layer + PnP conv residuals"

    def conv_steps(self, steps: int) -> int:
        return int(self.params.conv_t * steps)

    def estimate_bytes(self, ctx: StageContext) -> int:
        n, h, w = ctx.frames.shape[:3]
        f = ctx.model.vae_scale_factor
        shapes = layer_shapes(ctx.model.unet, (h // f, w // f))
        item = 2 if self.params.dtype == "float16" else 4
        tokens = sum(s[0] * s[1] for p, s in shapes.items() if p.endswith(".attn1"))
        tokens *= int(self.params.store_tokens)
        conv = sum(int(np.prod(shapes[p])) for p in self.params.conv_layers if p in shapes)
        steps = ctx.config.steps
        return item * n * (steps * tokens + self.conv_steps(steps) * conv)

    def run(self, ctx: StageContext) -> None:
        model, out, params = ctx.model, ctx.output, self.params
        inv = ctx.inputs[INVERSION]
        for path in params.conv_layers:
            try:
                model.unet.get_submodule(f"{path}.conv2")
            except AttributeError:
                raise StageError(f"the UNet has no ResNet {path!r} (conv_layers)") from None
        source = SourcePass(model, inv, params.conv_layers)
        timesteps = source.timesteps
        n = int(source.latents.shape[1])
        conv_steps = self.conv_steps(len(timesteps))
        batch = int(ctx.options.get("unet_batch", ctx.config.batch_size))
        shapes = layer_shapes(model.unet, tuple(int(s) for s in source.latents.shape[3:]))
        layers = self_attention_layers(model.unet)
        arrays: dict[str, tuple] = {}
        where: dict[str, str] = {}
        # one group per resolution: tokens (timestep, frame, layer, token, channel)
        by_group: dict[str, list[str]] = {}
        for layer in layers:
            tokens, channels, hh, ww = shapes[layer]
            by_group.setdefault(group_name(hh, ww, channels), []).append(layer)
        for gname, members in by_group.items():
            tokens, channels = shapes[members[0]][:2]
            g = self._group(out, gname, timesteps, n, channels)
            write_coord(g, LAYER, members)
            write_coord(g, TOKEN, range(tokens))
            where.update({layer: gname for layer in members})
            if params.store_tokens:
                arr = create_array(g, "tokens", dims=TOKEN_DIMS,
                                   shape=(len(timesteps), n, len(members), tokens, channels),
                                   dtype=params.dtype, chunks=(1, batch, 1, tokens, channels))
                arrays.update({layer: (arr, i) for i, layer in enumerate(members)})
        # conv residuals: (conv_timestep, frame, conv_layer, channel, y, x)
        by_group = {}
        for path in params.conv_layers:
            channels, hh, ww = shapes[path]
            by_group.setdefault(group_name(hh, ww, channels), []).append(path)
        for gname, members in by_group.items():
            channels, hh, ww = shapes[members[0]]
            g = self._group(out, gname, timesteps, n, channels)
            write_coord(g, "conv_timestep", timesteps[:conv_steps])
            write_coord(g, "conv_layer", members)
            write_coord(g, HEIGHT, range(hh))
            write_coord(g, WIDTH, range(ww))
            arr = create_array(g, "conv", dims=("conv_timestep", FRAME, "conv_layer", CHANNEL,
                                                HEIGHT, WIDTH),
                               shape=(conv_steps, n, len(members), channels, hh, ww),
                               dtype=params.dtype, chunks=(1, batch, 1, channels, hh, ww))
            arrays.update({path: (arr, i) for i, path in enumerate(members)})
            where.update({path: gname for path in members})
        write_coord(out, TIMESTEP, timesteps)
        out.attrs.update({"layers": layers, "groups": where, "store_tokens": params.store_tokens,
                          "conv_layers": list(params.conv_layers), "n_frames": n})
        passes = [(i, s0) for i in range(len(timesteps)) for s0 in range(0, n, batch)
                  if params.store_tokens or i < conv_steps]
        progress = ctx.progress
        before = int(progress.state.get("unet_frame_evals", 0)) if progress is not None else 0
        def store(i: int, s0: int, found: dict, tag: str, evals: int) -> None:
            for name, value in found.items():
                arr, j = arrays[name]
                arr[i, s0:s0 + value.shape[0], j] = value
            if progress is not None:
                progress.mark(tag, unet_frame_evals=evals)

        with ctx.bar(len(passes), "features") as bar, BackgroundWriter() as writer:
            for i, s0 in passes:
                tag = f"t{i}:f{s0}:b{batch}"  # a new batch size rechunks: nothing matches
                if progress is not None and progress.done(tag):  # resumed: already stored
                    bar.update(1)
                    continue
                frames = range(s0, min(s0 + batch, n))
                tokens, residuals = source.run(i, frames, conv=i < conv_steps)
                found = {name: value.to(torch.float32).cpu().numpy() for name, value in
                         {**(tokens if params.store_tokens else {}), **residuals}.items()}
                writer.submit(store, i, s0, found, tag, before + source.frame_evals)
                bar.update(1)
        out.attrs["stats"] = {"unet_frame_evals": before + source.frame_evals}

    @staticmethod
    def _group(out, name: str, timesteps, n: int, channels: int):
        if name in out:
            return out[name]
        g = out.create_group(name)
        write_coord(g, TIMESTEP, timesteps)
        write_coord(g, FRAME, range(n))
        write_coord(g, CHANNEL, range(channels))
        return g


@hookimpl
def register_features(register):
    register(UNetFeatures)
