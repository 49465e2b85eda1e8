"""Print the stage-cache size a run writes, per stage, for full-size SD layouts.

No weights are needed: the UNets are built from their published configs on the ``meta`` device
and every stage's own ``estimate_bytes`` is asked (the same figure ``tf run`` prints).

    python benchmarks/cache_size.py [--frames 40] [--size 512] [--steps 50]
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import numpy as np
import torch

SD_BLOCKS = dict(
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    block_out_channels=(320, 640, 1280, 1280),
    layers_per_block=2,
    in_channels=4,
    out_channels=4,
)
LAYOUTS = {
    "SD 1.5": dict(SD_BLOCKS, attention_head_dim=8, cross_attention_dim=768, sample_size=64),
    "SD 2.1": dict(SD_BLOCKS, attention_head_dim=(5, 10, 20, 20), cross_attention_dim=1024,
                   use_linear_projection=True, sample_size=96),
}


@dataclass
class _MetaModel:
    """What the stages' ``estimate_bytes`` read of a model."""

    unet: object
    vae_scale_factor: int = 8


def stage_sizes(unet_config: dict, frames: int, size: tuple[int, int], steps: int,
                batch_size: int = 8, dtype: str = "int8", store_tokens: bool = True
                ) -> dict[str, int]:
    from diffusers import UNet2DConditionModel

    from tokenflow.stages import RunConfig, StageContext
    from tokenflow_plugins.ddim import DDIMInversion
    from tokenflow_plugins.nn_correspondence import NNCorrespondence
    from tokenflow_plugins.pnp import PnPEditor
    from tokenflow_plugins.random_keyframes import RandomKeyframes
    from tokenflow_plugins.tokenflow_blender import TokenFlowBlender
    from tokenflow_plugins.unet_features import UNetFeatures

    with torch.device("meta"):
        unet = UNet2DConditionModel(**unet_config)
    ctx = StageContext(model=_MetaModel(unet), frames=np.zeros((frames, *size, 3), np.uint8),
                       config=RunConfig(steps=steps, batch_size=batch_size))
    features = UNetFeatures(UNetFeatures.Params(dtype=dtype, store_tokens=store_tokens))
    return {
        "inversion": DDIMInversion().estimate_bytes(ctx),
        "features": features.estimate_bytes(ctx),
        "keyframes": RandomKeyframes().estimate_bytes(ctx),
        "correspondence": NNCorrespondence().estimate_bytes(ctx),
        "editor": PnPEditor().estimate_bytes(ctx),
        "blender": TokenFlowBlender().estimate_bytes(ctx),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=40)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=50)
    args = parser.parse_args()
    size = (args.size, args.size)
    print(f"{args.frames} frames at {args.size}x{args.size}, {args.steps} editing steps "
          "(bytes before compression: Zarr's zstd saves a little on floats; the int8 store's "
          "delta coding more, see docs/cache.md)\n")
    header = "| model | storage | inversion | features | keyframes | correspondence | editor | blender | total |"
    print(header)
    print("|---" * (header.count("|") - 1) + "|")
    for name, config in LAYOUTS.items():
        for dtype, store in (("int8", True), ("float16", True), ("float32", True),
                             ("int8", False)):
            sizes = stage_sizes(config, args.frames, size, args.steps, dtype=dtype,
                                store_tokens=store)
            label = (f"{dtype}{' (default)' if dtype == 'int8' else ''}" if store
                     else "store_tokens false")
            cells = " | ".join(f"{v / 2**30:.2f} GiB" if v > 2**28 else f"{v / 2**20:.1f} MiB"
                               for v in sizes.values())
            print(f"| {name} | {label} | {cells} | {sum(sizes.values()) / 2**30:.1f} GiB |")


if __name__ == "__main__":
    main()
