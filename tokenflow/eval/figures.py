"""Metric plots (matplotlib, the ``eval`` extra). The labelled frame figures (contact sheets,
side-by-side videos) are :mod:`tokenflow.frame_figures`, which a run's previews use too."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np


def require_matplotlib() -> None:
    """A one-line ``RuntimeError`` saying how to install matplotlib (the ``eval`` extra) if it is
    missing: call it before long work whose end is a plot."""
    import importlib.util

    if importlib.util.find_spec("matplotlib") is None:
        raise RuntimeError("metric plots need matplotlib: pip install 'tokenflow[eval]'")


def plot_metrics(series: dict[str, dict[str, Sequence[float]]], metrics: Sequence[str],
                 path: str | os.PathLike, *, title: str = "") -> Path:
    """One panel per metric, one line per method (``series[method][metric]`` per frame or pair),
    written atomically as a PNG. Needs matplotlib (:func:`require_matplotlib`)."""
    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [m for m in metrics if any(m in s for s in series.values())]
    if not metrics:
        raise ValueError("plot_metrics: none of the metrics is in the series")
    fig, axes = plt.subplots(len(metrics), 1, figsize=(7, 2.3 * len(metrics)), squeeze=False)
    for ax, metric in zip(axes[:, 0], metrics):
        for method, values in series.items():
            if metric in values:
                y = np.asarray(values[metric], dtype=float)
                ax.plot(np.arange(len(y)), y, marker=".", label=method)
        ax.set_ylabel(metric, fontsize=8)
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=7, ncol=min(4, len(series)))
    axes[-1, 0].set_xlabel("frame (or frame pair t, t+k)")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
    return path
