"""Peak memory against the video's length and against the number of keyframes (issue 11, goal 4).

    python benchmarks/memory.py [--frames 16,64,256] [--keyframes 2,8,32,64] [-- EXTRA tf run ARGS]

``--frames``: a cold `tf run` per clip length (each its own process, one torch thread,
OMP_WAIT_POLICY=PASSIVE) on a random SD-2.1-base-shaped model (the one of
benchmarks/wall_time.py) and a synthetic 128x192 clip, 5 steps, 5 inversion steps, batch 8;
prints the peak RSS, its ratio to the first length's, and the peak RSS of every phase (sampled
every 5 ms: prepare = reading the video, loading the model and planning; a column per stage; loop
= the editor and the blender; outputs = the output folder).

``--keyframes``: one keyframe call of the editing loop (the UNet on K keyframes, branches
[uncond, cond], extended attention) on the same model, at 128x192, each K in its own process;
prints how much that call raises the process's peak RSS above one at K = 1 (model, inputs and
one-frame call already counted), with ``--unet-batch`` (default 8) frames per UNet pass, and
the size the (K*S)^2 attention matrix of the largest layer would take if it were materialised.
Pass ``--keyframes ''`` or ``--frames ''`` to skip a part.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from measure import tf_run_phases  # benchmarks/measure.py (the script directory is on sys.path)
from wall_time import UNET, VAE, build

PHASES = ("prepare", "inversion", "features", "keyframes", "correspondence", "loop", "outputs")
HEIGHT, WIDTH = 128, 192

#: One keyframe call at K keyframes, in a fresh process: prints JSON {"base": peak RSS bytes
#: after a call at K = 1, "peak": after the call at K}. Arguments: model, K, UNet batch,
#: attention bytes (0: one piece).
KEYFRAME_CALL = """
import json, resource, sys, torch
from tokenflow.editing.attention import AttentionState, tokenflow_attention
from tokenflow.editing.lockstep import unet_call
from tokenflow.models import load_model
model_dir, k, unet_batch, pieces = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
model = load_model(model_dir, device='cpu')
text = model.encode_prompts(['', 'a photo of a cat'])
def call(n):
    x = torch.randn(n, 4, %d, %d, generator=torch.Generator().manual_seed(0)).repeat(2, 1, 1, 1)
    state = AttentionState()
    with torch.no_grad(), tokenflow_attention(model.unet, state):
        state.n_branches, state.extended, state.keep = 2, True, {}
        state.attention_bytes = pieces or None
        unet_call(model.unet, state, x, 981, text.repeat_interleave(n, dim=0),
                  unet_batch=unet_batch)
def peak():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
call(1)
base = peak()
call(k)
print(json.dumps({'base': base, 'peak': peak()}))
""" % (HEIGHT // 8, WIDTH // 8)


def frames_table(tmp: Path, lengths: list[int], extra: list[str], env: dict) -> None:
    header = ["frames", "peak RSS MB", "ratio to first", *[f"{p} MB" for p in PHASES], "wall s"]
    print(f"cold tf run, random SD-2.1-base-shaped model, {WIDTH}x{HEIGHT}, 5 steps, 5 inversion "
          f"steps, batch 8, 1 torch thread; extra args: {' '.join(extra) or 'none'}\n")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    first = None
    for n in lengths:
        model, clip = build(tmp, n)
        result = tf_run_phases(
            [str(clip), "--model", str(model), "--prompt", "a photo of a cat", "--size",
             f"{WIDTH}x{HEIGHT}", "--steps", "5", "--inversion-steps", "5", "--batch-size", "8",
             "--seed", "1", "--cache-dir", str(tmp / f"cache-{n}"), "--out", str(tmp / f"out-{n}"),
             "-q", *extra], env, tmp / f"rss-{n}.json")
        first = first or result["peak_rss_mb"]
        phases = [f"{result['phases'][p]:.0f}" if p in result["phases"] else "" for p in PHASES]
        print(f"| {n} | {result['peak_rss_mb']:.0f} | {result['peak_rss_mb'] / first:.2f} | "
              + " | ".join(phases) + f" | {result['seconds']:.0f} |", flush=True)


def keyframes_table(tmp: Path, counts: list[int], unet_batch: int, env: dict) -> None:
    from tokenflow.editing.loop import ATTENTION_BYTES

    model, _ = build(tmp, 1)
    s = (HEIGHT // 8) * (WIDTH // 8)  # tokens per frame at the largest self-attention layer
    heads = UNET["attention_head_dim"][0]
    print(f"\none keyframe call (2 branches, extended attention, every layer's output kept), "
          f"{WIDTH}x{HEIGHT} (S = {s} tokens at the largest layer, {heads} heads); peak RSS "
          f"the call adds above a call at K = 1, MB\n")
    print(f"| K | one UNet pass, attention in one piece (before) | UNet batch {unet_batch} in "
          f"lockstep, attention pieces <= {ATTENTION_BYTES >> 20} MiB (after) | (2 x heads x "
          f"(K*S)^2) float32 attention matrix if materialised, MB |")
    print("|---|---|---|---|")
    for k in counts:
        cells = []
        for batch, pieces in ((k, 0), (unet_batch, ATTENTION_BYTES)):
            out = subprocess.run([sys.executable, "-c", KEYFRAME_CALL, str(model), str(k),
                                  str(batch), str(pieces)], env=env, capture_output=True,
                                 text=True, check=False)
            if out.returncode != 0:
                sys.exit(f"keyframe call at K = {k} failed:\n{out.stderr[-2000:]}")
            info = json.loads(out.stdout.strip().splitlines()[-1])
            cells.append(f"{(info['peak'] - info['base']) / 2**20:.0f}")
        matrix = 2 * heads * (k * s) ** 2 * 4 / 2**20
        print(f"| {k} | {' | '.join(cells)} | {matrix:.0f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", default="16,64,256")
    parser.add_argument("--keyframes", default="2,8,32,64")
    parser.add_argument("--unet-batch", type=int, default=8)
    parser.add_argument("extra", nargs="*", help="more tf run arguments (after --)")
    args = parser.parse_args()
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "1",
           "HF_HUB_OFFLINE": "1"}
    with tempfile.TemporaryDirectory(prefix="tf-memory-") as tmp:
        tmp = Path(tmp)
        if args.frames:
            frames_table(tmp, [int(n) for n in args.frames.split(",")], args.extra, env)
        if args.keyframes:
            keyframes_table(tmp, [int(k) for k in args.keyframes.split(",")], args.unet_batch,
                            env)


if __name__ == "__main__":
    sys.exit(main())
