"""PNG plots of a run: loss / validation Dice curves and validation overlays (matplotlib, Agg backend)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from salt_seg.io import atomic_path
from salt_seg.preprocessing import SAM_PIXEL_MEAN, SAM_PIXEL_STD, Preprocessing


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight")


def plot_curves(path: Path, history: list[dict[str, Any]]) -> None:
    """Training loss (left axis) and validation Dice (right axis) against the step."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4))
    steps = [r["step"] for r in history if "loss" in r]
    ax.plot(steps, [r["loss"] for r in history if "loss" in r], color="tab:blue", lw=1, label="train loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss", color="tab:blue")
    ax2 = ax.twinx()
    vs = [(r["step"], r["val_dice"]) for r in history if r.get("val_dice") is not None]
    if vs:
        ax2.plot(*zip(*vs, strict=True), "o-", color="tab:red", label="val Dice")
    ax2.set_ylabel("validation Dice", color="tab:red")
    ax2.set_ylim(0, 1)
    ax.set_title("salt_seg training")
    _save(fig, path)
    plt.close(fig)


def to_display(image: Any, record: Preprocessing) -> np.ndarray:
    """Model input ``3 x S x S`` back to a displayable ``S x S`` grey image in [0, 1]."""
    x = np.asarray(image, dtype=np.float32)[0]
    if record.input_scaling == "sam":
        x = (x * SAM_PIXEL_STD[0] + SAM_PIXEL_MEAN[0]) / 255.0
    return np.clip(x, 0, 1)


def plot_overlays(path: Path, examples: list, record: Preprocessing) -> None:
    """Rows of image | ground truth | prediction for validation examples ``(image, label, prediction)``."""
    plt = _plt()
    n = len(examples)
    fig, axes = plt.subplots(n, 3, figsize=(7.5, 2.6 * n), squeeze=False)
    cmap = plt.get_cmap("tab10")
    for r, (img, lab, pred) in enumerate(examples):
        grey = to_display(img, record)
        for c, (title, m) in enumerate((("image", None), ("ground truth", lab), ("prediction", pred))):
            ax = axes[r, c]
            ax.imshow(grey, cmap="gray", vmin=0, vmax=1)
            if m is not None:
                m = np.asarray(m)
                rgba = np.zeros((*m.shape, 4), dtype=np.float32)
                for cid in np.unique(m[m > 0]):
                    rgba[m == cid] = (*cmap(int(cid) % 10)[:3], 0.45)
                ax.imshow(rgba)
            ax.set_axis_off()
            if r == 0:
                ax.set_title(title)
    _save(fig, path)
    plt.close(fig)
