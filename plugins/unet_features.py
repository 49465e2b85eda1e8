"""Feature-store stage ``unet``: the source branch's tokens and conv residuals (ALGORITHM.md 2).

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

from tokenflow import FEATURES, INVERSION, Params, StageBase, StageContext, StageError, hookimpl
from tokenflow.attention import AttentionState, tokenflow_attention
from tokenflow.cache.store import create_array, write_coord
from tokenflow.layouts import group_name, layer_shapes, read_timesteps
from tokenflow.stages import CHANNEL, FRAME, HEIGHT, LAYER, TIMESTEP, TOKEN, WIDTH


@dataclass(frozen=True)
class UNetFeatureParams(Params):
    """``conv_layers``: ResNets whose residual is kept (module paths); ``conv_t``: fraction of
    the editing steps, from the noisiest, for which it is kept; ``dtype``: storage precision."""

    conv_layers: tuple[str, ...] = ("up_blocks.1.resnets.1",)
    conv_t: float = 0.8
    dtype: Literal["float16", "float32"] = "float16"

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
        conv = sum(int(np.prod(shapes[p])) for p in self.params.conv_layers if p in shapes)
        steps = ctx.config.steps
        return item * n * (steps * tokens + self.conv_steps(steps) * conv)

    def run(self, ctx: StageContext) -> None:
        model, out = ctx.model, ctx.output
        inv = ctx.inputs[INVERSION]
        timesteps = read_timesteps(inv)
        latents = inv["latents"]
        n = int(latents.shape[1])
        lat_hw = tuple(int(s) for s in latents.shape[3:])
        for path in self.params.conv_layers:
            try:
                model.unet.get_submodule(f"{path}.conv2")
            except AttributeError:
                raise StageError(f"the UNet has no ResNet {path!r} (conv_layers)") from None
        conv_steps = self.conv_steps(len(timesteps))
        text = model.encode_prompts([str(inv.attrs.get("prompt", ""))])
        batch = int(ctx.options.get("unet_batch", ctx.config.batch_size))
        dtype = self.params.dtype
        shapes = layer_shapes(model.unet, lat_hw)
        state = AttentionState()
        arrays: dict[str, tuple] = {}
        with torch.no_grad(), tokenflow_attention(model.unet, state, self.params.conv_layers) as layers:
            groups: dict[str, list[str]] = {}
            for layer in layers:
                s, c = shapes[layer][0], shapes[layer][1]
                hh, ww = shapes[layer][2:]
                groups.setdefault(group_name(hh, ww, c), []).append(layer)
            conv_groups: dict[str, list[str]] = {}
            for path in self.params.conv_layers:
                c, hh, ww = shapes[path]
                conv_groups.setdefault(group_name(hh, ww, c), []).append(path)
            where = {}
            for gname, members in groups.items():
                g = out.require_group(gname)
                s, c = shapes[members[0]][:2]
                write_coord(g, TIMESTEP, timesteps)
                write_coord(g, FRAME, range(n))
                write_coord(g, LAYER, members)
                arr = create_array(g, "tokens", dims=(TIMESTEP, FRAME, LAYER, TOKEN, CHANNEL),
                                   shape=(len(timesteps), n, len(members), s, c), dtype=dtype,
                                   chunks=(1, batch, 1, s, c))
                for i, layer in enumerate(members):
                    arrays[layer] = (arr, i)
                    where[layer] = gname
            for gname, members in conv_groups.items():
                g = out.require_group(gname)
                c, hh, ww = shapes[members[0]]
                if TIMESTEP not in g:
                    write_coord(g, TIMESTEP, timesteps)
                    write_coord(g, FRAME, range(n))
                write_coord(g, "conv_timestep", timesteps[:conv_steps])
                write_coord(g, "conv_layer", members)
                arr = create_array(g, "conv", dims=("conv_timestep", FRAME, "conv_layer", CHANNEL,
                                                    HEIGHT, WIDTH),
                                   shape=(conv_steps, n, len(members), c, hh, ww), dtype=dtype,
                                   chunks=(1, batch, 1, c, hh, ww))
                for i, path in enumerate(members):
                    arrays[path] = (arr, i)
                    where[path] = gname
            write_coord(out, TIMESTEP, timesteps)
            out.attrs.update({"layers": layers, "groups": where,
                              "conv_layers": list(self.params.conv_layers)})
            evals = 0
            with ctx.bar(len(timesteps) * n, "features") as bar:
                for i, t in enumerate(timesteps):
                    for s0 in range(0, n, batch):
                        x = torch.from_numpy(np.asarray(latents[i, s0:s0 + batch]))
                        state.record = {}
                        state.record_conv = {} if i < conv_steps else None
                        record, record_conv = state.record, state.record_conv
                        emb = text.expand(x.shape[0], -1, -1).to(model.device, model.dtype)
                        model.unet(x.to(model.device, model.dtype), t, encoder_hidden_states=emb,
                                   return_dict=False)
                        for name, value in {**record, **(record_conv or {})}.items():
                            arr, j = arrays[name]
                            arr[i, s0:s0 + x.shape[0], j] = value.to(torch.float32).cpu().numpy()
                        evals += x.shape[0]
                        bar.update(x.shape[0])
        out.attrs["stats"] = {"unet_frame_evals": evals}


@hookimpl
def register_features(register):
    register(UNetFeatures)
