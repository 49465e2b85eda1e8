"""Quality of the embedded model, as a table (issue 3's targets in the last column).

    python benchmarks/embedded_model.py [--model DIR] [--quick]

* VAE: PSNR of encode+decode on held-out scenes.
* Inversion: DDIM inversion (50 steps, source caption, no CFG) then regeneration, PSNR.
* Caption following: samples from captions (50 DDIM steps, CFG 7.5); fraction whose object colour
  (circular mean hue of the saturated pixels) and background match the caption.
* PnP edits of single frames: "a <c> <shape> on <bg>" -> "a <c'> <shape> on <bg>" with
  `tf run --editor pnp-frames`; fraction whose object colour becomes c', and fraction whose object
  mask keeps IoU >= 0.8 with the source's.

Scenes come from tokenflow.embedded.world with seeds the training never used.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from tokenflow.editing.diffusion import psnr, regenerate
from tokenflow.models import load_model
from tokenflow.embedded.world import (
    BACKGROUNDS,
    COLOURS,
    background_kind,
    mask_iou,
    object_colour,
    object_mask,
    random_scene,
    render,
)

HELD_OUT = 777_777


def held_out(n: int, size: int, seed: int = HELD_OUT):
    rng = np.random.default_rng(seed)
    scenes = [random_scene(rng) for _ in range(n)]
    return scenes, np.stack([render(s, size, size)[0] for s in scenes])


def vae_psnr(model, n: int) -> float:
    _, images = held_out(n, model.native_size)
    rec = model.decode_latents(model.encode_frames(images))
    return float(psnr(rec, images).mean())


def inversion_psnr(model, n: int, steps: int = 50) -> float:
    from tokenflow_plugins.ddim import invert, inversion_grid

    scenes, images = held_out(n, model.native_size, HELD_OUT + 1)
    values = []
    for scene, image in zip(scenes, images):
        text = model.encode_prompts([scene.caption()])
        x0 = model.encode_frames(image[None])
        _, x_max = invert(model, x0, text, inversion_grid(model, steps), set())
        rec = model.decode_latents(regenerate(model, x_max, text, steps))
        values.append(psnr(rec, image[None])[0])
    return float(np.mean(values))


def caption_following(model, n: int, steps: int = 50, guidance: float = 7.5) -> tuple[float, float]:
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(
        vae=model.vae, text_encoder=model.text_encoder, tokenizer=model.tokenizer,
        unet=model.unet, scheduler=model.scheduler, safety_checker=None,
        feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    scenes, _ = held_out(n, model.native_size, HELD_OUT + 2)
    colour = background = 0
    for start in range(0, n, 16):
        batch = scenes[start:start + 16]
        images = pipe([s.caption() for s in batch], num_inference_steps=steps,
                      guidance_scale=guidance, height=model.native_size, width=model.native_size,
                      generator=torch.Generator().manual_seed(start), output_type="np").images
        images = (images * 255).round().astype(np.uint8)
        for scene, image in zip(batch, images):
            colour += object_colour(image) == scene.things[0].colour
            background += background_kind(image) == scene.background
    return colour / n, background / n


def pnp_edits(model_arg: str | None, n: int, steps: int = 50) -> tuple[float, float, float]:
    from click.testing import CliRunner

    from tokenflow.cli import cli
    from tokenflow.video import write_frames

    rng = np.random.default_rng(HELD_OUT + 3)
    changed = kept = 0
    ious = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for i in range(n):
            scene = random_scene(rng)
            thing = scene.things[0]
            target = str(rng.choice([c for c in COLOURS if c != thing.colour]))
            edited_scene = scene.with_thing(0, colour=target)
            image, _ = render(scene, 64, 64)
            write_frames(tmp / f"src{i}", image[None])
            args = ["run", str(tmp / f"src{i}"), "--prompt", edited_scene.caption(),
                    "--inversion-prompt", scene.caption(), "--editor", "pnp-frames",
                    "--steps", str(steps), "--cache-dir", str(tmp / "cache"),
                    "--out", str(tmp / f"out{i}"), "-q"]
            if model_arg:
                args += ["--model", model_arg]
            result = CliRunner().invoke(cli, args)
            if result.exit_code != 0:
                raise SystemExit(result.output)
            from PIL import Image

            edit = np.asarray(Image.open(tmp / f"out{i}" / "frames" / "00000.png").convert("RGB"))
            source_mask = object_mask(np.asarray(Image.open(tmp / f"src{i}" / "00000.png")))
            iou = mask_iou(object_mask(edit), source_mask)
            ious.append(iou)
            changed += object_colour(edit) == target
            kept += iou >= 0.8
    return changed / n, kept / n, float(np.mean(ious))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="a diffusers dir (default: the embedded model)")
    parser.add_argument("--quick", action="store_true", help="fewer samples (rougher figures)")
    args = parser.parse_args()
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    torch.set_num_threads(2)
    model = load_model(args.model, device="cpu", dtype=torch.float32)
    q = 4 if args.quick else 1
    rows = []
    t = time.time()
    rows.append(("VAE reconstruction PSNR (held-out scenes)", f"{vae_psnr(model, 256 // q):.2f} dB",
                 ">= 28 dB"))
    rows.append(("DDIM inversion + regeneration PSNR (50 steps)",
                 f"{inversion_psnr(model, 32 // q):.2f} dB", ">= 25 dB"))
    colour, background = caption_following(model, 128 // q)
    rows.append(("caption colour accuracy (samples, CFG 7.5)", f"{100 * colour:.1f} %", ">= 90 %"))
    rows.append(("caption background accuracy", f"{100 * background:.1f} %", ">= 90 %"))
    changed, kept, iou = pnp_edits(args.model, 40 // q)
    rows.append(("PnP edit: object colour changed to the target", f"{100 * changed:.1f} %", ">= 90 %"))
    rows.append(("PnP edit: object mask IoU >= 0.8 with the source", f"{100 * kept:.1f} %",
                 f"(mean IoU {iou:.3f}) >= 0.8"))
    print(f"embedded model quality: {model.label}; backgrounds {len(BACKGROUNDS)}, colours "
          f"{len(COLOURS)}; {time.time() - t:.0f} s on {torch.get_num_threads()} threads\n")
    print("| measure | value | target |")
    print("|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
