"""Confusion-matrix PNGs (matplotlib, Agg backend; imported only when a plot is asked for)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Sequence

from hspi_kernels.platform.files import atomic_write_bytes

__all__ = ["confusion_png"]


def confusion_png(confusion: Sequence[Sequence[int]], classes: Sequence[str], title: str, path: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    cm = np.asarray(confusion, dtype=float)
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    n = len(classes)
    fig, ax = plt.subplots(figsize=(2 + 0.6 * n, 1.5 + 0.6 * n))
    ax.imshow(norm, vmin=0, vmax=1, cmap="Blues")
    short = [c if len(c) <= 40 else c[:37] + "..." for c in classes]
    ax.set_xticks(range(n), short, rotation=70, ha="right", fontsize=7)
    ax.set_yticks(range(n), short, fontsize=7)
    for i in range(n):
        for j in range(n):
            ax.text(j, i, int(cm[i, j]), ha="center", va="center", fontsize=6,
                    color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return atomic_write_bytes(path, buf.getbuffer())
