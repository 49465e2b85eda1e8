"""Is a bfloat16 UNet faster on this CPU? Milliseconds per UNet frame-evaluation, float32 against
bfloat16 (autocast, and a bfloat16 copy of the weights), interleaved.

    python benchmarks/bf16_unet.py [--models embedded,wall] [--batch 16] [--repeat 7]

``embedded``: the embedded model at its native 64x64 (latents 8x8); ``wall``: the random
SD-2.1-base-shaped model of benchmarks/wall_time.py at 128x192 (latents 16x24). One torch thread,
a plain UNet call (no tokenflow processors) on random latents and text, timestep 500. Also prints
the relative error of each bfloat16 output against float32's. Prints one Markdown table.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def load(name: str, tmp: Path):
    from wall_time import UNET, VAE  # benchmarks/wall_time.py (the script directory is on sys.path)

    from tokenflow.models import load_model
    from tokenflow.testing.tiny import save_tiny_model

    if name == "embedded":
        return load_model(None, device="cpu", dtype="float32"), (8, 8)
    path = save_tiny_model(tmp / name, "sd21", seed=0, sample_size=16, unet=UNET, vae=VAE)
    return load_model(str(path), device="cpu", dtype="float32"), (16, 24)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="embedded,wall")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)
    print(f"{os.cpu_count()} cores, 1 torch thread, torch {torch.__version__}, batch {args.batch}, "
          f"median of {args.repeat} interleaved calls\n")
    print("| model | latents | float32 ms | autocast bf16 ms (ratio) | bf16 weights ms (ratio) "
          "| rel. error autocast / weights |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="tf-bf16-") as tmp, torch.no_grad():
        for name in args.models.split(","):
            model, hw = load(name, Path(tmp))
            unet = model.unet
            unet_bf16 = copy.deepcopy(unet).to(torch.bfloat16)
            gen = torch.Generator().manual_seed(0)
            x = torch.randn(args.batch, unet.config.in_channels, *hw, generator=gen)
            text = torch.randn(args.batch, 77, unet.config.cross_attention_dim, generator=gen)

            def fp32():
                return unet(x, 500, encoder_hidden_states=text).sample

            def autocast():
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    return unet(x, 500, encoder_hidden_states=text).sample.float()

            def weights():
                return unet_bf16(x.bfloat16(), 500,
                                 encoder_hidden_states=text.bfloat16()).sample.float()

            calls = {"fp32": fp32, "autocast": autocast, "weights": weights}
            ref = fp32()
            error = {k: float((f() - ref).norm() / ref.norm()) for k, f in calls.items()}
            ms: dict[str, list[float]] = {k: [] for k in calls}
            for _ in range(args.repeat):
                for k, f in calls.items():
                    start = time.perf_counter()
                    f()
                    ms[k].append((time.perf_counter() - start) * 1000 / args.batch)
            med = {k: statistics.median(v) for k, v in ms.items()}
            print(f"| {name} | {hw[0]}x{hw[1]} | {med['fp32']:.2f} | {med['autocast']:.2f} "
                  f"({med['autocast'] / med['fp32']:.2f}x) | {med['weights']:.2f} "
                  f"({med['weights'] / med['fp32']:.2f}x) | {error['autocast']:.4f} / "
                  f"{error['weights']:.4f} |", flush=True)


if __name__ == "__main__":
    main()
