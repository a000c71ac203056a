"""`lenet bench`: training and inference throughput of this machine, measured with our code.

    lenet bench                    # lenet5, batch 512: one training epoch, the 10k test set, single images
    lenet bench --model lenet5-bn --batch-size 256 --json

For the side-by-side comparison with the tutorials' DataLoader pipeline, see
benchmarks/train_throughput.py, which uses the same functions.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageDraw

from lenet.config import TrainConfig, check
from lenet.data import Dataset, load_dataset
from lenet.layers import layer_by_layer
from lenet.models import create_model
from lenet.precision import set_eval_precision
from lenet.train import Run, evaluate


def train_epoch_rate(model_name: str, data: Dataset, augment: bool, batch_size: int = 128,
                     layerwise: bool = False) -> tuple[float, float]:
    """(images/s, seconds) of one full training epoch of our trainer (nothing is written).
    `layerwise` times the model's modules run one by one (the reference that LeNet5's and
    LeNet5BN's fast forwards replace) instead of the model's own forward."""
    cfg = TrainConfig(model=model_name, augment=augment, batch_size=batch_size, epochs=1, out="")
    run = Run(cfg, data, torch.device("cpu"))
    if layerwise:
        run.model = layer_by_layer(run.model)  # the same parameters, which run.opt already holds
    row = run.train_epoch(run.make_step(), progress=False)
    return row["images_per_second"], row["seconds"]


def eval_seconds(model_name: str, data: Dataset, layerwise: bool = False, precision: str = "float32") -> float:
    """Seconds to evaluate the whole test set (after one warm-up batch); `precision` as
    `lenet eval --precision` (lenet.precision)."""
    model = create_model(model_name).to(memory_format=torch.channels_last)
    set_eval_precision(model, precision)
    spec = model.input_spec
    if layerwise:
        model = layer_by_layer(model)
    evaluate(model, spec, data.test_images[:500], data.test_labels[:500])
    start = time.perf_counter()
    evaluate(model, spec, data.test_images, data.test_labels)
    return time.perf_counter() - start


def predict_latency_ms(repeats: int = 50) -> float:
    """Median ms for one canvas-sized drawing: preprocessing + a batch-of-one forward pass."""
    from lenet.predict import Predictor

    canvas = Image.new("L", (280, 280), 255)
    ImageDraw.Draw(canvas).line([(90, 60), (200, 60), (120, 230)], fill=0, width=24)  # a 7
    predictor = Predictor()
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        predictor.predict_images([canvas])
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:]) * 1000  # the first call warms up


def bench(model_name: str = "lenet5", root: Path | None = None, batch_size: int = 512) -> dict[str, Any]:
    check(TrainConfig(model=model_name, batch_size=batch_size, out=""))  # bad values: one clear line, before any work
    data = load_dataset("mnist", root)
    rate, seconds = train_epoch_rate(model_name, data, False, batch_size)
    aug_rate, aug_seconds = train_epoch_rate(model_name, data, True, batch_size)
    precision = set_eval_precision(create_model(model_name), "auto")  # what `lenet eval` runs
    eval_10k = eval_seconds(model_name, data, precision=precision)
    return {"model": model_name, "threads": torch.get_num_threads(), "batch_size": batch_size,
            "train_images_per_second": round(rate), "epoch_seconds": round(seconds, 2),
            "train_images_per_second_augmented": round(aug_rate), "epoch_seconds_augmented": round(aug_seconds, 2),
            "eval_10k_seconds": round(eval_10k, 3), "eval_precision": precision,
            "predict_one_drawing_ms": round(predict_latency_ms(), 2)}
