"""Feature-store stage ``unet``: the source branch's tokens and conv residuals (docs/algorithm.md section 2).

For every frame and editing timestep the UNet runs on the inverted latents with the inversion
prompt; every self-attention layer's input tokens (the block's norm1 output) are stored, and the
residual branch of each requested ResNet for the first ``conv_t * steps`` timesteps. PnP's queries
and keys are linear maps of those tokens, so the editor derives them from the stored tokens
instead of storing them twice (see docs/cache.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np

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
    Params,
    StageBase,
    StageContext,
    StageError,
    hookimpl,
)

if TYPE_CHECKING:  # pragma: no cover
    import torch


@dataclass(frozen=True)
class UNetFeatureParams(Params):
    """``conv_layers``: ResNets whose residual is kept (module paths); ``conv_t``: fraction of
    the editing steps, from the noisiest, for which it is kept; ``dtype``: storage of the tokens
    (``int8``: on a grid of ``levels`` steps per unit of each channel's spread, from the
    model's weights, delta-coded over ``timestep_chunk`` timesteps: about a quarter of
    float16's bytes, see docs/cache.md); ``store_tokens``: keep every layer's tokens (the default) or
    keep none and let readers recompute them with a source pass."""

    conv_layers: tuple[str, ...] = ("up_blocks.1.resnets.1",)
    conv_t: float = 0.8
    dtype: Literal["int8", "float16", "float32"] = "int8"
    levels: int = 16
    timestep_chunk: int = 5
    store_tokens: bool = True

    def __post_init__(self) -> None:
        if not 0.0 <= self.conv_t <= 1.0:
            raise ValueError("conv_t must be between 0 and 1")
        if not 1 <= self.levels <= 64:
            raise ValueError("levels must be between 1 and 64")
        if self.timestep_chunk < 1:
            raise ValueError("timestep_chunk must be at least 1")


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
        """Bytes before compression (int8 typically compresses to half of that or less)."""
        from tokenflow import layer_shapes

        n, h, w = ctx.frames.shape[:3]
        f = ctx.model.vae_scale_factor
        shapes = layer_shapes(ctx.model.unet, (h // f, w // f))
        item = {"int8": 1, "float16": 2, "float32": 4}[self.params.dtype]
        tokens = sum(s[0] * s[1] for p, s in shapes.items() if p.endswith(".attn1"))
        tokens *= int(self.params.store_tokens)
        conv = sum(int(np.prod(shapes[p])) for p in self.params.conv_layers if p in shapes)
        steps = ctx.config.steps
        return n * item * (steps * tokens + self.conv_steps(steps) * conv)

    def frame_evaluations(self, ctx: StageContext) -> int:
        """A source pass of every frame at every editing step (only the conv steps when no
        tokens are stored)."""
        steps = ctx.config.steps
        return len(ctx.frames) * (steps if self.params.store_tokens else self.conv_steps(steps))

    def run(self, ctx: StageContext) -> None:
        from tokenflow import (
            BackgroundWriter,
            Int8Grid,
            SourcePass,
            create_array,
            group_name,
            layer_shapes,
            self_attention_layers,
            write_coord,
        )

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
        int8 = params.dtype == "int8"
        # timesteps written together: a chunk of int8 values holds `span` of them
        span = min(params.timestep_chunk, len(timesteps)) if int8 else 1
        arrays: dict[str, tuple] = {}
        grids: dict[str, Int8Grid] = {}
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
            if not params.store_tokens:
                continue
            shape = (len(timesteps), n, len(members), tokens, channels)
            if int8:
                grid = Int8Grid.for_tokens(model.unet, members, params.levels)
                arr = grid.create(g, TOKEN_DIMS, shape, span=span, most_frames=batch)
                grids.update({layer: grid for layer in members})
            else:
                arr = create_array(g, "tokens", dims=TOKEN_DIMS, shape=shape,
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
            dims = ("conv_timestep", FRAME, "conv_layer", CHANNEL, HEIGHT, WIDTH)
            shape = (conv_steps, n, len(members), channels, hh, ww)
            if int8:
                grid = Int8Grid.for_conv(model.unet, members, params.levels)
                arr = grid.create(g, dims, shape, span=span, most_frames=batch)
                grids.update({path: grid for path in members})
            else:
                arr = create_array(g, "conv", dims=dims, shape=shape, dtype=params.dtype,
                                   chunks=(1, batch, 1, channels, hh, ww))
            arrays.update({path: (arr, i) for i, path in enumerate(members)})
            where.update({path: gname for path in members})
        write_coord(out, TIMESTEP, timesteps)
        out.attrs.update({"layers": layers, "groups": where, "store_tokens": params.store_tokens,
                          "conv_layers": list(params.conv_layers), "n_frames": n})
        steps = [i for i in range(len(timesteps)) if params.store_tokens or i < conv_steps]
        blocks = [steps[b:b + span] for b in range(0, len(steps), span)]
        passes = [(block, s0) for block in blocks for s0 in range(0, n, batch)]
        progress = ctx.progress
        before = int(progress.state.get("unet_frame_evals", 0)) if progress is not None else 0
        clipped = int(progress.state.get("int8_clipped", 0)) if progress is not None else 0

        def store(s0: int, found: list, tags: list[str], evals: int, clipped: int) -> None:
            for name, first, value in found:  # value: (timesteps, frames, ...)
                arr, j = arrays[name]
                arr[first:first + value.shape[0], s0:s0 + value.shape[1], j] = value
            if progress is not None:
                progress.mark(*tags, unet_frame_evals=evals, int8_clipped=clipped)

        if progress is not None and progress.resumed:
            whole = sum(all(progress.done(f"t{i}:f{s0}:b{batch}") for i in block)
                        for block, s0 in passes)
            ctx.note(f"features: resuming; an interrupted run stored {whole} of {len(passes)} "
                     "blocks of timesteps and frames")
        with ctx.bar(len(steps) * -(-n // batch), "features") as bar, \
                BackgroundWriter() as writer:
            for block, s0 in passes:
                # a new batch size rechunks: nothing matches
                tags = [f"t{i}:f{s0}:b{batch}" for i in block]
                if progress is not None and all(progress.done(tag) for tag in tags):
                    bar.update(len(block))  # resumed: already stored
                    continue
                frames = range(s0, min(s0 + batch, n))
                found: list[tuple[str, int, np.ndarray]] = []
                buffers: dict[str, np.ndarray] = {}
                for k, i in enumerate(block):
                    tokens, residuals = source.run(i, frames, conv=i < conv_steps)
                    if not params.store_tokens:
                        tokens = {}
                    for name, value in {**tokens, **residuals}.items():
                        if int8:  # conv steps are a prefix: a block's are its first ones
                            q, lost = grids[name].quantize(name, value)
                            clipped += lost
                            if name not in buffers:
                                buffers[name] = np.empty((len(block),) + q.shape, np.int8)
                            buffers[name][k] = q
                        else:
                            found.append((name, i, _host(value)[None]))
                    bar.update(1)
                found += [(name, block[0], buf[:min(len(block), conv_steps - block[0])]
                           if name in params.conv_layers else buf)
                          for name, buf in buffers.items()]
                writer.submit(store, s0, found, tags, before + source.frame_evals, clipped)
        out.attrs["stats"] = {"unet_frame_evals": before + source.frame_evals,
                              **({"int8_clipped": clipped} if int8 else {})}

    @staticmethod
    def _group(out, name: str, timesteps, n: int, channels: int):
        from tokenflow import write_coord

        if name in out:
            return out[name]
        g = out.create_group(name)
        write_coord(g, TIMESTEP, timesteps)
        write_coord(g, FRAME, range(n))
        write_coord(g, CHANNEL, range(channels))
        return g


def _host(value: torch.Tensor) -> np.ndarray:
    import torch

    return value.to(torch.float32).cpu().numpy()


@hookimpl
def register_features(register):
    register(UNetFeatures)
