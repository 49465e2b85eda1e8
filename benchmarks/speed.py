"""Wall time per stage, peak RSS, UNet evaluations and cache size of `tf run` on the embedded model.

    python benchmarks/speed.py [--frames 8,16,32,64] [--steps 50]

For each clip length: a cold run (every stage computed, empty cache), then the same clip with a
second prompt (only the editor and the blender are recomputed). Each run is its own `tf`
process; the clip is the rolling ball of examples/make_clips.py at that length, at the model's
working size. Prints one Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from measure import (  # benchmarks/measure.py (the script directory is on sys.path)
    dir_size,
    tf_run,
)

ROOT = Path(__file__).resolve().parents[1]
KINDS = ("inversion", "features", "keyframes", "correspondence", "blender")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", default="8,16,32,64")
    parser.add_argument("--steps", type=int, default=50)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "examples"))
    from make_clips import CLIPS

    from tokenflow.video import write_video

    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "HF_HUB_OFFLINE": "1"}
    lengths = [int(n) for n in args.frames.split(",")]
    print(f"tf run on the embedded model at its working size, {args.steps} steps, the model's "
          f"inversion steps, batch 8, {os.cpu_count()} CPU cores; seconds per stage from "
          "run.json\n")
    header = ["frames", "run", "wall s", "peak RSS MB", *[f"{k} s" for k in KINDS],
              "UNet frame-evals (inv / feat / edit loop)", "cache MiB"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    with tempfile.TemporaryDirectory(prefix="tf-speed-") as tmp:
        tmp = Path(tmp)
        for n in lengths:
            clip = tmp / f"ball-{n}.mp4"
            write_video(clip, CLIPS["rolling_ball"].render(n), 12.0)
            cache = tmp / f"cache-{n}"
            base = [str(clip), "--inversion-prompt", CLIPS["rolling_ball"].caption(),
                    "--steps", str(args.steps), "--cache-dir", str(cache), "-q"]
            for label, prompt in (("cold", "a blue ball on wood"),
                                  ("second prompt", "a green ball on wood")):
                out = tmp / f"out-{n}-{label.split()[0]}"
                result = tf_run(base + ["--prompt", prompt, "--out", str(out)], env)
                doc = json.loads((out / "run.json").read_text())
                cache_doc = doc["cache"]
                seconds = [("cached" if cache_doc[k]["cached"] else f"{cache_doc[k]['seconds']:.1f}")
                           for k in KINDS]
                evals = [cache_doc[k]["stats"].get("unet_frame_evals", 0)
                         if not cache_doc[k]["cached"] else 0
                         for k in ("inversion", "features", "blender")]
                row = [str(n), label, f"{result['seconds']:.1f}", f"{result['peak_rss_mb']:.0f}",
                       *seconds, " / ".join(str(e) for e in evals),
                       f"{dir_size(cache) / 2**20:.1f}"]
                print("| " + " | ".join(row) + " |", flush=True)


if __name__ == "__main__":
    main()
