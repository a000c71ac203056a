"""Pictures of data and results, drawn on matplotlib's Agg canvas (no pyplot: no global state).

    lenet data show --grid N --out grid.png   # save_image_grid: the first N x N images, labelled
    lenet eval --out DIR                      # save_image_grid: mistakes ("true 2 → predicted 7"), predictions
                                              # (wrong ones framed in red); plot_confusion
    lenet train                               # plot_curves: curves.png, the selected epoch marked

Every function builds its own Figure, writes it atomically (temp + rename) and returns the path;
the picture format follows the file's suffix (.png by default). A `title` (the model, the dataset
and what the figure shows) is drawn on the picture and stored in the file's metadata ("Title").
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.ticker import MaxNLocator

from lenet.errors import LenetError
from lenet.fileio import atomic_write

DPI = 100
PIXEL_INCHES = 4 / DPI  # one 28x28 image pixel -> 4x4 picture pixels: a digit is 112 px wide


def save_figure(fig: Figure, path: Path, title: str | None = None) -> Path:
    """Write `fig` to `path` atomically, in the format its suffix names (`title` in its metadata)."""
    path = Path(path)
    fmt = path.suffix.lower().lstrip(".") or "png"
    canvas = FigureCanvasAgg(fig)  # binds the figure to Agg explicitly, whatever the user's backend
    if fmt not in canvas.get_supported_filetypes():
        raise LenetError(f"{path}: cannot write .{fmt} pictures — use .png, .jpg, .svg or .pdf")
    meta = {"metadata": {"Title": title}} if title and fmt in ("png", "pdf", "svg") else {}
    atomic_write(path, lambda tmp: fig.savefig(tmp, format=fmt, dpi=DPI, **meta))
    return path


def save_image_grid(images: torch.Tensor, titles: list[str], path: Path, ncols: int = 8, *,
                    title: str | None = None, marked: list[bool] | None = None) -> Path:
    """(N, 28, 28) uint8 in [0, 255] or float in [0, 1] (or (N, 1, H, W)) -> a labelled grid picture.

    `titles` has one string per image (e.g. "7", "true 2 → predicted 7"), or is empty for none;
    `title` heads the picture; `marked` images (wrong answers) get a red frame and red text.
    """
    if images.dim() == 4 and images.shape[1] == 1:
        images = images[:, 0]  # (N, 1, H, W) -> (N, H, W)
    if images.dim() != 3 or len(images) == 0:
        raise ValueError(f"expected a non-empty (N, H, W) batch, got shape {tuple(images.shape)}")
    if titles and len(titles) != len(images):
        raise ValueError(f"{len(titles)} titles for {len(images)} images")
    n, h, w = images.shape
    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)
    # One montage image on one axes: drawing 100 separate axes takes seconds, this takes ~0.1 s.
    # Units are image pixels; NaN (gaps, title bands) is drawn white.
    gap, band, head = 2, (7 if titles else 0), (12 if title else 0)
    cell_h, cell_w = band + h + gap, w + gap
    canvas = np.full((head + nrows * cell_h + gap, ncols * cell_w + gap), np.nan, dtype=np.float32)
    pixels = images.detach().cpu().float().numpy()
    for i in range(n):
        top, left = head + gap + (i // ncols) * cell_h + band, gap + (i % ncols) * cell_w
        canvas[top:top + h, left:left + w] = pixels[i]
    fig = Figure(figsize=(canvas.shape[1] * PIXEL_INCHES, canvas.shape[0] * PIXEL_INCHES))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_axis_off()
    vmax = 1.0 if images.is_floating_point() else 255  # fixed range: a faint digit stays faint
    ax.imshow(canvas, cmap=colormaps["gray"].with_extremes(bad="white"), vmin=0, vmax=vmax,
              interpolation="nearest")
    if title:
        width_chars = canvas.shape[1] * PIXEL_INCHES * 72 / 5.5  # characters that fit at 9 pt
        ax.text(canvas.shape[1] / 2, head / 2, title, ha="center", va="center",
                fontsize=min(9, 9 * width_chars / max(len(title), 1)), fontweight="bold")
    for i, label in enumerate(titles):
        top, left = head + gap + (i // ncols) * cell_h, gap + (i % ncols) * cell_w
        size = min(8, 8 * 18 / max(len(label), 1))  # ~18 characters at 8 pt fill a cell; shrink longer ones
        wrong = bool(marked and marked[i])
        ax.text(left + w / 2 - 0.5, top + band / 2 - 0.5, label, ha="center", va="center", fontsize=size,
                color="red" if wrong else "black")
    for i, wrong in enumerate(marked or []):
        if wrong:
            top, left = head + gap + (i // ncols) * cell_h + band, gap + (i % ncols) * cell_w
            ax.add_patch(Rectangle((left - 1.5, top - 1.5), w + 2, h + 2, fill=False, edgecolor="red", linewidth=1.5))
    return save_figure(fig, path, title)


def plot_curves(history: list[dict[str, float]], path: Path, *, title: str | None = None,
                selected_epoch: int | None = None) -> Path:
    """Loss and accuracy per epoch, train vs validation, side by side; the selected epoch marked."""
    epochs = [h["epoch"] for h in history]
    fig = Figure(figsize=(10, 4.4 if title else 4))
    for i, (key, label) in enumerate((("loss", "loss"), ("accuracy", "accuracy"))):
        ax = fig.add_subplot(1, 2, i + 1)
        ax.plot(epochs, [h[f"train_{key}"] for h in history], marker="o", label="train")
        if any(h[f"val_{key}"] is not None for h in history):  # --val-size 0: no validation curve
            ax.plot(epochs, [h[f"val_{key}"] for h in history], marker="o", label="validation")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        if selected_epoch is not None:
            ax.axvline(selected_epoch, color="green", linestyle="--", linewidth=1,
                       label=f"selected: epoch {selected_epoch}")
        ax.legend()
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path, title)


def plot_confusion(matrix: list[list[int]], class_names: list[str], path: Path, *, title: str | None = None) -> Path:
    """Confusion matrix (rows: true class, columns: predicted), counts written in each cell."""
    counts = np.asarray(matrix)
    k = len(class_names)
    fig = Figure(figsize=(1.2 + 0.6 * k, 0.8 + 0.6 * k))
    ax = fig.add_subplot(1, 1, 1)
    # log scale so the few errors off the diagonal are visible next to ~1,000 correct
    ax.imshow(np.log1p(counts), cmap="Blues")
    for (r, c), v in np.ndenumerate(counts):
        ax.text(c, r, str(v), ha="center", va="center", fontsize=7,
                color="white" if r == c else "black")
    ax.set_xticks(range(k), class_names, rotation=45 if max(map(len, class_names)) > 2 else 0, ha="right")
    ax.set_yticks(range(k), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if title:
        ax.set_title(title, fontsize=min(10, 10 * (0.6 * k + 1.2) * 72 / 6 / max(len(title), 1)))
    fig.tight_layout()
    return save_figure(fig, path, title)
