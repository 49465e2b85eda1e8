"""Control extractor ``canny``: OpenCV Canny edges of each frame, as a 3-channel [0, 1] image.

The thresholds are the usual ones of the public Canny ControlNets' examples (100, 200) on the
grayscale frame; edges are white on black.
"""

from __future__ import annotations

import numpy as np

from tokenflow import hookimpl

LOW_THRESHOLD = 100
HIGH_THRESHOLD = 200


def canny(frames: np.ndarray) -> np.ndarray:
    """``uint8 (N, H, W, 3)`` frames -> ``float32 (N, H, W, 3)`` edge maps in {0, 1}."""
    import cv2

    out = np.empty(frames.shape[:3] + (3,), dtype=np.float32)
    for i, frame in enumerate(frames):
        gray = cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2GRAY)
        edges = cv2.Canny(gray, LOW_THRESHOLD, HIGH_THRESHOLD)
        out[i] = (edges.astype(np.float32) / 255.0)[..., None]
    return out


@hookimpl
def register_control_extractors(register):
    register("canny", canny, version=1)
