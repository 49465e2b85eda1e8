"""Train the embedded default model on the procedural world (:mod:`tokenflow.embedded.world`).

    python -m tokenflow.embedded.train vae    --dir CKPT [--steps 2500]    # the autoencoder
    python -m tokenflow.embedded.train unet   --dir CKPT [--steps 7000]    # UNet + text encoder (needs the VAE)
    python -m tokenflow.embedded.train decoder --dir CKPT [--steps 1500]   # decoder-only fine-tune (optional)
    python -m tokenflow.embedded.train export --dir CKPT [--out tokenflow/embedded]   # float16 diffusers dir

Every phase is seeded and resumable: it checkpoints (safetensors, atomically) every
``--every`` steps and at the end, and picks up from the last checkpoint when run again. Progress
goes to a bar on stderr and to ``<dir>/<phase>_log.csv``. Stock diffusers/transformers classes
only, with Stable Diffusion's architecture, so the model runs through exactly the code paths a
full-size SD checkpoint does. docs/embedded-model.md gives the recipe and the measured quality.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from tokenflow.embedded.suggestions import EMBEDDED_DEFAULTS, EMBEDDED_VOCABULARY
from tokenflow.embedded.world import random_scene, render

RESOLUTION = 64
TEXT_LENGTH = 32
UNET_CONFIG = dict(
    sample_size=RESOLUTION // 8, in_channels=4, out_channels=4,
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    block_out_channels=(32, 64, 64, 64), layers_per_block=2, norm_num_groups=8,
    cross_attention_dim=64, attention_head_dim=4,
)
VAE_CONFIG = dict(
    in_channels=3, out_channels=3, latent_channels=4, sample_size=RESOLUTION,
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(32, 64, 64, 64), layers_per_block=1, norm_num_groups=16,
)


def _threads() -> None:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def scene_batch(seed: int, step: int, n: int) -> tuple[np.ndarray, list[str]]:
    """Images and captions for one step, the same for the same (seed, step)."""
    rng = np.random.default_rng([seed, step])
    images, captions = [], []
    for _ in range(n):
        scene = random_scene(rng, n_things=1 if rng.random() < 0.85 else 2)
        images.append(render(scene, RESOLUTION, RESOLUTION)[0])
        captions.append(scene.caption())
    return np.stack(images), captions


def to_pixels(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1


# --- checkpoints ------------------------------------------------------------------------------


def _atomic_save(tensors: dict[str, torch.Tensor], path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp))
    os.replace(tmp, path)


def _optimizer_tensors(opt: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    out = {}
    for i, state in opt.state_dict()["state"].items():
        for name, value in state.items():
            out[f"{i}.{name}"] = value if torch.is_tensor(value) else torch.tensor(value)
    return out


def _load_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor]) -> None:
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        i, name = key.split(".", 1)
        state.setdefault(int(i), {})[name] = value
    sd = opt.state_dict()
    sd["state"] = state
    opt.load_state_dict(sd)


def save_checkpoint(directory: Path, phase: str, modules: dict, opt, step: int, extra=None) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name, module in modules.items():
        _atomic_save(module.state_dict(), directory / f"{phase}_{name}.safetensors")
    _atomic_save(_optimizer_tensors(opt), directory / f"{phase}_optimizer.safetensors")
    meta = {"step": step, **(extra or {})}
    tmp = directory / f".{phase}_state.json.tmp"
    tmp.write_text(json.dumps(meta))
    os.replace(tmp, directory / f"{phase}_state.json")


def load_checkpoint(directory: Path, phase: str, modules: dict, opt) -> dict:
    state_file = directory / f"{phase}_state.json"
    if not state_file.exists():
        return {"step": 0}
    for name, module in modules.items():
        module.load_state_dict(load_file(str(directory / f"{phase}_{name}.safetensors")))
    if opt is not None:
        _load_optimizer(opt, load_file(str(directory / f"{phase}_optimizer.safetensors")))
    return json.loads(state_file.read_text())


class _Log:
    def __init__(self, path: Path, header: str) -> None:
        self.path = path
        if not path.exists():
            path.write_text(header + "\n")

    def write(self, *values) -> None:
        with self.path.open("a") as fh:
            fh.write(",".join(f"{v:.6g}" if isinstance(v, float) else str(v) for v in values) + "\n")


def _lr(step: int, base: float, warmup: int, total: int) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup))))


# --- phases -----------------------------------------------------------------------------------


def _train_loop(directory: Path, phase: str, modules: dict, opt, params, steps: int, *,
                lr: float, warmup: int, every: int, compute, after=None, extra=None,
                metrics: tuple[str, ...] = ()) -> None:
    """The loop every phase shares: resume, learning-rate schedule, optimiser step with gradient
    clipping, progress bar, CSV log, atomic checkpoints. ``compute(step)`` returns the loss and a
    dict of ``metrics``; ``after(step)`` runs after the optimiser step (EMA)."""
    from tqdm.auto import tqdm

    state = load_checkpoint(directory, phase, modules, opt)
    log = _Log(directory / f"{phase}_log.csv", ",".join(("step", "loss", *metrics, "lr", "seconds")))
    start = time.time()
    bar = tqdm(total=steps, initial=state["step"], desc=phase, dynamic_ncols=True)
    for step in range(state["step"], steps):
        for group in opt.param_groups:
            group["lr"] = _lr(step, lr, warmup, steps)
        loss, values = compute(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if after is not None:
            after(step)
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.4f}", **{k: f"{v:.1f}" for k, v in values.items()})
        if step % 10 == 0:
            log.write(step, loss.item(), *(values[k] for k in metrics), opt.param_groups[0]["lr"],
                      time.time() - start)
        if (step + 1) % every == 0 or step + 1 == steps:
            save_checkpoint(directory, phase, modules, opt, step + 1, extra)
    bar.close()


def _psnr(mse: torch.Tensor) -> float:
    """PSNR in dB of pixels in [-1, 1] (peak-to-peak 2)."""
    return 10 * math.log10(4 / max(mse.item(), 1e-10))


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
        x = to_pixels(scene_batch(seed, step, batch)[0])
        generator = torch.Generator().manual_seed(seed * 1_000_003 + step)
        posterior = vae.encode(x).latent_dist
        rec = vae.decode(posterior.sample(generator)).sample
        mse = F.mse_loss(rec, x)
        loss = F.l1_loss(rec, x) + mse + kl_weight * posterior.kl().mean()
        return loss, {"psnr": _psnr(mse)}

    _train_loop(directory, "vae", {"model": vae}, opt, list(vae.parameters()), steps, lr=lr,
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
        x = to_pixels(scene_batch(seed + 30_000, step, batch)[0])
        with torch.no_grad():
            z = vae.encode(x).latent_dist.mean
        rec = vae.decode(z).sample
        mse = F.mse_loss(rec, x)
        return F.l1_loss(rec, x) + mse, {"psnr": _psnr(mse)}

    _train_loop(directory, "decoder", decoder, opt, params, steps, lr=lr, warmup=50, every=every,
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
    """1 / std of the posterior means over ``n`` fresh scenes (Stable Diffusion's recipe)."""
    images, _ = scene_batch(seed + 10_000, 0, n)
    means = torch.cat([vae.encode(to_pixels(images[i:i + 64])).latent_dist.mean
                       for i in range(0, n, 64)])
    return float(1.0 / means.std())


def build_text(tokenizer_dir: Path):
    from transformers import CLIPTextConfig, CLIPTextModel

    from tokenflow.embedded.tokenizer import tiny_tokenizer

    tokenizer = tiny_tokenizer(tokenizer_dir)
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
    """Posterior means and stds of ``n`` scenes with their captions, cached in ``directory``."""
    path = directory / f"latents-{n}-{seed}.safetensors"
    captions_path = path.with_suffix(".json")
    if path.exists() and captions_path.exists():
        data = load_file(str(path))
        return data["mean"], data["std"], json.loads(captions_path.read_text())
    from tqdm.auto import tqdm

    means, stds, captions = [], [], []
    with torch.no_grad():
        for i in tqdm(range(0, n, 64), desc="encode dataset", dynamic_ncols=True):
            images, caps = scene_batch(seed + 20_000, i // 64, min(64, n - i))
            posterior = vae.encode(to_pixels(images)).latent_dist
            means.append(posterior.mean * scale)
            stds.append(posterior.std * scale)
            captions += caps
    mean, std = torch.cat(means), torch.cat(stds)
    _atomic_save({"mean": mean, "std": std}, path)
    captions_path.write_text(json.dumps(captions))
    return mean, std, captions


def train_unet(directory: Path, steps: int, batch: int = 64, lr: float = 1e-3, seed: int = 0,
               every: int = 250, dataset: int = 40_000, drop: float = 0.1, ema: float = 0.999,
               snr_gamma: float = 5.0) -> None:
    from diffusers import DDPMScheduler

    from tokenflow.models import SD_SCHEDULER_CONFIG

    vae = build_vae()
    if load_checkpoint(directory, "vae", {"model": vae}, None)["step"] == 0:
        raise SystemExit("train the VAE first: python -m tokenflow.embedded.train vae --dir " + str(directory))
    vae.eval().requires_grad_(False)
    scale = scaling_factor(vae)
    mean, std, captions = _latent_dataset(directory, vae, scale, dataset, seed)
    torch.manual_seed(seed)
    tokenizer, text = build_text(directory / "tokenizer")
    unet = build_unet()
    ema_unet, ema_text = build_unet(), build_text(directory / "tokenizer")[1]
    ema_unet.load_state_dict(unet.state_dict())
    ema_text.load_state_dict(text.state_dict())
    params = list(unet.parameters()) + list(text.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-2)
    modules = {"unet": unet, "text": text, "ema_unet": ema_unet, "ema_text": ema_text}
    ids = tokenizer(captions + [""], padding="max_length", max_length=TEXT_LENGTH,
                    truncation=True, return_tensors="pt").input_ids
    empty = ids[-1]
    ids = ids[:-1]
    noise_sched = DDPMScheduler.from_config({**SD_SCHEDULER_CONFIG})
    alphas = noise_sched.alphas_cumprod
    snr = alphas / (1 - alphas)

    def compute(step: int):
        g = torch.Generator().manual_seed(seed * 1_000_003 + step)
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

    _train_loop(directory, "unet", modules, opt, params, steps, lr=lr, warmup=200, every=every,
                compute=compute, after=update_ema, extra={"scaling_factor": scale})


#: Control-image embedding channels of the embedded ControlNet: 3 stride-2 convolutions, 64 -> 8 px.
CONTROLNET_EMBEDDING = (16, 32, 64, 64)


def train_controlnet(directory: Path, steps: int, batch: int = 32, lr: float = 5e-4,
                     seed: int = 0, every: int = 250, drop: float = 0.1,
                     snr_gamma: float = 5.0, model_dir: Path | None = None) -> None:
    """A canny-edge ControlNet for the exported model (``model_dir``, default the embedded one):
    frozen VAE, text encoder and UNet; the ControlNet starts as a copy of the UNet's encoder
    (diffusers' ``from_unet``) with zero output convolutions, and learns to predict the noise
    together with the UNet from the canny edges of each scene: the ``canny`` control extractor
    that inference uses, looked up through the plugin hook."""
    from diffusers import ControlNetModel, DDPMScheduler

    from tokenflow.editing.controls import get_extractor
    from tokenflow.manager import make_plugin_manager
    from tokenflow.models import SD_SCHEDULER_CONFIG, load_model

    canny = get_extractor(make_plugin_manager(load_entry_points=True), "canny")

    model = load_model(str(model_dir) if model_dir else None, device="cpu", dtype=torch.float32)
    torch.manual_seed(seed)
    net = ControlNetModel.from_unet(model.unet, conditioning_embedding_out_channels=CONTROLNET_EMBEDDING)
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

    _train_loop(directory, "controlnet", {"controlnet": net}, opt, params, steps, lr=lr,
                warmup=100, every=every, compute=compute)


def export_controlnet(directory: Path, out: Path, dtype: str = "float16") -> Path:
    """Write the trained ControlNet as a diffusers directory (safetensors, ``dtype``)."""
    import shutil

    from diffusers import ControlNetModel

    from tokenflow.models import load_model

    model = load_model(None, device="cpu", dtype=torch.float32)
    net = ControlNetModel.from_unet(model.unet, conditioning_embedding_out_channels=CONTROLNET_EMBEDDING)
    if load_checkpoint(directory, "controlnet", {"controlnet": net}, None)["step"] == 0:
        raise SystemExit("nothing to export: train the ControlNet first")
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    net.to(getattr(torch, dtype)).save_pretrained(tmp, safe_serialization=True)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
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
    write_tokenizer_files(tmp / "tokenizer")
    (tmp / "tokenflow.json").write_text(json.dumps({
        "label": "tokenflow's embedded model: a tiny SD-shaped latent diffusion model trained on "
                 "procedural scenes (tokenflow.embedded.world) at 64x64",
        "trained_steps": {"unet": state["step"]},
        "vocabulary": EMBEDDED_VOCABULARY,
        "defaults": EMBEDDED_DEFAULTS,
    }, indent=2) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tokenflow.embedded.train", description=__doc__.split("\n\n")[0])
    parser.add_argument("phase", choices=("vae", "unet", "decoder", "export", "controlnet",
                                          "export-controlnet"))
    parser.add_argument("--dir", type=Path, default=Path.home() / ".cache" / "tokenflow-train")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent)
    args = parser.parse_args(argv)
    _threads()
    args.dir.mkdir(parents=True, exist_ok=True)
    if args.phase == "vae":
        train_vae(args.dir, args.steps or 2500, seed=args.seed)
    elif args.phase == "unet":
        train_unet(args.dir, args.steps or 7000, seed=args.seed)
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
