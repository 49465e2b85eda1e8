"""Quality of the embedded model on held-out scenes of world v2, as a table (issue 13's targets in
the last column).

    python benchmarks/embedded_model.py [--model DIR] [--quick] [--skip-edits] [--count-only]

* VAE: PSNR of encode + decode on frames of every shape the model is trained at.
* Inversion: DDIM inversion (50 steps, source caption, no CFG), then regeneration; PSNR.
* Caption following: samples from captions (50 DDIM steps, CFG 7.5 or ``--guidance``), read by the rules of
  tokenflow.embedded.world2_checks. Colour and texture kind on one-object captions; background on
  every caption; object count on captions naming one to three objects, in non-square frames,
  and what its misses are (extra whole objects, specks, merged objects).
* PnP edits of single frames (``tf run --editor pnp-frames``, the model's defaults): an object's
  colour and texture changed (``a red ball on sand`` -> ``a blue striped ball on sand``); how
  often both show, and how often the object mask keeps IoU >= 0.8 with the source's.

Scenes come from tokenflow.embedded.world2 with seeds the training never used.
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
from tokenflow.embedded.world2 import COLOURS, TEXTURES, random_scene, render
from tokenflow.embedded.world2_checks import mask_iou, object_masks, read_frame
from tokenflow.models import load_model

HELD_OUT = 777_777
#: Pixels from which a counted object is a whole one rather than a speck or a halo (the smallest
#: object of a count scene at 64 px on the short side covers several hundred).
WHOLE_PIXELS = 100
#: (height, width): square, 4:3, 5:3, 2:1 and portraits, at the model's short sides 64 and 96.
SHAPES = ((96, 96), (96, 128), (96, 160), (64, 128), (128, 96), (160, 96), (96, 192), (64, 64))
NON_SQUARE = tuple(s for s in SHAPES if s[0] != s[1])


def held_out(n: int, seed: int, shapes=SHAPES, n_things: int | None = None):
    """``n`` (scene, shape) pairs, cycling through ``shapes``."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        shape = shapes[i % len(shapes)]
        out.append((random_scene(rng, height=shape[0], width=shape[1], n_things=n_things), shape))
    return out


def vae_psnr(model, n: int) -> float:
    values = []
    for scene, shape in held_out(n, HELD_OUT):
        image = render(scene, *shape)[0][None]
        values.append(psnr(model.decode_latents(model.encode_frames(image)), image)[0])
    return float(np.mean(values))


def inversion_psnr(model, n: int, steps: int = 50) -> float:
    from tokenflow_plugins.ddim import invert, inversion_grid

    values = []
    for scene, shape in held_out(n, HELD_OUT + 1):
        image = render(scene, *shape)[0]
        text = model.encode_prompts([scene.caption()])
        x0 = model.encode_frames(image[None])
        _, x_max = invert(model, x0, text, inversion_grid(model, steps), set())
        rec = model.decode_latents(regenerate(model, x_max, text, steps))
        values.append(psnr(rec, image[None])[0])
    return float(np.mean(values))


def _pipeline(model):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(
        vae=model.vae, text_encoder=model.text_encoder, tokenizer=model.tokenizer,
        unet=model.unet, scheduler=model.scheduler, safety_checker=None,
        feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def samples(model, scenes, steps: int = 50, guidance: float = 7.5, seed: int = 0):
    """One sample per (scene, shape), generated from the scene's caption."""
    pipe = _pipeline(model)
    for k, (scene, shape) in enumerate(scenes):
        image = pipe(scene.caption(), num_inference_steps=steps, guidance_scale=guidance,
                     height=shape[0], width=shape[1], output_type="np",
                     generator=torch.Generator().manual_seed(seed + k)).images[0]
        yield scene, (image * 255).round().astype(np.uint8)


def caption_following(model, n: int, guidance: float = 7.5) -> dict[str, float]:
    """Fractions of one-object samples whose object colour, texture kind and background are what
    the caption says."""
    right = dict.fromkeys(("colour", "texture", "background"), 0)
    for scene, image in samples(model, held_out(n, HELD_OUT + 2, n_things=1), guidance=guidance):
        read = read_frame(image)
        right["background"] += read["background"] == scene.background
        if len(read["objects"]) >= 1:
            found = read["objects"][0]
            right["colour"] += found["colour"] == scene.things[0].colour
            right["texture"] += found["texture"] == scene.things[0].texture
    return {k: v / n for k, v in right.items()}


def count_following(model, n: int, guidance: float = 7.5, whole: int = WHOLE_PIXELS
                    ) -> dict[str, float]:
    """Object counts of samples of non-square frames from captions naming one to three objects:
    the fraction counted as captioned, and what the misses are: ``over`` (more objects),
    ``over_whole`` (the largest extra object has at least ``whole`` pixels: an object, not a
    speck or a halo), ``under`` (fewer), and ``count_whole``: the fraction right when only
    objects of ``whole`` pixels or more are counted."""
    tally = dict.fromkeys(("count", "over", "over_whole", "under", "count_whole"), 0)
    for scene, image in samples(model, held_out(n, HELD_OUT + 4, shapes=NON_SQUARE),
                                guidance=guidance, seed=10_000):
        areas = [int(m.sum()) for m in object_masks(image)]  # as read_frame finds them
        want = len(scene.things)
        tally["count"] += len(areas) == want
        tally["over"] += len(areas) > want
        tally["over_whole"] += len(areas) > want and sorted(areas, reverse=True)[want] >= whole
        tally["under"] += len(areas) < want
        tally["count_whole"] += sum(a >= whole for a in areas) == want
    return {k: v / n for k, v in tally.items()}


def pnp_edits(model_arg: str | None, n: int) -> dict[str, float]:
    """Single-frame PnP edits of colour and texture with the model's defaults."""
    from click.testing import CliRunner
    from PIL import Image

    from tokenflow.cli import cli
    from tokenflow.video import write_frames

    rng = np.random.default_rng(HELD_OUT + 3)
    right = dict.fromkeys(("colour", "texture", "kept"), 0)
    ious = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for i, (scene, shape) in enumerate(held_out(n, HELD_OUT + 3, n_things=1)):
            thing = scene.things[0]
            colour = str(rng.choice([c for c in COLOURS if c != thing.colour]))
            texture = str(rng.choice([t for t in TEXTURES if t != thing.texture]))
            target = scene.with_thing(0, colour=colour, texture=texture)
            image, masks = render(scene, *shape)
            write_frames(tmp / f"src{i}", image[None])
            args = ["run", str(tmp / f"src{i}"), "--prompt", target.caption(),
                    "--inversion-prompt", scene.caption(), "--editor", "pnp-frames",
                    "--size", str(min(shape)), "--cache-dir", str(tmp / "cache"),
                    "--out", str(tmp / f"out{i}"), "-q"]
            if model_arg:
                args += ["--model", model_arg]
            result = CliRunner().invoke(cli, args)
            if result.exit_code != 0:
                raise SystemExit(result.output)
            edit = np.asarray(Image.open(tmp / f"out{i}" / "frames" / "00000.png").convert("RGB"))
            read = read_frame(edit)
            found = max(read["objects"], key=lambda o: mask_iou(o["mask"], masks[0]), default=None)
            iou = mask_iou(found["mask"], masks[0]) if found is not None else 0.0
            ious.append(iou)
            right["kept"] += iou >= 0.8
            if found is not None:
                right["colour"] += found["colour"] == colour
                right["texture"] += found["texture"] == texture
    return {**{k: v / n for k, v in right.items()}, "iou": float(np.mean(ious))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="a diffusers dir (default: the embedded model)")
    parser.add_argument("--quick", action="store_true", help="fewer samples (rougher figures)")
    parser.add_argument("--skip-edits", action="store_true", help="leave out the PnP edits")
    parser.add_argument("--count-only", action="store_true",
                        help="only the object-count samples and what their misses are")
    parser.add_argument("--guidance", type=float, default=7.5,
                        help="classifier-free guidance of the caption samples (default 7.5)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    torch.set_num_threads(args.threads)
    model = load_model(args.model, device="cpu", dtype=torch.float32)
    q = 4 if args.quick else 1
    n = 128 // q
    rows = []
    t = time.time()
    if not args.count_only:
        rows.append(("VAE reconstruction PSNR (held-out frames, 8 shapes)",
                     f"{vae_psnr(model, 256 // q):.2f} dB", ">= 28 dB"))
        rows.append(("DDIM inversion + regeneration PSNR (50 steps)",
                     f"{inversion_psnr(model, 32 // q):.2f} dB", ">= 25 dB"))
        caption = caption_following(model, n, args.guidance)
        rows.append((f"caption colour accuracy ({n} one-object samples, CFG {args.guidance:g})",
                     f"{100 * caption['colour']:.1f} %", ">= 90 %"))
        rows.append(("caption texture-kind accuracy (same samples)",
                     f"{100 * caption['texture']:.1f} %", ">= 80 %"))
        rows.append(("caption background accuracy (same samples)",
                     f"{100 * caption['background']:.1f} %", ">= 90 %"))
    count = count_following(model, n, args.guidance)
    rows.append((f"object count as captioned ({n} non-square samples, 1-3 objects)",
                 f"{100 * count['count']:.1f} %", ">= 90 %"))
    rows.append(("count misses: more objects than captioned (of them, the largest extra one of "
                 f">= {WHOLE_PIXELS} px) / fewer",
                 f"{100 * count['over']:.1f} % ({100 * count['over_whole']:.1f} %) / "
                 f"{100 * count['under']:.1f} %", ""))
    rows.append((f"object count counting only objects of >= {WHOLE_PIXELS} px",
                 f"{100 * count['count_whole']:.1f} %", ""))
    if not (args.skip_edits or args.count_only):
        edits = pnp_edits(args.model, 40 // q)
        rows.append(("PnP edit of single frames: target colour", f"{100 * edits['colour']:.1f} %", ""))
        rows.append(("same edits: target texture kind", f"{100 * edits['texture']:.1f} %", ""))
        rows.append(("same edits: object mask IoU >= 0.8 with the source",
                     f"{100 * edits['kept']:.1f} % (mean IoU {edits['iou']:.3f})", ""))
    print(f"embedded model quality: {model.label}; {time.time() - t:.0f} s on "
          f"{torch.get_num_threads()} threads\n")
    print("| measure | value | target |")
    print("|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
