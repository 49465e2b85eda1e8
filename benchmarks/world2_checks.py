"""Accuracy of world v2's rule-based checks on held-out frames (clean, blurred, JPEG) and the
render time of a 96x160 frame: `python benchmarks/world2_checks.py` (about 20 s on one core)."""

from __future__ import annotations

import time

import numpy as np

from tokenflow.embedded.world2 import random_clip
from tokenflow.embedded.world2_checks import measure_checks


def main() -> None:
    for name, options in [("clean", {}), ("blur 0.7 px", {"blur": 0.7}), ("JPEG 75", {"jpeg": 75}),
                          ("blur 0.7 px + JPEG 75", {"blur": 0.7, "jpeg": 75})]:
        accuracy = measure_checks(np.random.default_rng(2024), 400, **options)
        print(f"{name:22s}" + "  ".join(f"{k} {100 * v:5.1f} %" for k, v in accuracy.items()))
    clips = [random_clip(np.random.default_rng(seed), 2, height=96, width=160) for seed in range(50)]
    start = time.perf_counter()
    for clip in clips:
        clip.render(1, 96, 160)
    print(f"render 96x160: {1000 * (time.perf_counter() - start) / len(clips):.1f} ms a frame")


if __name__ == "__main__":
    main()
