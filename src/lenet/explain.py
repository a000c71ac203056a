"""Look inside a model: preprocessing steps, every layer's activations, kernels, attributions.

    lenet explain seven.jpg --out runs/explain            # DIR/seven/{steps,activations,kernels,attribution}.png
    lenet explain --index 0 --checkpoint fashion-mnist --out runs/explain --json

Layers are seen through forward hooks (which make the LeNet-5 models run layer by layer, see
lenet.layers.runs_layer_by_layer). A model's modules are grouped into stages, each a weighted
layer or a pooling layer with the normalisation and activation after it; a LeNet-5 model with
seven stages gets the paper's names (C1, S2, C3, S4, C5, F6, output), any other model its
modules' names. Attributions (Integrated Gradients and occlusion, from Captum, the `explain`
extra) are computed on the 28x28 image in [0, 1], through the model's own input contract.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.figure import Figure
from PIL import Image
from torch import nn

from lenet.checkpoint import load_checkpoint
from lenet.errors import LenetError
from lenet.layers import C3_TABLE, PartialConv, Subsampling
from lenet.models import ModelSpec, get_spec, prepare_input
from lenet.predict import find_images, is_digit_model
from lenet.imagefile import open_image
from lenet.preprocess import (
    DIGITS,
    OBJECTS,
    estimate_paper,
    find_ink,
    ink_map,
    preprocess,
    to_gray,
    undo_pixel_repeat,
)
from lenet.report import save_figure

PAPER_NAMES = ("C1", "S2", "C3", "S4", "C5", "F6", "output")
FILES = ("steps.png", "activations.png", "kernels.png", "attribution.png")
STARTS = (nn.Conv2d, nn.Linear, PartialConv, Subsampling, nn.MaxPool2d, nn.AvgPool2d)  # a stage begins here
PASSIVE = (nn.Flatten, nn.Dropout)  # part of a stage, but not where its output is read
MAPS_PER_ROW = 8
VECTOR_ROW = 30  # a vector layer is drawn as rows of this many units


@dataclass
class Stage:
    """A layer as the pictures name it: its modules (indices into the model) and its output."""

    name: str  # "C1", or a module name such as "1 Linear"
    index: int  # the module whose output is the stage's output
    output: torch.Tensor | None = None  # (C, H, W) or (N,) for one image

    @property
    def shape(self) -> list[int]:
        out = self.output
        return [int(out.shape[0])] if out.dim() == 3 and out.shape[1:] == (1, 1) else list(out.shape)

    @property
    def title(self) -> str:
        s = self.shape
        return f"{self.name} {s[0]}@{s[1]}x{s[2]}" if len(s) == 3 else f"{self.name} {s[0]}"


def stages(model: nn.Module, model_name: str) -> list[Stage]:
    """The model's layers in order, each read after its activation (see the module docstring)."""
    modules = list(model.children()) if isinstance(model, nn.Sequential) else [model]
    groups: list[list[int]] = []
    for i, m in enumerate(modules):
        if isinstance(m, STARTS) or not groups:
            groups.append([i])
        else:
            groups[-1].append(i)
    groups = [[i for i in g if not isinstance(modules[i], PASSIVE)] for g in groups]
    groups = [g for g in groups if g]  # e.g. the mlp's leading Flatten
    paper = model_name.startswith("lenet5") and len(groups) == len(PAPER_NAMES)
    return [Stage(PAPER_NAMES[k] if paper else f"{g[0]} {type(modules[g[0]]).__name__}", g[-1])
            for k, g in enumerate(groups)]


def run_with_hooks(model: nn.Module, x: torch.Tensor, layer_stages: list[Stage]) -> torch.Tensor:
    """One forward pass of (1, 1, S, S) that fills each stage's output; returns the logits (1, C)."""
    modules = list(model.children()) if isinstance(model, nn.Sequential) else [model]
    handles = []
    for stage in layer_stages:
        def hook(_m, _inp, out, stage=stage):
            stage.output = out.detach()[0].float()
        handles.append(modules[stage.index].register_forward_hook(hook))
    try:
        with torch.no_grad():
            return model(x).float()
    finally:
        for h in handles:
            h.remove()


# -- pictures -----------------------------------------------------------------------------

def montage(maps: np.ndarray, ncols: int, gap: int = 1) -> np.ndarray:
    """(N, h, w) -> one (rows, cols) picture with NaN gaps (drawn as background)."""
    n, h, w = maps.shape
    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)
    out = np.full((nrows * (h + gap) - gap, ncols * (w + gap) - gap), np.nan, dtype=np.float32)
    for i in range(n):
        r, c = divmod(i, ncols)
        out[r * (h + gap):r * (h + gap) + h, c * (w + gap):c * (w + gap) + w] = maps[i]
    return out


def _as_maps(out: torch.Tensor) -> tuple[np.ndarray, int]:
    """A stage's output -> (maps (N, h, w), columns): feature maps, or a vector in rows."""
    a = out.numpy()
    if a.ndim == 3 and a.shape[1:] != (1, 1):
        return a, MAPS_PER_ROW
    v = a.reshape(-1)
    width = min(len(v), VECTOR_ROW)
    padded = np.full(math.ceil(len(v) / width) * width, np.nan, dtype=np.float32)
    padded[:len(v)] = v
    return padded.reshape(1, -1, width), 1


def plot_activations(layer_stages: list[Stage], image: torch.Tensor, title: str, path: Path,
                     class_names: list[str]) -> Path:
    """The input, then every stage's output in order; one colour scale per layer, with its bar."""
    pictures = [(f"input {image.shape[-2]}x{image.shape[-1]}", image.numpy().reshape(1, *image.shape[-2:]), 1)]
    pictures += [(s.title, *_as_maps(s.output)) for s in layer_stages]
    montages = [(t, montage(m, cols)) for t, m, cols in pictures]
    heights = [min(max(m.shape[0] / max(m.shape[1], 1) * 8.5, 0.45), 2.2) + 0.45 for _, m in montages]
    fig = Figure(figsize=(10, sum(heights) + 0.6))
    grid = fig.add_gridspec(len(montages), 1, height_ratios=heights, hspace=0.6)
    for k, (name, pic) in enumerate(montages):
        ax = fig.add_subplot(grid[k])
        finite = pic[np.isfinite(pic)]
        lo, hi = (0.0, 1.0) if k == 0 else (float(finite.min()), float(finite.max()))
        if hi <= lo:
            hi = lo + 1e-6
        cmap = colormaps["gray" if k == 0 else "viridis"].with_extremes(bad="white")
        im = ax.imshow(pic, cmap=cmap, vmin=lo, vmax=hi, interpolation="nearest",
                       aspect="equal" if pic.shape[0] > 1 else "auto")
        ax.set_title(name, fontsize=9, loc="left")
        ax.set_xticks([])
        ax.set_yticks([])
        if k == len(montages) - 1 and pic.shape[0] == 1 and pic.shape[1] == len(class_names):
            ax.set_xticks(range(len(class_names)), class_names, fontsize=7)
        fig.colorbar(im, ax=ax, fraction=0.03, pad=0.01)
    fig.suptitle(f"{title} — activations, layer by layer", fontsize=10)
    return save_figure(fig, path)


def _convs(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, (nn.Conv2d, PartialConv))]


def _weight(m: nn.Module) -> torch.Tensor:
    return (m.dense_weight() if isinstance(m, PartialConv) else m.weight).detach().float()


def plot_kernels(model: nn.Module, title: str, path: Path) -> Path:
    """C1's kernels (one row), and C3's as an input x output grid (absent connections blank);
    a model without convolutions shows its first layer's weights as images (receptive fields)."""
    convs = _convs(model)
    fig = Figure(figsize=(10, 6.5))
    if not convs:
        first = next(m for m in model.modules() if isinstance(m, nn.Linear))
        w = first.weight.detach().float()[:32]  # (32, 784): the first 32 units
        side = math.isqrt(w.shape[1])
        maps = w.reshape(-1, side, side).numpy()
        panels = [(f"first layer: {len(maps)} of {first.out_features} units' weights as {side}x{side} images",
                   montage(maps, 8), None)]
    else:
        w1 = _weight(convs[0])  # (C1, 1, k, k)
        panels = [(f"C1: {w1.shape[0]} kernels {w1.shape[-2]}x{w1.shape[-1]}", montage(w1[:, 0].numpy(), 16), None)]
        if len(convs) > 1:
            w3 = _weight(convs[1])  # (C3, C1, k, k)
            outs, ins, k = w3.shape[0], w3.shape[1], w3.shape[-1]
            grid = w3.permute(1, 0, 2, 3).reshape(-1, k, k).numpy().copy()  # row = input map, column = output map
            connected = None
            if isinstance(convs[1], PartialConv):
                connected = np.zeros((ins, outs), bool)
                for j, conn in enumerate(C3_TABLE):
                    connected[list(conn), j] = True
                grid[~connected.reshape(-1)] = np.nan
            note = " (blank: not connected, Table I)" if connected is not None else ""
            panels.append((f"C3: kernels, rows = input map (S2, {ins}), columns = output map ({outs}){note}",
                           montage(grid, outs), (ins, outs, k)))
    grid_spec = fig.add_gridspec(len(panels), 1, height_ratios=[p[1].shape[0] / p[1].shape[1] * 10 + 0.6
                                                                 for p in panels])
    for i, (name, pic, layout) in enumerate(panels):
        ax = fig.add_subplot(grid_spec[i])
        bound = float(np.nanmax(np.abs(pic))) or 1.0
        im = ax.imshow(pic, cmap=colormaps["RdBu_r"].with_extremes(bad="#dddddd"), vmin=-bound, vmax=bound,
                       interpolation="nearest")
        ax.set_title(name, fontsize=9, loc="left")
        if layout:
            ins, outs, k = layout
            ax.set_xticks([j * (k + 1) + k / 2 - 0.5 for j in range(outs)], range(outs), fontsize=7)
            ax.set_yticks([j * (k + 1) + k / 2 - 0.5 for j in range(ins)], range(ins), fontsize=7)
            ax.tick_params(length=0)
        else:
            ax.set_xticks([])
            ax.set_yticks([])
        fig.colorbar(im, ax=ax, fraction=0.03, pad=0.01)
    fig.suptitle(f"{title} — learned kernels (red +, blue -)", fontsize=10)
    return save_figure(fig, path)


def attributions(model: nn.Module, spec: ModelSpec, image: torch.Tensor, targets: list[int]
                 ) -> dict[str, list[np.ndarray]]:
    """(1, 28, 28) in [0, 1] -> {"Integrated Gradients": [(28, 28) per target], "occlusion": [...]}."""
    try:
        from captum.attr import IntegratedGradients, Occlusion
    except ImportError:
        raise LenetError("attributions need Captum: pip install 'lenet[explain]'") from None

    def forward(x: torch.Tensor) -> torch.Tensor:  # (B, 1, 28, 28) in [0, 1] -> logits
        return model(prepare_input(x, spec))

    x = image[None].float()  # (1, 1, 28, 28)
    ig, occ = IntegratedGradients(forward), Occlusion(forward)
    out: dict[str, list[np.ndarray]] = {"Integrated Gradients": [], "occlusion": []}
    for t in targets:
        a = ig.attribute(x, baselines=torch.zeros_like(x), target=t, n_steps=32)
        out["Integrated Gradients"].append(a[0, 0].detach().numpy())
        a = occ.attribute(x, sliding_window_shapes=(1, 4, 4), strides=(1, 2, 2), baselines=0.0,
                          target=t, perturbations_per_eval=64)
        out["occlusion"].append(a[0, 0].detach().numpy())
    return out


def plot_attributions(maps: dict[str, list[np.ndarray]], image: torch.Tensor, labels: list[str],
                      title: str, path: Path) -> Path:
    """Rows: methods; columns: the predicted class, the runner-up; red pushed towards the class."""
    fig = Figure(figsize=(3.2 * len(labels) + 0.6, 3.2 * len(maps) + 0.6))
    base = image[0].numpy()
    for r, (method, per_target) in enumerate(maps.items()):
        for c, (attr, label) in enumerate(zip(per_target, labels)):
            ax = fig.add_subplot(len(maps), len(labels), r * len(labels) + c + 1)
            ax.imshow(base, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            bound = float(np.abs(attr).max()) or 1.0
            im = ax.imshow(attr, cmap="bwr", vmin=-bound, vmax=bound, alpha=0.6, interpolation="nearest")
            ax.set_title(f"{method}\n{label}", fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
            fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
    fig.suptitle(f"{title} — attribution (red: pushed towards the class)", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_steps(steps: list[tuple[str, np.ndarray]], title: str, path: Path) -> Path:
    """The preprocessing stages side by side, each titled."""
    fig = Figure(figsize=(2.3 * len(steps), 3.0))
    for i, (name, pic) in enumerate(steps):
        ax = fig.add_subplot(1, len(steps), i + 1)
        if pic.ndim == 3:
            ax.imshow(pic, interpolation="nearest")
        else:  # grey levels on their own 0..255 scale (a faint paper gradient stays faint)
            ax.imshow(pic, cmap="gray", interpolation="nearest",
                      **({"vmin": 0, "vmax": 255} if name.startswith(("grey", "paper (")) else {}))
        ax.set_title(name, fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"{title} — preprocessing steps", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def image_steps(img: Image.Image, mode) -> tuple[list[tuple[str, np.ndarray]], torch.Tensor]:
    """A user's image -> (titled preprocessing stages, the (1, 28, 28) model input), using
    lenet.preprocess's own stage functions."""
    shown = img.convert("RGBA") if "A" in img.mode or "transparency" in img.info else img.convert("RGB")
    steps = [(f"original {img.width}x{img.height}", np.asarray(shown))]
    seen = undo_pixel_repeat(img)  # what find_ink reads: a "nearest" k-times enlargement at 1/k
    if seen is not img:
        steps.append((f"enlargement undone {seen.width}x{seen.height} (undo_pixel_repeat)",
                      np.asarray(seen.convert(shown.mode))))
    gray = to_gray(seen)
    steps.append((f"grey {gray.shape[1]}x{gray.shape[0]} (to_gray)", gray))
    paper = estimate_paper(gray, mode)
    steps.append(("paper (estimate_paper)", paper.level))
    ink, _, _ = ink_map(gray, paper)
    steps.append(("paper removed (ink_map)", ink))
    found = find_ink(img, mode)
    result = preprocess(img, mode)
    if result.image is None:
        raise LenetError(result.reason or "no digit found")
    steps.append(("ink found (find_ink)", found.mask.astype(np.float32)))
    left, top, right, bottom = result.bbox
    s = found.scale
    crop = found.ink[int(top / s):max(int(np.ceil(bottom / s)), int(top / s) + 1),
                     int(left / s):max(int(np.ceil(right / s)), int(left / s) + 1)]
    steps.append((f"ink cropped {crop.shape[1]}x{crop.shape[0]}", crop))
    steps.append(("fitted 28x28 (to_model_input)", result.image[0].numpy()))
    return steps, result.image


# -- the command --------------------------------------------------------------------------

def explain_one(model: nn.Module, meta: dict[str, Any], image: torch.Tensor, out_dir: Path, label: str,
                steps: list[tuple[str, np.ndarray]] | None = None, true: int | None = None) -> dict[str, Any]:
    """Write the four pictures for one (1, 28, 28) image in [0, 1]; returns the --json object."""
    spec = get_spec(meta["model"])
    model.eval()
    names = list(meta.get("class_names") or map(str, range(model_outputs(model, spec))))
    x = prepare_input(image[None], spec)  # (1, 1, S, S) normalised
    layer_stages = stages(model, spec.name)
    logits = run_with_hooks(model, x, layer_stages)[0]
    probs = torch.softmax(logits, 0)
    top2 = probs.topk(2).indices.tolist()
    title = f"{spec.name} on {meta.get('dataset', 'unknown data')}: {label}"
    if true is not None:
        title += f" (true {names[true]})"
    title += f", predicted {names[top2[0]]}"
    steps = list(steps or [])
    steps.append((f"model input {x.shape[-1]}x{x.shape[-2]} (normalised)", x[0, 0].numpy()))
    out_dir.mkdir(parents=True, exist_ok=True)
    files = [plot_steps(steps, title, out_dir / FILES[0]),
             plot_activations(layer_stages, image, title, out_dir / FILES[1], names),
             plot_kernels(model, title, out_dir / FILES[2])]
    maps = attributions(model, spec, image, top2)
    files.append(plot_attributions(maps, image, [f"{names[t]} (p={probs[t]:.2f})" for t in top2],
                                   title, out_dir / FILES[3]))
    return {"input": label, "model": spec.name, "prediction": top2[0], "name": names[top2[0]],
            "runner_up": top2[1], "probability": round(float(probs[top2[0]]), 4),
            "files": [str(f) for f in files], "steps": [name for name, _ in steps],
            "layers": [{"name": s.name, "title": s.title, "shape": s.shape} for s in layer_stages]}


def model_outputs(model: nn.Module, spec: ModelSpec) -> int:
    with torch.no_grad():
        return int(model(torch.zeros(1, 1, spec.input_size, spec.input_size)).shape[1])


def _folder_name(name: str, used: set[str]) -> str:
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "image"
    candidate, n = base, 2
    while candidate in used:
        candidate, n = f"{base}-{n}", n + 1
    used.add(candidate)
    return candidate


def explain_command(inputs: list[str], indices: list[int], checkpoint: str | None, out: Path,
                    root: str | None = None) -> list[dict[str, Any]]:
    """`lenet explain`: the pictures for each image file and each test-set index, each in
    OUT/NAME/ (NAME: the file's stem, or test-N)."""
    if not inputs and not indices:
        raise LenetError("name an IMAGE or give --index N (a test-set image)")
    model, meta = load_checkpoint(checkpoint)
    mode = DIGITS if is_digit_model(meta) else OBJECTS
    results, used = [], set()
    if indices:
        from lenet.data import load_dataset

        data = load_dataset(meta.get("dataset", "mnist"), Path(root) if root else None)
        for i in indices:
            if not 0 <= i < len(data.test_images):
                raise LenetError(f"--index {i}: the test set has images 0..{len(data.test_images) - 1}")
            image = data.test_images[i].float().div(255)[None]  # (1, 28, 28), as evaluation sees it
            steps = [(f"{data.name} test[{i}] 28x28 (as stored)", image[0].numpy())]
            results.append(explain_one(model, meta, image, out / _folder_name(f"test-{i}", used),
                                       f"test[{i}]", steps, true=int(data.test_labels[i])))
    for shown, file, _folder, error in find_images(inputs):
        if error:
            raise LenetError(error)
        img = open_image(file)
        try:
            steps, image = image_steps(img, mode)
        except LenetError as exc:
            raise LenetError(f"{shown}: {exc}") from None
        results.append(explain_one(model, meta, image, out / _folder_name(file.stem, used), file.name, steps))
    return results
