"""Train the embedded default model on the procedural world v2 (:mod:`tokenflow.embedded.world2`):
textured, shaded objects on textured backgrounds, in frames of mixed aspect ratios.

    python -m tokenflow.embedded.train vae    --dir CKPT [--steps 2500]    # the autoencoder
    python -m tokenflow.embedded.train unet   --dir CKPT [--steps 6500]    # UNet + text encoder (needs the VAE)
    python -m tokenflow.embedded.train decoder --dir CKPT [--steps 1500]   # decoder-only fine-tune (optional)
    python -m tokenflow.embedded.train export --dir CKPT [--out tokenflow/embedded]   # float16 diffusers dir

Every phase is seeded and resumable: it checkpoints (safetensors, atomically) every
``--every`` steps and at the end, and picks up from the last checkpoint when run again. Progress
goes to a bar on stderr and to ``<dir>/<phase>_log.csv``. Stock diffusers/transformers classes
only, with Stable Diffusion's block layout, so the model runs through exactly the code paths a
full-size SD checkpoint does. docs/embedded-model.md gives the recipe and the measured quality.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from tokenflow.embedded.suggestions import EMBEDDED_DEFAULTS, EMBEDDED_VOCABULARY
from tokenflow.embedded.train_loop import atomic_save, load_checkpoint, psnr, save_checkpoint, train_loop
from tokenflow.embedded.world2 import WORDS, random_scene, render

#: The short side the model works at by default (pixels; its UNet's ``sample_size`` times 8).
RESOLUTION = 96
#: Frame sizes (height, width) the model is trained at: short side 64 or 96, aspect 1:2 to 2:1,
#: every side a multiple of 32 (the UNet's two downsamplings of an 8x latent grid).
TRAIN_SHAPES: tuple[tuple[int, int], ...] = (
    (96, 96), (96, 128), (128, 96), (96, 160), (160, 96), (96, 192), (192, 96),
    (64, 64), (64, 96), (96, 64), (64, 128), (128, 64))
#: The autoencoder is convolutional: it trains on crops of this size from frames of every shape.
VAE_CROP = 64
#: How much more an object's pixel counts than a background pixel in the autoencoder's loss.
OBJECT_WEIGHT = 4.0
TEXT_LENGTH = 32
UNET_CONFIG = dict(
    sample_size=RESOLUTION // 8, in_channels=8, out_channels=8,
    down_block_types=("CrossAttnDownBlock2D",) * 2 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 2,
    block_out_channels=(64, 128, 128), layers_per_block=2, norm_num_groups=16,
    cross_attention_dim=64, attention_head_dim=4,
)
VAE_CONFIG = dict(
    in_channels=3, out_channels=3, latent_channels=8, sample_size=RESOLUTION,
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(32, 64, 128, 128), layers_per_block=1, norm_num_groups=16,
)


def _threads() -> None:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def _random_shape(rng: np.random.Generator) -> tuple[int, int]:
    return TRAIN_SHAPES[int(rng.integers(len(TRAIN_SHAPES)))]


def scene_batch(seed: int, step: int, n: int, shape: tuple[int, int] | None = None
                ) -> tuple[np.ndarray, list[str]]:
    """``n`` frames of one shape (drawn from :data:`TRAIN_SHAPES` unless given) and their
    captions; the same for the same (seed, step)."""
    rng = np.random.default_rng([seed, step])
    if shape is None:
        shape = _random_shape(rng)
    images, captions = [], []
    for _ in range(n):
        scene = random_scene(rng, height=shape[0], width=shape[1])
        images.append(render(scene, *shape)[0])
        captions.append(scene.caption())
    return np.stack(images), captions


def crop_batch(seed: int, step: int, n: int, size: int = VAE_CROP) -> tuple[np.ndarray, np.ndarray]:
    """``n`` random ``size x size`` crops of frames of random shapes, and where their objects are
    (the autoencoder's data)."""
    rng = np.random.default_rng([seed, step, 1])
    crops, masks = [], []
    for _ in range(n):
        shape = _random_shape(rng)
        image, things = render(random_scene(rng, height=shape[0], width=shape[1]), *shape)
        y, x = int(rng.integers(shape[0] - size + 1)), int(rng.integers(shape[1] - size + 1))
        crops.append(image[y:y + size, x:x + size])
        masks.append(things.any(axis=0)[y:y + size, x:x + size])
    return np.stack(crops), np.stack(masks)


def reconstruction_loss(rec: torch.Tensor, x: torch.Tensor, objects: np.ndarray
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """L1 + MSE with object pixels weighted :data:`OBJECT_WEIGHT` times (objects cover a small
    part of a frame, and their colour and texture are what captions name), and the plain MSE."""
    weight = 1 + (OBJECT_WEIGHT - 1) * torch.from_numpy(objects).float()[:, None]
    weight = weight / weight.mean()
    diff = rec - x
    return (weight * (diff.abs() + diff.square())).mean(), diff.square().mean()


def to_pixels(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1


def build_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(**VAE_CONFIG)


def train_vae(directory: Path, steps: int, batch: int = 16, lr: float = 1e-3, seed: int = 0,
              every: int = 200, kl_weight: float = 1e-6) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    vae = build_vae()
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)

    def compute(step: int):
        images, objects = crop_batch(seed, step, batch)
        x = to_pixels(images)
        generator = torch.Generator().manual_seed(seed * 1_000_003 + step)
        posterior = vae.encode(x).latent_dist
        rec = vae.decode(posterior.sample(generator)).sample
        loss, mse = reconstruction_loss(rec, x, objects)
        return loss + kl_weight * posterior.kl().mean(), {"psnr": psnr(mse)}

    train_loop(directory, "vae", {"model": vae}, opt, list(vae.parameters()), steps, lr=lr,
               warmup=100, every=every, compute=compute, metrics=("psnr",))


def train_decoder(directory: Path, steps: int, batch: int = 16, lr: float = 5e-4, seed: int = 0,
                  every: int = 200) -> None:
    """Fine-tune the VAE decoder alone on posterior means, the latents inference decodes.

    The encoder, and so the latent space the UNet learns, stays exactly as the VAE phase left it.
    """
    vae = build_vae()
    if load_checkpoint(directory, "vae", {"model": vae}, None)["step"] == 0:
        raise SystemExit("train the VAE first: python -m tokenflow.embedded.train vae --dir " + str(directory))
    decoder = {"post_quant_conv": vae.post_quant_conv, "decoder": vae.decoder}
    params = [p for m in decoder.values() for p in m.parameters()]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    vae.encoder.requires_grad_(False)
    vae.quant_conv.requires_grad_(False)

    def compute(step: int):
        images, objects = crop_batch(seed + 30_000, step, batch)
        x = to_pixels(images)
        with torch.no_grad():
            z = vae.encode(x).latent_dist.mean
        rec = vae.decode(z).sample
        loss, mse = reconstruction_loss(rec, x, objects)
        return loss, {"psnr": psnr(mse)}

    train_loop(directory, "decoder", decoder, opt, params, steps, lr=lr, warmup=50, every=every,
                compute=compute, metrics=("psnr",))


def load_vae(directory: Path):
    """The trained VAE: the VAE phase's weights, with the fine-tuned decoder if there is one."""
    vae = build_vae()
    load_checkpoint(directory, "vae", {"model": vae}, None)
    load_checkpoint(directory, "decoder", {"post_quant_conv": vae.post_quant_conv,
                                           "decoder": vae.decoder}, None)
    return vae


@torch.no_grad()
def scaling_factor(vae, seed: int = 1, n: int = 512) -> float:
    """1 / std of the posterior means of ``n`` fresh frames of the training shapes (Stable
    Diffusion's recipe)."""
    means = [vae.encode(to_pixels(scene_batch(seed + 10_000, k, 32)[0])).latent_dist.mean.flatten()
             for k in range(max(1, n // 32))]
    return float(1.0 / torch.cat(means).std())


def build_text(tokenizer_dir: Path):
    from transformers import CLIPTextConfig, CLIPTextModel

    from tokenflow.embedded.tokenizer import tiny_tokenizer

    tokenizer = tiny_tokenizer(tokenizer_dir, extra_words=WORDS)
    tokenizer.model_max_length = TEXT_LENGTH
    text = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=256, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=TEXT_LENGTH, projection_dim=64,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    ))
    return tokenizer, text


def build_unet():
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(**UNET_CONFIG)


def _latent_dataset(directory: Path, vae, scale: float, n: int, seed: int):
    """Posterior means and stds of about ``n`` frames, an equal share of each training shape, with
    their captions: ``{shape: (mean, std, captions)}``, cached in ``directory``."""
    path = directory / f"latents-v2-{n}-{seed}.safetensors"
    captions_path = path.with_suffix(".json")
    if path.exists() and captions_path.exists():
        tensors, captions = load_file(str(path)), json.loads(captions_path.read_text())
    else:
        tensors, captions = _encode_dataset(vae, scale, max(1, n // len(TRAIN_SHAPES)), seed)
        atomic_save(tensors, path)
        tmp = captions_path.with_name(f".{captions_path.name}.tmp")
        tmp.write_text(json.dumps(captions))
        os.replace(tmp, captions_path)
    names = {shape: f"{shape[0]}x{shape[1]}" for shape in TRAIN_SHAPES}
    return {shape: (tensors[f"mean_{name}"], tensors[f"std_{name}"], captions[name])
            for shape, name in names.items()}


@torch.no_grad()
def _encode_dataset(vae, scale: float, per_shape: int, seed: int):
    """``per_shape`` frames of each training shape, encoded: ``mean_HxW`` / ``std_HxW`` tensors
    (scaled) and ``{HxW: captions}``."""
    from tqdm.auto import tqdm

    tensors, captions = {}, {}
    bar = tqdm(total=per_shape * len(TRAIN_SHAPES), desc="encode dataset", dynamic_ncols=True)
    for k, shape in enumerate(TRAIN_SHAPES):
        means, stds, caps = [], [], []
        for i in range(0, per_shape, 32):
            images, batch_caps = scene_batch(seed + 20_000, k * 1_000_000 + i, min(32, per_shape - i), shape)
            posterior = vae.encode(to_pixels(images)).latent_dist
            means.append(posterior.mean * scale)
            stds.append(posterior.std * scale)
            caps += batch_caps
            bar.update(len(images))
        name = f"{shape[0]}x{shape[1]}"
        tensors[f"mean_{name}"], tensors[f"std_{name}"] = torch.cat(means), torch.cat(stds)
        captions[name] = caps
    bar.close()
    return tensors, captions


def train_unet(directory: Path, steps: int, batch: int = 32, lr: float = 1e-3, seed: int = 0,
               every: int = 250, dataset: int = 36_000, drop: float = 0.1, ema: float = 0.999,
               snr_gamma: float = 5.0) -> None:
    from diffusers import DDPMScheduler

    from tokenflow.models import SD_SCHEDULER_CONFIG

    vae = build_vae()
    if load_checkpoint(directory, "vae", {"model": vae}, None)["step"] == 0:
        raise SystemExit("train the VAE first: python -m tokenflow.embedded.train vae --dir " + str(directory))
    vae.eval().requires_grad_(False)
    state = directory / "unet_state.json"  # a resumed run reads the factor its start measured
    scale = json.loads(state.read_text())["scaling_factor"] if state.exists() else scaling_factor(vae)
    buckets = _latent_dataset(directory, vae, scale, dataset, seed)
    torch.manual_seed(seed)
    tokenizer, text = build_text(directory / "tokenizer")
    unet = build_unet()
    ema_unet, ema_text = build_unet(), build_text(directory / "tokenizer")[1]
    ema_unet.load_state_dict(unet.state_dict())
    ema_text.load_state_dict(text.state_dict())
    params = list(unet.parameters()) + list(text.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-2)
    modules = {"unet": unet, "text": text, "ema_unet": ema_unet, "ema_text": ema_text}

    def token_ids(captions: list[str]) -> torch.Tensor:
        return tokenizer(captions, padding="max_length", max_length=TEXT_LENGTH, truncation=True,
                         return_tensors="pt").input_ids

    empty = token_ids([""])[0]
    data = [(mean, std, token_ids(captions)) for mean, std, captions in buckets.values()]
    noise_sched = DDPMScheduler.from_config({**SD_SCHEDULER_CONFIG})
    alphas = noise_sched.alphas_cumprod
    snr = alphas / (1 - alphas)

    def compute(step: int):
        g = torch.Generator().manual_seed(seed * 1_000_003 + step)
        mean, std, ids = data[int(torch.randint(len(data), (1,), generator=g))]  # one shape a step
        index = torch.randint(len(ids), (batch,), generator=g)
        x0 = mean[index] + std[index] * torch.randn(mean[index].shape, generator=g)
        tokens = ids[index].clone()
        tokens[torch.rand(batch, generator=g) < drop] = empty
        t = torch.randint(0, noise_sched.config.num_train_timesteps, (batch,), generator=g)
        noise = torch.randn(x0.shape, generator=g)
        xt = noise_sched.add_noise(x0, noise, t)
        pred = unet(xt, t, encoder_hidden_states=text(tokens)[0]).sample
        weight = torch.clamp(snr[t], max=snr_gamma) / snr[t]  # min-SNR weighting, eps prediction
        return (weight * (pred - noise).pow(2).mean(dim=(1, 2, 3))).mean(), {}

    @torch.no_grad()
    def update_ema(step: int) -> None:
        decay = min(ema, (1 + step) / (10 + step))
        for src, dst in ((unet, ema_unet), (text, ema_text)):
            for p_src, p_dst in zip(src.parameters(), dst.parameters()):
                p_dst.lerp_(p_src, 1 - decay)

    train_loop(directory, "unet", modules, opt, params, steps, lr=lr, warmup=200, every=every,
                compute=compute, after=update_ema, extra={"scaling_factor": scale})


#: Control-image embedding channels of the embedded ControlNet: 3 stride-2 convolutions, 64 -> 8 px.
CONTROLNET_EMBEDDING = (16, 32, 64, 64)


def make_controlnet(unet):
    """The embedded model's ControlNet, before training: the UNet's encoder without its attention
    (plain ``DownBlock2D`` blocks and a resnet-only ``UNetMidBlock2D``, stock diffusers options)
    and with its convolution weights copied. It outputs the residuals the UNet expects (same
    channels, levels and layers per block) at 60 % of ``ControlNetModel.from_unet``'s size, which
    keeps the package's safetensors within 30 MB; canny edges need no text."""
    from diffusers import ControlNetModel

    config = unet.config
    net = ControlNetModel(
        in_channels=config.in_channels, block_out_channels=tuple(config.block_out_channels),
        down_block_types=("DownBlock2D",) * len(config.block_out_channels),
        mid_block_type="UNetMidBlock2D", layers_per_block=config.layers_per_block,
        norm_num_groups=config.norm_num_groups, norm_eps=config.norm_eps,
        cross_attention_dim=config.cross_attention_dim,
        attention_head_dim=config.attention_head_dim, flip_sin_to_cos=config.flip_sin_to_cos,
        freq_shift=config.freq_shift, downsample_padding=config.downsample_padding,
        act_fn=config.act_fn, conditioning_embedding_out_channels=CONTROLNET_EMBEDDING)
    own = net.state_dict()
    copied = {k: v for k, v in unet.state_dict().items() if k in own and own[k].shape == v.shape}
    net.load_state_dict(copied, strict=False)
    return net


def train_controlnet(directory: Path, steps: int, batch: int = 32, lr: float = 5e-4,
                     seed: int = 0, every: int = 250, drop: float = 0.1,
                     snr_gamma: float = 5.0, model_dir: Path | None = None) -> None:
    """A canny-edge ControlNet for the exported model (``model_dir``, default the embedded one):
    frozen VAE, text encoder and UNet; the ControlNet starts as the UNet's encoder without its
    attention (:func:`make_controlnet`) with zero output convolutions, and learns to predict the
    noise together with the UNet from the canny edges of each scene: the ``canny`` control
    extractor that inference uses, looked up through the plugin hook."""
    from diffusers import DDPMScheduler

    from tokenflow.editing.controls import get_extractor
    from tokenflow.manager import make_plugin_manager
    from tokenflow.models import SD_SCHEDULER_CONFIG, load_model

    canny = get_extractor(make_plugin_manager(load_entry_points=True), "canny")

    model = load_model(str(model_dir) if model_dir else None, device="cpu", dtype=torch.float32)
    torch.manual_seed(seed)
    net = make_controlnet(model.unet)
    net.train()
    params = list(net.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-2)
    empty = model.tokenizer([""], padding="max_length", max_length=model.tokenizer.model_max_length,
                            truncation=True, return_tensors="pt").input_ids
    noise_sched = DDPMScheduler.from_config({**SD_SCHEDULER_CONFIG})
    alphas = noise_sched.alphas_cumprod
    snr = alphas / (1 - alphas)
    scale = model.scaling_factor

    def compute(step: int):
        images, captions = scene_batch(seed + 40_000, step, batch)
        g = torch.Generator().manual_seed(seed * 1_000_003 + step)
        with torch.no_grad():
            x0 = model.vae.encode(to_pixels(images)).latent_dist.mean * scale
            ids = model.tokenizer(captions, padding="max_length", truncation=True,
                                  max_length=model.tokenizer.model_max_length,
                                  return_tensors="pt").input_ids
            ids[torch.rand(batch, generator=g) < drop] = empty[0]
            emb = model.text_encoder(ids)[0]
        control = torch.from_numpy(canny(images)).permute(0, 3, 1, 2)
        t = torch.randint(0, noise_sched.config.num_train_timesteps, (batch,), generator=g)
        noise = torch.randn(x0.shape, generator=g)
        xt = noise_sched.add_noise(x0, noise, t)
        down, mid = net(xt, t, encoder_hidden_states=emb, controlnet_cond=control, return_dict=False)
        pred = model.unet(xt, t, encoder_hidden_states=emb, down_block_additional_residuals=down,
                          mid_block_additional_residual=mid).sample
        weight = torch.clamp(snr[t], max=snr_gamma) / snr[t]
        return (weight * (pred - noise).pow(2).mean(dim=(1, 2, 3))).mean(), {}

    train_loop(directory, "controlnet", {"controlnet": net}, opt, params, steps, lr=lr,
               warmup=100, every=every, compute=compute)


def export_controlnet(directory: Path, out: Path, dtype: str = "float16") -> Path:
    """Write the trained ControlNet as a diffusers directory (safetensors, ``dtype``)."""
    import shutil

    from tokenflow.models import load_model

    model = load_model(None, device="cpu", dtype=torch.float32)
    net = make_controlnet(model.unet)
    if load_checkpoint(directory, "controlnet", {"controlnet": net}, None)["step"] == 0:
        raise SystemExit("nothing to export: train the ControlNet first")
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    net.to(getattr(torch, dtype)).save_pretrained(tmp, safe_serialization=True)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    extras = out.parent / "tokenflow.json"
    if extras.is_file():  # the model now suggests its ControlNet (a path relative to the model)
        data = json.loads(extras.read_text())
        data.setdefault("defaults", {})["editor.controlnet"] = out.name
        tmp_extras = extras.with_name(f".{extras.name}.tmp")
        tmp_extras.write_text(json.dumps(data, indent=2) + "\n")
        os.replace(tmp_extras, extras)
    return out


def export(directory: Path, out: Path, dtype: str = "float16") -> Path:
    """Write the EMA weights as a diffusers SD directory (safetensors, ``dtype``)."""
    import shutil

    from diffusers import DDIMScheduler, StableDiffusionPipeline

    from tokenflow.embedded.tokenizer import write_tokenizer_files
    from tokenflow.models import SD_SCHEDULER_CONFIG

    vae = load_vae(directory)
    tokenizer, text = build_text(directory / "tokenizer")
    unet = build_unet()
    state = load_checkpoint(directory, "unet", {"ema_unet": unet, "ema_text": text}, None)
    if state["step"] == 0:
        raise SystemExit("nothing to export: train the UNet first")
    vae.register_to_config(scaling_factor=state["scaling_factor"])
    torch_dtype = getattr(torch, dtype)
    pipe = StableDiffusionPipeline(
        vae=vae.to(torch_dtype), text_encoder=text.to(torch_dtype), tokenizer=tokenizer,
        unet=unet.to(torch_dtype), scheduler=DDIMScheduler.from_config(SD_SCHEDULER_CONFIG),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    pipe.save_pretrained(tmp, safe_serialization=True)
    write_tokenizer_files(tmp / "tokenizer", WORDS)
    defaults = dict(EMBEDDED_DEFAULTS)
    controlnet = out / "controlnet-canny"
    fits = _controlnet_fits(controlnet, dict(unet.config))
    if not fits:
        defaults.pop("editor.controlnet", None)  # until ``train controlnet`` makes one for this UNet
    (tmp / "tokenflow.json").write_text(json.dumps({
        "label": "tokenflow's embedded model: a small SD-shaped latent diffusion model trained on "
                 "procedural scenes (tokenflow.embedded.world2) at 64 to 96 pixels, any aspect "
                 "from 1:2 to 2:1",
        "trained_steps": {"unet": state["step"]},
        "vocabulary": EMBEDDED_VOCABULARY,
        "defaults": defaults,
    }, indent=2) + "\n")
    _install(tmp, out)
    if not fits and controlnet.is_dir():
        shutil.rmtree(controlnet)  # trained for another UNet
    return out


def _controlnet_fits(directory: Path, unet_config: dict) -> bool:
    """Whether the ControlNet in ``directory`` was made for a UNet of this configuration."""
    from tokenflow.models.controlnet import controlnet_misfit

    config = directory / "config.json"
    return config.is_file() and controlnet_misfit(json.loads(config.read_text()), unet_config) is None


def _install(tmp: Path, out: Path) -> None:
    """Move every entry of ``tmp`` into ``out``, replacing entries of the same name and leaving
    everything else in ``out`` (the package's own modules, the ControlNet) where it is."""
    import shutil

    out.mkdir(parents=True, exist_ok=True)
    for entry in sorted(tmp.iterdir()):
        target = out / entry.name
        old = out / f".{entry.name}.old"
        shutil.rmtree(old, ignore_errors=True)
        if target.exists():
            os.replace(target, old)
        os.replace(entry, target)
        if old.is_dir():
            shutil.rmtree(old)
        elif old.exists():
            old.unlink()
    tmp.rmdir()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tokenflow.embedded.train", description=__doc__.split("\n\n")[0])
    parser.add_argument("phase", choices=("vae", "unet", "decoder", "export", "controlnet",
                                          "export-controlnet"))
    parser.add_argument("--dir", type=Path, default=Path.home() / ".cache" / "tokenflow-train-v2")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent)
    args = parser.parse_args(argv)
    _threads()
    args.dir.mkdir(parents=True, exist_ok=True)
    if args.phase == "vae":
        train_vae(args.dir, args.steps or 2500, seed=args.seed)
    elif args.phase == "unet":
        train_unet(args.dir, args.steps or 6500, seed=args.seed)
    elif args.phase == "decoder":
        train_decoder(args.dir, args.steps or 1500, seed=args.seed)
    elif args.phase == "controlnet":
        train_controlnet(args.dir, args.steps or 1500, seed=args.seed)
    elif args.phase == "export-controlnet":
        out = args.out if args.out != Path(__file__).parent else (
            Path(__file__).parent / "controlnet-canny")
        print(export_controlnet(args.dir, out))
    else:
        print(export(args.dir, args.out))


if __name__ == "__main__":
    main()
