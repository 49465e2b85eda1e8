"""Correspondence stage ``nn``: nearest-neighbour token fields (docs/algorithm.md section 5).

For every timestep, self-attention layer and frame: the reference keyframes of the frame, and for
each of its tokens the most similar token (cosine similarity of the source-branch norm1 tokens)
of each reference keyframe. Computed once, on the source video's features.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np

from tokenflow import (
    CORRESPONDENCE,
    FEATURES,
    FRAME,
    INVERSION,
    KEYFRAMES,
    LAYER,
    REF,
    TIMESTEP,
    TOKEN,
    Params,
    StageBase,
    StageContext,
    hookimpl,
)

if TYPE_CHECKING:  # pragma: no cover
    import torch


@dataclass(frozen=True)
class NNParams(Params):
    """``references``: ``chunk`` = [keyframe of the frame's chunk, keyframe of the previous
    chunk] (the released blending); ``nearest`` = [nearest keyframe at or before the frame,
    nearest after it] (the paper's linear blending). Set by the blender."""

    references: Literal["chunk", "nearest"] = "chunk"


def reference_frames(keyframes: np.ndarray, n_frames: int, batch_size: int, mode: str) -> np.ndarray:
    """(N, 2) reference keyframes of every frame for one timestep's ``keyframes`` (K,).

    A frame that reads from a single keyframe gets it twice.
    """
    kf = np.asarray(keyframes, dtype=np.int64)
    frames = np.arange(n_frames)
    if mode == "chunk":
        chunk = frames // batch_size
        return np.stack([kf[chunk], kf[np.maximum(chunk - 1, 0)]], axis=1)
    if mode == "nearest":
        order = np.sort(kf)
        after = np.searchsorted(order, frames, side="right")  # first keyframe > f
        prev = order[np.clip(after - 1, 0, len(order) - 1)]
        nxt = order[np.clip(after, 0, len(order) - 1)]
        prev = np.where(prev > frames, nxt, prev)   # before the first keyframe
        nxt = np.where(nxt <= frames, prev, nxt)    # at or after the last keyframe
        return np.stack([prev, nxt], axis=1)
    raise ValueError(f"unknown reference mode {mode!r}")


def nearest_tokens(frames: torch.Tensor, reference: torch.Tensor, batch: int = 4) -> torch.Tensor:
    """For each token of ``frames`` (F, S, C), the index of the most cosine-similar token of
    ``reference`` (S', C): (F, S) int64. ``batch`` frames at a time bound the (S, S') memory."""
    import torch
    import torch.nn.functional as F

    b = F.normalize(reference, dim=-1).transpose(0, 1)
    out = [torch.matmul(F.normalize(frames[s:s + batch], dim=-1), b).argmax(dim=-1)
           for s in range(0, frames.shape[0], batch)]
    return torch.cat(out)


class NNCorrespondence(StageBase):
    kind = CORRESPONDENCE
    name = "nn"
    version = 1
    requires = (INVERSION, FEATURES, KEYFRAMES)
    reads_config = ("steps", "batch_size")
    Params = NNParams
    summary = "nearest-neighbour token fields of the source video to the reference keyframes"

    def estimate_bytes(self, ctx: StageContext) -> int:
        from tokenflow import layer_shapes

        n, h, w = ctx.frames.shape[:3]
        f = ctx.model.vae_scale_factor
        shapes = layer_shapes(ctx.model.unet, (h // f, w // f))
        tokens = sum(s[0] for p, s in shapes.items() if p.endswith(".attn1"))
        return 4 * 2 * n * ctx.config.steps * tokens

    def frame_evaluations(self, ctx: StageContext) -> int:
        """0 when the feature store keeps its tokens; otherwise, at most: a source pass per
        step and group of frames, on the group's frames and the keyframes they read from outside
        it (one per group but the first with ``chunk`` references, up to two with ``nearest``)."""
        features = ctx.stages.get(FEATURES)
        if features is None or getattr(features.params, "store_tokens", True):
            return 0
        n = len(ctx.frames)
        group = max(1, int(ctx.options.get("unet_batch", ctx.config.batch_size)))
        groups = -(-n // group)
        outside = groups - 1 if self.params.references == "chunk" else 2 * groups
        return ctx.config.steps * (n + outside)

    def run(self, ctx: StageContext) -> None:
        import torch

        from tokenflow import BackgroundWriter, FeatureReader, SourcePass, create_array, write_coord

        feats = FeatureReader(ctx.inputs[FEATURES], SourcePass(ctx.model, ctx.inputs[INVERSION]))
        keyframes = np.asarray(ctx.inputs[KEYFRAMES]["keyframes"][...])
        steps, n = len(feats.timesteps), feats.n_frames
        refs = np.stack([reference_frames(keyframes[i], n, ctx.config.batch_size,
                                          self.params.references) for i in range(steps)])
        out = ctx.output
        write_coord(out, TIMESTEP, feats.timesteps)
        write_coord(out, FRAME, range(n))
        write_coord(out, REF, [0, 1])
        create_array(out, "reference", dims=(TIMESTEP, FRAME, REF), data=refs)
        # frames per unit of work: whole chunks, as the blender reads them (its UNet batch)
        group = max(1, int(ctx.options.get("unet_batch", ctx.config.batch_size)))
        arrays = {}
        for gname in sorted(set(feats.groups[layer] for layer in feats.layers)):
            members = [layer for layer in feats.layers if feats.groups[layer] == gname]
            tokens = feats.token_count(members[0])
            g = out.require_group(gname)
            write_coord(g, TIMESTEP, feats.timesteps)
            write_coord(g, FRAME, range(n))
            write_coord(g, LAYER, members)
            write_coord(g, REF, [0, 1])
            write_coord(g, TOKEN, range(tokens))
            arr = create_array(g, "index", dims=(TIMESTEP, FRAME, LAYER, REF, TOKEN),
                               shape=(steps, n, len(members), 2, tokens), dtype="int32",
                               chunks=(1, group, 1, 2, tokens))
            for j, layer in enumerate(members):
                arrays[layer] = (arr, j)
        out.attrs["groups"] = {layer: feats.groups[layer] for layer in feats.layers}
        device = ctx.model.device
        # one unit of work: a step, a group of frames with the keyframes they read from, a
        # layer (memory does not grow with the video; without stored tokens, one source pass
        # per step and group serves every layer)
        work = []
        for i in range(steps):
            for s0 in range(0, n, group):
                frames = np.arange(s0, min(s0 + group, n))
                needed = np.union1d(frames, refs[i, frames])
                work.extend((i, layer, frames, needed) for layer in feats.layers)

        def read(item):
            i, layer, _, needed = item
            return feats.tokens(i, layer, needed)

        def store(arr, i: int, j: int, frames: np.ndarray, index: np.ndarray) -> None:
            arr[i, int(frames[0]):int(frames[-1]) + 1, j] = index

        # reading (and decompressing) the next unit's tokens overlaps this one's search, and
        # writing its indices the next one's
        with torch.no_grad(), ctx.bar(len(work), "correspondence") as bar, \
                ThreadPoolExecutor(1, thread_name_prefix="tokenflow-reader") as reader, \
                BackgroundWriter() as writer:
            ahead = reader.submit(read, work[0])
            for k, (i, layer, frames, needed) in enumerate(work):
                x = ahead.result().to(device)
                if k + 1 < len(work):
                    ahead = reader.submit(read, work[k + 1])
                row = {int(f): r for r, f in enumerate(needed)}  # frame -> row of x
                index = np.empty((len(frames), 2, x.shape[1]), dtype=np.int32)
                for r in range(2):
                    for key in np.unique(refs[i, frames, r]):
                        members = np.flatnonzero(refs[i, frames, r] == key)
                        rows = [row[int(f)] for f in frames[members]]
                        index[members, r] = nearest_tokens(x[rows], x[row[int(key)]]).cpu().numpy()
                arr, j = arrays[layer]
                writer.submit(store, arr, i, j, frames, index)
                bar.update(1)


@hookimpl
def register_correspondences(register):
    register(NNCorrespondence)
