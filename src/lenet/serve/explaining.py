"""`POST /api/explain`'s work on a worker thread: inside the network, for one preprocessed image.

    answer = explain_answer(predictor, seen)     # seen: a Preprocessed with its 28x28 image
    answer["layers"]        # [{"name": "C1", "title": "C1 6@28x28", "shape": [6, 28, 28], "sprite":
                            #   PNG data URL, "columns", "min", "max", "map_min", "map_max", "kernels"}, ...]
    answer["attribution"]   # {"png": 28x28 RGBA data URL, "bound", "target", "method"}

Layers are named and captured by lenet.explain (`stages`, `run_with_hooks`: the paper's names
for LeNet-5 models). Each layer's maps travel as one PNG sprite: the maps side by side in
`columns` columns (a vector layer as one row of N pixels), scaled to 0..255 from the layer's
`min`..`max`. A convolution's kernels come as a sprite too (rows: output maps, columns: input
maps, k x k each, 128 = 0 on the scale -bound..bound). The attribution is Integrated Gradients
from a black image, a few steps in one batched pass (red: pushed towards the predicted class).

Forward hooks are per model, so explaining runs on a private copy of the model for each
worker thread at a time (`Copies`), never on the one that predictions share.
"""

from __future__ import annotations

import base64
import copy
import io
import math
import queue
import threading

import numpy as np
import torch
from PIL import Image
from torch import nn

from lenet.explain import image_steps, run_with_hooks, stages
from lenet.layers import C3_TABLE, PartialConv
from lenet.models import prepare_input
from lenet.imagefile import open_image
from lenet.preprocess import Preprocessed

IG_STEPS = 4  # Integrated Gradients steps, one batch (forward + backward: 5-7 ms, 8 steps ~2 ms more)
MAPS_PER_ROW = 8
STEP_SIDE = 280  # preprocessing pictures are shrunk to at most this side


def data_url(pixels: np.ndarray) -> str:
    """uint8 (H, W) grey, (H, W, 3) RGB or (H, W, 4) RGBA -> a PNG data URL."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels)).save(buf, "PNG", compress_level=1)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def to_uint8(a: np.ndarray, lo: float, hi: float) -> np.ndarray:
    scale = 255.0 / (hi - lo) if hi > lo else 0.0
    return np.clip(np.rint((a - lo) * scale), 0, 255).astype(np.uint8)


def tile(maps: np.ndarray, columns: int) -> np.ndarray:
    """(N, h, w) -> (rows * h, columns * w), maps left to right then top to bottom, no gaps."""
    n, h, w = maps.shape
    rows = math.ceil(n / columns)
    padded = np.zeros((rows * columns, h, w), maps.dtype)
    padded[:n] = maps
    return padded.reshape(rows, columns, h, w).transpose(0, 2, 1, 3).reshape(rows * h, columns * w)


def _r(v: float) -> float:
    return round(float(v), 4)


def layer_json(stage, kernels: dict | None) -> dict:
    """One stage's output -> its sprite, scale and each map's (or unit's) range."""
    out = stage.output.numpy()
    shape = stage.shape
    maps = out.reshape(shape[0], shape[1], shape[2]) if len(shape) == 3 else out.reshape(1, 1, -1)
    lo, hi = float(maps.min()), float(maps.max())
    columns = min(MAPS_PER_ROW, shape[0]) if len(shape) == 3 else 1
    layer = {"name": stage.name, "title": stage.title, "shape": shape, "min": _r(lo), "max": _r(hi),
             "columns": columns, "sprite": data_url(tile(to_uint8(maps, lo, hi), columns))}
    if len(shape) == 3:
        flat = maps.reshape(shape[0], -1)
        layer["map_min"] = [_r(v) for v in flat.min(1)]
        layer["map_max"] = [_r(v) for v in flat.max(1)]
    else:
        layer["values"] = [_r(v) for v in maps.reshape(-1)]
    if kernels:
        layer["kernels"] = kernels
    return layer


def kernels_json(conv: nn.Module) -> dict:
    """A convolution's kernels as one sprite: rows = output maps, columns = input maps."""
    w = (conv.dense_weight() if isinstance(conv, PartialConv) else conv.weight).detach().float().cpu().numpy()
    outs, ins, kh, kw = w.shape
    bound = float(np.abs(w).max()) or 1.0
    pixels = to_uint8(w.transpose(0, 2, 1, 3).reshape(outs * kh, ins * kw), -bound, bound)
    answer = {"shape": [outs, ins, kh, kw], "bound": _r(bound), "sprite": data_url(pixels)}
    if isinstance(conv, PartialConv):  # the paper's Table I: which S2 maps feed each C3 map
        answer["inputs"] = [sorted(int(i) for i in conn) for conn in C3_TABLE]
    return answer


class Copies:
    """A predictor's model, copied for explaining (hooks on it stay private to one thread),
    with its stages' kernels computed once."""

    def __init__(self, predictor):
        self.predictor = predictor
        self.free: queue.SimpleQueue = queue.SimpleQueue()
        self.lock = threading.Lock()
        self._kernels: list[dict | None] | None = None

    def take(self) -> nn.Module:
        try:
            return self.free.get_nowait()
        except queue.Empty:
            with self.lock:  # deepcopy reads the shared model's tensors only
                model = copy.deepcopy(self.predictor.model)
            return model.eval()

    def give_back(self, model: nn.Module) -> None:
        self.free.put(model)

    def kernels(self, model: nn.Module, layer_stages) -> list[dict | None]:
        """Each stage's convolution kernels (C1, C3: maps with a spatial size), else None."""
        if self._kernels is None:
            modules = list(model.children()) if isinstance(model, nn.Sequential) else [model]
            found, start = [], 0
            for stage in layer_stages:
                conv = next((m for m in modules[start:stage.index + 1]
                             if isinstance(m, (nn.Conv2d, PartialConv))), None)
                spatial = stage.output is not None and len(stage.shape) == 3
                found.append(kernels_json(conv) if conv is not None and spatial else None)
                start = stage.index + 1
            self._kernels = found
        return self._kernels


_copies: dict[int, Copies] = {}
_copies_lock = threading.Lock()


def copies_of(predictor) -> Copies:
    with _copies_lock:
        found = _copies.get(id(predictor))
        if found is None or found.predictor is not predictor:
            found = _copies[id(predictor)] = Copies(predictor)
        return found


def attribution(model: nn.Module, spec, image: torch.Tensor, target: int) -> dict:
    """Integrated Gradients (black baseline, IG_STEPS midpoint steps in one batch) -> an RGBA
    overlay: red where a pixel pushed towards `target`, blue where it pushed away."""
    alphas = (torch.arange(IG_STEPS, dtype=torch.float32) + 0.5) / IG_STEPS
    x = (alphas.view(-1, 1, 1, 1) * image.float()[None]).requires_grad_(True)  # (S, 1, 28, 28)
    with torch.enable_grad():
        logits = model(prepare_input(x, spec))
        grad, = torch.autograd.grad(logits[:, target].sum(), x)
    attr = (image.float()[0] * grad.mean(0)[0]).numpy()  # (28, 28)
    bound = float(np.abs(attr).max())
    rgba = np.zeros((*attr.shape, 4), np.uint8)
    rgba[..., 0] = np.where(attr > 0, 220, 30)
    rgba[..., 1] = 40
    rgba[..., 2] = np.where(attr > 0, 30, 230)
    rgba[..., 3] = to_uint8(np.abs(attr), 0.0, bound) if bound > 0 else 0
    return {"png": data_url(rgba), "bound": _r(bound), "target": target,
            "method": f"Integrated Gradients, {IG_STEPS} steps"}


def steps_json(data: bytes, predictor, max_pixels: int) -> list[dict]:
    """The preprocessing stages (lenet.explain.image_steps), each shrunk to STEP_SIDE, as PNGs."""
    img = open_image(data, "upload", max_pixels=max_pixels)
    steps, _ = image_steps(img, predictor.mode)
    answer = []
    for name, pic in steps:
        a = np.asarray(pic)
        if a.dtype != np.uint8:
            finite = a[np.isfinite(a)]
            lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
            if a.dtype == bool or name.startswith(("grey", "paper (")):
                lo, hi = (0.0, 1.0) if a.dtype == bool or hi <= 1.0 else (0.0, 255.0)
            a = to_uint8(np.nan_to_num(a.astype(np.float32)), lo, hi)
        picture = Image.fromarray(a)
        picture.thumbnail((STEP_SIDE, STEP_SIDE), Image.Resampling.NEAREST)
        answer.append({"name": name, "png": data_url(np.asarray(picture))})
    return answer


def explain_answer(predictor, seen: Preprocessed) -> dict:
    """Every layer's maps (sprites), each convolution's kernels and an attribution for one
    preprocessed image; `layers` is empty when nothing was found."""
    if seen.image is None:
        return {"layers": [], "attribution": None}
    spec = predictor.spec
    copies = copies_of(predictor)
    model = copies.take()
    try:
        layer_stages = stages(model, predictor.model_name)
        logits = run_with_hooks(model, prepare_input(seen.image[None].float(), spec), layer_stages)[0]
        kernels = copies.kernels(model, layer_stages)
        layers = [layer_json(s, k) for s, k in zip(layer_stages, kernels, strict=True)]
        overlay = attribution(model, spec, seen.image, int(logits.argmax()))
    finally:
        copies.give_back(model)
    return {"layers": layers, "attribution": overlay}
