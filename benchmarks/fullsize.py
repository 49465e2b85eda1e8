"""Full-size figures without a GPU: a random-weight pipeline with Stable Diffusion 1.5's exact
configuration, run through `tf run` on the CPU.

    python benchmarks/fullsize.py [--sizes 256,512] [--frames 4] [--steps 2] [--inversion-steps 2]
                                  [--batch-size 2] [--threads 1] [--model-dir DIR] [--keep DIR]

The model (UNet 859,520,964 parameters, VAE 83,653,863, CLIP text encoder 123,060,480, SD 1.5's
DDIM schedule) is built from the configs below with seed 0 (``tokenflow.testing.tiny``, whose
offline tokenizer stands in for CLIP's), saved once as safetensors (about 4.3 GB in float32) in
``--model-dir`` and reused by later runs; a half-built directory is never taken for a built one.

For each size: a plain UNet call and the VAE on one frame (in a process of their own), then one
cold `tf run` of a synthetic clip in its own process. Prints, as Markdown tables: seconds per UNet
frame-evaluation of each stage (wall, from run.json, and CPU seconds without the VAE, which other
processes on the cores disturb less) against the plain call; the UNet frame-evaluation counts
against TokenFlow's formula; wall and CPU time and peak RSS; cache bytes per frame and step of each
stage, measured on disk and extrapolated to 40 and 240 frames at 50 steps (every array scaled by
the sizes of its frame, keyframe and timestep dimensions); and what the frame-evaluation counts of
typical runs cost on an A100 at a published rate.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from measure import dir_size, tf_run  # benchmarks/measure.py (the script directory is on sys.path)

#: Stable Diffusion 1.5's UNet (diffusers' UNet2DConditionModel config, every architectural key).
SD15_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, center_input_sample=False,
    flip_sin_to_cos=True, freq_shift=0,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                      "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, downsample_padding=1,
    mid_block_scale_factor=1, act_fn="silu", norm_num_groups=32, norm_eps=1e-5,
    cross_attention_dim=768, attention_head_dim=8, use_linear_projection=False,
)
#: Its VAE (AutoencoderKL).
SD15_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, sample_size=512, act_fn="silu",
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512), layers_per_block=2, norm_num_groups=32,
    scaling_factor=0.18215,
)
#: Its CLIP ViT-L/14 text encoder (CLIPTextConfig; the token ids come from the offline tokenizer).
SD15_TEXT = dict(
    vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
    num_attention_heads=12, max_position_embeddings=77, projection_dim=768,
    hidden_act="quick_gelu", layer_norm_eps=1e-5,
)
#: Its scheduler as a DDIM config (SD 1.5 ships a PNDM config with these betas).
SD15_SCHEDULER = dict(
    num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
    clip_sample=False, set_alpha_to_one=False, steps_offset=1, prediction_type="epsilon",
    timestep_spacing="leading",
)
#: Published parameter counts of SD 1.5's components.
SD15_PARAMETERS = {"unet": 859_520_964, "vae": 83_653_863, "text_encoder": 123_060_480}

#: A100 rates of SD 1.5 UNet frame-evaluations at 512x512 in float16, from the diffusers
#: documentation's PyTorch 2.0 benchmark ("optimization/torch2.0", table "A100 (batch size: 16)",
#: SD txt2img with runwayml/stable-diffusion-v1-5 in float16, 512x512): 3.04 iterations/s with
#: torch 2.0's SDPA and no compilation, 4.68 with torch.compile (nightly); each iteration is one
#: UNet call on 32 latents (16 images x 2 guidance branches).
A100_RATES = {"A100 fp16, eager SDPA": 3.04 * 32, "A100 fp16, torch.compile": 4.68 * 32}
A100_SOURCE = ("diffusers docs, optimization/torch2.0, A100 (batch size: 16), SD txt2img: "
               "3.04 and 4.68 it/s x 32 latents per UNet call")

DEFAULT_MODEL_DIR = Path.home() / ".cache" / "tokenflow" / "fullsize-sd15-random"
KINDS = ("inversion", "features", "keyframes", "correspondence", "editor", "blender")
#: (N frames, S_inv inversion steps, S editing steps, B batch size) of the runs the GPU arithmetic
#: prices: a typical short clip at 50/50, and the released default of 500 inversion steps.
TYPICAL_RUNS = ((40, 50, 50, 8), (40, 500, 50, 8))
EXTRAPOLATE_FRAMES = (40, 240)
EXTRAPOLATE_STEPS = 50
EXTRAPOLATE_BATCH = 8
MARKER = "fullsize.json"


# ------------------------------------------------------------------------------------ the model


def parameter_counts() -> dict[str, int]:
    """Parameters of the UNet, VAE and text encoder built from the configs above on the ``meta``
    device (no memory, no weights)."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    with torch.device("meta"):
        parts = {"unet": UNet2DConditionModel(**SD15_UNET), "vae": AutoencoderKL(**SD15_VAE),
                 "text_encoder": CLIPTextModel(CLIPTextConfig(**SD15_TEXT))}
    return {name: sum(p.numel() for p in module.parameters()) for name, module in parts.items()}


def model_spec(seed: int) -> dict:
    """What the saved directory must have been built from to be reused."""
    return {"seed": seed, "unet": SD15_UNET, "vae": SD15_VAE, "text_encoder": SD15_TEXT,
            "scheduler": SD15_SCHEDULER}


def _spec_json(spec: dict) -> str:
    return json.dumps(spec, sort_keys=True, default=list)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def ensure_model(directory: Path, *, seed: int = 0, builder=None, log=print) -> Path:
    """The random SD 1.5 checkpoint in ``directory``, built there first unless a complete one
    from the same configs and seed is already present. Built in a sibling ``.partial-<pid>``
    directory and renamed into place with its marker, so an interrupted build is never reused
    (its leftovers are removed by the next call, once their process is gone). ``builder``
    (``builder(path, spec)``) is for tests; by default ``save_tiny_model`` with the configs."""
    spec = model_spec(seed)
    marker = directory / MARKER
    if marker.is_file() and marker.read_text() == _spec_json(spec):
        log(f"model: reusing {directory}")
        return directory
    for stale in directory.parent.glob(f"{directory.name}.partial-*"):
        pid = stale.name.rsplit("-", 1)[-1]
        if not pid.isdigit() or not _alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)
    directory.parent.mkdir(parents=True, exist_ok=True)
    need = 4 * sum(SD15_PARAMETERS.values()) * 1.05
    free = shutil.disk_usage(directory.parent).free
    if builder is None and free < need:
        sys.exit(f"building the model needs about {need / 1e9:.1f} GB at {directory.parent}, "
                 f"which has {free / 1e9:.1f} GB free; pass another --model-dir")
    partial = directory.with_name(f"{directory.name}.partial-{os.getpid()}")
    start = time.perf_counter()
    log(f"model: building a random SD 1.5 in {directory} (float32, ~4.3 GB)")
    try:
        (builder or _save_sd15)(partial, spec)
        (partial / MARKER).write_text(_spec_json(spec))
        if directory.exists():
            shutil.rmtree(directory)
        os.replace(partial, directory)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    log(f"model: built in {time.perf_counter() - start:.0f} s")
    return directory


def _save_sd15(path: Path, spec: dict) -> None:
    from tokenflow.testing.tiny import save_tiny_model

    save_tiny_model(path, "sd15", seed=spec["seed"], sample_size=SD15_UNET["sample_size"],
                    unet=spec["unet"], vae=spec["vae"], text_encoder=spec["text_encoder"],
                    scheduler=spec["scheduler"])


# ------------------------------------------------------------------------- plain calls (a probe)


def probe(model_dir: Path, size: int, repeats: int = 2) -> dict:
    """Wall and CPU seconds of one plain UNet call on one frame (the fastest of ``repeats``; the
    first also warms up) and of the VAE encoding and decoding one frame, through tokenflow's own
    model helpers, at ``size`` x ``size``."""
    import numpy as np
    import torch

    from tokenflow import load_model

    def timed(fn):
        wall, cpu = time.perf_counter(), time.process_time()
        value = fn()
        return value, time.perf_counter() - wall, time.process_time() - cpu

    model = load_model(str(model_dir), device="cpu", dtype=torch.float32)
    f = model.vae_scale_factor
    text = model.encode_prompts([""])
    x = torch.randn(1, 4, size // f, size // f, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        calls = [timed(lambda: model.unet(x, 500, encoder_hidden_states=text))[1:]
                 for _ in range(repeats)]
    frame = np.random.default_rng(0).integers(0, 256, (1, size, size, 3), dtype=np.uint8)
    latents, encode_wall, encode_cpu = timed(lambda: model.encode_frames(frame, batch_size=1))
    _, decode_wall, decode_cpu = timed(lambda: model.decode_latents(latents, batch_size=1))
    return {"unet": min(c[0] for c in calls), "unet_cpu": min(c[1] for c in calls),
            "vae_encode": encode_wall, "vae_encode_cpu": encode_cpu,
            "vae_decode": decode_wall, "vae_decode_cpu": decode_cpu,
            "threads": torch.get_num_threads()}


def run_probe(model_dir: Path, size: int, env: dict) -> dict:
    out = subprocess.run([sys.executable, __file__, "--probe", str(size), "--model-dir",
                          str(model_dir)], env=env, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        sys.exit(f"probe at {size} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------- counts and bytes


def keyframes_per_step(frames: int, batch_size: int) -> int:
    return math.ceil(frames / batch_size)


def tokenflow_evals(frames: int, inversion_steps: int, steps: int, batch_size: int) -> dict:
    """UNet frame-evaluations of a cold TokenFlow run per stage: N·S_inv, N·S, 2·S·(N+K)."""
    k = keyframes_per_step(frames, batch_size)
    return {"inversion": frames * inversion_steps, "features": frames * steps,
            "loop": 2 * steps * (frames + k)}


def released_evals(frames: int, inversion_steps: int, steps: int, batch_size: int) -> int:
    """The released code's: 2·N·S_inv + 3·S·(N+K) (a reconstruction pass; a source branch)."""
    k = keyframes_per_step(frames, batch_size)
    return 2 * frames * inversion_steps + 3 * steps * (frames + k)


def store_arrays(path: Path) -> tuple[list[tuple[str, tuple[str, ...], tuple[int, ...], int]], int]:
    """Every array of a stage's Zarr store: (path, dimension names, shape, bytes of its chunks on
    disk), and the bytes of everything else (array and group metadata, progress marks)."""
    import zarr

    group = zarr.open_group(str(path), mode="r")
    arrays = []
    for name, node in group.members(max_depth=None):
        if isinstance(node, zarr.Array):
            dims = tuple(node.metadata.dimension_names or ())
            folder = path / name
            chunks = sum(f.stat().st_size for f in folder.rglob("*")
                         if f.is_file() and f.parent != folder)  # not its zarr.json
            arrays.append((name, dims, tuple(node.shape), chunks))
    return arrays, dir_size(path) - sum(a[3] for a in arrays)


def extrapolate(arrays, rest: int, target: dict[str, int]) -> float:
    """Bytes of a store at another run size: each array's bytes times, for each of its dimensions
    named in ``target`` (e.g. ``{"frame": 40, "timestep": 50}``), the target length over its
    measured length; other dimensions (layers, tokens, channels, pixels) keep their size, and so
    does everything that is not an array."""
    total = float(rest)
    for _, dims, shape, nbytes in arrays:
        factor = 1.0
        for dim, length in zip(dims, shape):
            if dim in target and length:
                factor *= target[dim] / length
        total += nbytes * factor
    return total


def dim_targets(frames: int, steps: int, batch_size: int, conv_t: float) -> dict[str, int]:
    """The lengths of the dimensions that grow with a run, for ``frames`` and ``steps``."""
    k = keyframes_per_step(frames, batch_size)
    return {"frame": frames, "keyframe": k, "chunk": k, "timestep": steps,
            "conv_timestep": int(conv_t * steps)}


# ------------------------------------------------------------------------------------- printing


def human(n: float) -> str:
    for unit, scale in (("GiB", 2 ** 30), ("MiB", 2 ** 20), ("KiB", 2 ** 10)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}" if n < 10 * scale else f"{n / scale:.1f} {unit}"
    return f"{n:.0f} B"


def table(header: list[str], rows: list[list[str]]) -> None:
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print(flush=True)


def machine_line() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        memory = f", {os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB"
    except (AttributeError, OSError, ValueError):
        memory = ""
    return f"{platform.node()}: {cpu}, {os.cpu_count()} cores{memory}, {platform.platform()}"


def load_line() -> str:
    try:
        return "load average " + " / ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "load average unknown"


# ------------------------------------------------------------------------------------------ main


def measure_size(size: int, args, model_dir: Path, work: Path, env: dict) -> dict:
    from tokenflow.testing import synthetic_frames
    from tokenflow.video import write_frames

    plain = run_probe(model_dir, size, env)
    clip, cache, out = work / f"clip-{size}", work / f"cache-{size}", work / f"out-{size}"
    write_frames(clip, synthetic_frames(args.frames, height=size, width=size, seed=0))
    result = tf_run([str(clip), "--model", str(model_dir), "--prompt", "a photo of a red car",
                     "--size", f"{size}x{size}", "--steps", str(args.steps), "--inversion-steps",
                     str(args.inversion_steps), "--batch-size", str(args.batch_size), "--seed",
                     "1", "--device", "cpu", "--dtype", "float32", "--cache-dir", str(cache),
                     "--out", str(out), "-q"], env)
    doc = json.loads((out / "run.json").read_text())
    stores = {k: store_arrays(Path(doc["cache"][k]["path"])) for k in KINDS}
    conv_t = float(doc["stages"]["features"]["params"].get("conv_t", 0.8))
    return {"size": size, "plain": plain, "run": result, "doc": doc, "stores": stores,
            "conv_t": conv_t}


def stage_figures(r: dict, args) -> dict[str, dict]:
    """Per stage with UNet work (inversion, features, the editing loop): wall seconds (run.json;
    the editor's entry repeats the loop's, which the blender's holds), frame-evaluations, and CPU
    seconds per frame-evaluation without the VAE: the stage's wall seconds times the run's CPU
    share (its CPU time over its wall time, which discounts other processes on the cores), less
    the VAE's CPU seconds on every frame (the probe's; inversion encodes, the loop decodes)."""
    doc, plain, run = r["doc"], r["plain"], r["run"]
    share = run["cpu_seconds"] / run["seconds"]
    vae = {"inversion": plain["vae_encode_cpu"], "features": 0.0, "loop": plain["vae_decode_cpu"]}
    kinds = {"inversion": "inversion", "features": "features", "loop": "blender"}
    out = {}
    for stage, kind in kinds.items():
        entry = doc["cache"][kind]
        evals = int((entry["stats"] or {}).get("unet_frame_evals", 0))
        wall = float(entry["seconds"])
        cpu = (wall * share - args.frames * vae[stage]) / evals if evals else math.nan
        out[stage] = {"wall": wall, "evals": evals, "wall_per_eval": wall / evals if evals else
                      math.nan, "cpu_per_eval": cpu}
    return out


def print_time_table(results: list[dict], args) -> None:
    print("### Seconds per UNet frame-evaluation\n")
    labels = {"inversion": "inversion (VAE encode included)", "features": "features",
              "loop": "editing loop: editor + blender (VAE decode included)"}
    rows = []
    for r in results:
        doc, plain, run, size = r["doc"], r["plain"], r["run"], f"{r['size']}x{r['size']}"
        figures = stage_figures(r, args)
        formula = tokenflow_evals(args.frames, args.inversion_steps, args.steps, args.batch_size)
        rows.append([size, "plain UNet call, 1 frame (probe)", f"{plain['unet']:.2f}", "1",
                     f"{plain['unet']:.2f}", f"{plain['unet_cpu']:.2f}", "1.00"])
        for part in ("encode", "decode"):
            rows.append([size, f"VAE {part}, 1 frame (probe)", f"{plain[f'vae_{part}']:.2f}", "",
                         "", f"{plain[f'vae_{part}_cpu']:.2f} (VAE)", ""])
        for stage, fig in figures.items():
            rows.append([size, labels[stage], f"{fig['wall']:.1f}",
                         f"{fig['evals']} / {formula[stage]}", f"{fig['wall_per_eval']:.2f}",
                         f"{fig['cpu_per_eval']:.2f}",
                         f"{fig['cpu_per_eval'] / plain['unet_cpu']:.2f}"])
        for kind in ("keyframes", "correspondence"):
            rows.append([size, kind, f"{doc['cache'][kind]['seconds']:.1f}", "0 / 0", "", "", ""])
        evals = sum(f["evals"] for f in figures.values())
        rows.append([size, f"tf run: wall; peak RSS {run['peak_rss_mb'] / 1024:.2f} GiB; CPU "
                           f"{run['cpu_seconds']:.0f} s ({run['cpu_seconds'] / run['seconds']:.0%} "
                           "of wall)", f"{run['seconds']:.1f}",
                     f"{evals} / {sum(formula.values())}", f"{run['seconds'] / evals:.2f}", "", ""])
    table(["size", "stage", "wall s", "UNet frame-evals (run.json / formula)",
           "wall s per frame-eval", "CPU s per frame-eval, VAE excluded", "x plain call (CPU)"],
          rows)


def print_cache_table(results: list[dict], args) -> None:
    from cache_size import stage_sizes  # benchmarks/cache_size.py: each stage's own estimate

    n, s = args.frames, args.steps
    print(f"### Cache bytes (measured on disk at {n} frames x {s} steps; extrapolated per array "
          f"to {' and '.join(map(str, EXTRAPOLATE_FRAMES))} frames x {EXTRAPOLATE_STEPS} steps, "
          f"batch {EXTRAPOLATE_BATCH})\n")
    rows = []
    for r in results:
        size = r["size"]
        estimates = {f: stage_sizes(SD15_UNET, f, (size, size), EXTRAPOLATE_STEPS,
                                    batch_size=EXTRAPOLATE_BATCH)
                     for f in EXTRAPOLATE_FRAMES}
        totals = {"measured": 0.0, **{f: 0.0 for f in EXTRAPOLATE_FRAMES}}
        for kind in KINDS:
            arrays, rest = r["stores"][kind]
            measured = rest + sum(a[3] for a in arrays)
            totals["measured"] += measured
            cells = []
            for f in EXTRAPOLATE_FRAMES:
                target = dim_targets(f, EXTRAPOLATE_STEPS, EXTRAPOLATE_BATCH, r["conv_t"])
                extra = extrapolate(arrays, rest, target)
                totals[f] += extra
                cells += [human(extra / (f * EXTRAPOLATE_STEPS)), human(extra),
                          human(estimates[f][kind])]
            rows.append([f"{size}x{size}", kind, human(measured), human(measured / (n * s)),
                         *cells])
        cells = []
        for f in EXTRAPOLATE_FRAMES:
            cells += [human(totals[f] / (f * EXTRAPOLATE_STEPS)), human(totals[f]),
                      human(sum(estimates[f].values()))]
        rows.append([f"{size}x{size}", "**total**", human(totals["measured"]),
                     human(totals["measured"] / (n * s)), *cells])
    header = ["size", "stage", "on disk", "per frame per step"]
    for f in EXTRAPOLATE_FRAMES:
        header += [f"{f} fr: per frame per step", f"{f} fr x {EXTRAPOLATE_STEPS} steps",
                   f"{f} fr: stage estimate (uncompressed)"]
    table(header, rows)


def print_gpu_table(results: list[dict], args) -> None:
    print(f"### GPU arithmetic (UNet frame-evaluations x an A100 rate; {A100_SOURCE})\n")
    at512 = next((r for r in results if r["size"] == 512), None)
    rows = []
    for frames, inv, steps, batch in TYPICAL_RUNS:
        evals = tokenflow_evals(frames, inv, steps, batch)
        total = sum(evals.values())
        released = released_evals(frames, inv, steps, batch)
        cells = [f"{total / rate:.0f} s" for rate in A100_RATES.values()]
        cells += [f"{released / rate:.0f} s" for rate in A100_RATES.values()]
        cpu = ""
        if at512 is not None:  # this machine, one thread: the stages' CPU rates and the VAE
            figures, plain = stage_figures(at512, args), at512["plain"]
            seconds = sum(evals[k] * figures[k]["cpu_per_eval"] for k in evals)
            seconds += frames * (plain["vae_encode_cpu"] + plain["vae_decode_cpu"])
            cpu = f"{seconds / 3600:.0f} h"
        rows.append([f"{frames} frames, {inv} inversion + {steps} editing steps, batch {batch}",
                     f"{evals['inversion']} + {evals['features']} + {evals['loop']} = {total}",
                     *cells, str(released), cpu])
    names = list(A100_RATES)
    table(["run", "tokenflow frame-evals (inv + feat + loop)",
           *[f"tokenflow, {n} ({A100_RATES[n]:.0f}/s)" for n in names],
           *[f"released code, {n}" for n in names], "released code frame-evals",
           "tokenflow on this CPU, 1 thread (CPU rates at 512x512 above, VAE included)"], rows)
    if at512 is not None:
        arrays, rest = at512["stores"]["features"]
        frames, steps = EXTRAPOLATE_FRAMES[0], EXTRAPOLATE_STEPS
        target = dim_targets(frames, steps, EXTRAPOLATE_BATCH, at512["conv_t"])
        per = extrapolate(arrays, rest, target) / (frames * steps)
        print("At these rates the features stage alone writes "
              + " and ".join(f"{per * rate / 2**30:.1f} GiB/s" for rate in A100_RATES.values())
              + f" to the cache ({human(per)} per frame-evaluation at 512x512: {frames} frames "
              f"x {steps} steps above).\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="256,512", help="square working sizes, pixels")
    parser.add_argument("--frames", type=int, default=4)
    parser.add_argument("--steps", type=int, default=2, help="editing steps")
    parser.add_argument("--inversion-steps", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=2,
                        help="frames per chunk (2 gives K=2 keyframes on 4 frames, so the "
                             "keyframe pass attends across keyframes and frames blend two)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of every process")
    parser.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL_DIR,
                        help="where the random SD 1.5 is kept (built there once, ~4.3 GB)")
    parser.add_argument("--keep", type=Path, default=None,
                        help="keep clips, caches and outputs in DIR (default: a temporary one)")
    parser.add_argument("--probe", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.probe is not None:  # the child process of run_probe
        print(json.dumps(probe(args.model_dir, args.probe)))
        return
    began = time.perf_counter()
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": str(args.threads),
           "MKL_NUM_THREADS": str(args.threads), "HF_HUB_OFFLINE": "1"}
    import diffusers
    import torch

    print(f"# Full-size SD 1.5 (random weights) on the CPU, "
          f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC\n")
    print(f"machine: {machine_line()}; {load_line()} at the start")
    print(f"torch {torch.__version__}, diffusers {diffusers.__version__}, {args.threads} torch "
          f"thread(s) per process, OMP_WAIT_POLICY=PASSIVE")
    print(f"runs: {args.frames} frames, {args.inversion_steps} inversion + {args.steps} editing "
          f"steps, batch {args.batch_size} (K={keyframes_per_step(args.frames, args.batch_size)}), "
          f"pnp, guidance 7.5, seed 1, float32; sizes {args.sizes}")
    counts = parameter_counts()
    print("parameters: " + ", ".join(
        f"{name} {n:,} ({'as' if n == SD15_PARAMETERS[name] else 'NOT as'} published)"
        for name, n in counts.items()) + "\n")
    if counts != SD15_PARAMETERS:
        sys.exit("the configs do not give SD 1.5's parameter counts")
    model_dir = ensure_model(args.model_dir.expanduser())
    sizes = [int(s) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory(prefix="tf-fullsize-") as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        results = []
        for size in sizes:
            start = time.perf_counter()
            results.append(measure_size(size, args, model_dir, work, env))
            print(f"measured {size}x{size} in {time.perf_counter() - start:.0f} s "
                  f"({load_line()})", flush=True)
        print()
        print_time_table(results, args)
        print_cache_table(results, args)
        print_gpu_table(results, args)
    print(f"benchmark took {time.perf_counter() - began:.0f} s; {load_line()} at the end")


if __name__ == "__main__":
    sys.exit(main())
