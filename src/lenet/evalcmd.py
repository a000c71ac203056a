"""`lenet eval`: a checkpoint on its dataset's test set, with optional pictures.

The numbers come from `lenet.evaluate` (lenet.train.evaluate); this module adds the checkpoint,
the dataset and the pictures. (It is not called lenet/evaluate.py so that `lenet.evaluate` is
always that function, never this module.)

    lenet eval                                   # the embedded MNIST model
    lenet eval --checkpoint runs/best/model.safetensors --json
    lenet eval --checkpoint fashion-mnist --out runs/eval-fashion
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lenet.checkpoint import load_checkpoint
from lenet.data import load_dataset
from lenet.errors import LenetError
from lenet.fileio import write_json
from lenet.models import get_spec
from lenet.report import plot_confusion, save_image_grid
from lenet.train import evaluate

MAX_MISTAKES_SHOWN = 100
PREDICTIONS_SHOWN = 64


def eval_command(checkpoint: str | None, dataset: str | None, out: Path | None,
                 root: str | None = None) -> dict[str, Any]:
    """Evaluate on the test set; with `out`, also write confusion.png, mistakes.png (true>predicted),
    predictions.png (the first test images with their predicted class) and eval.json."""
    model, meta = load_checkpoint(checkpoint)
    trained_on = meta.get("dataset")
    dataset = dataset or trained_on
    if dataset != trained_on:
        raise LenetError(f"{meta['path']} was trained on {trained_on}; evaluating it on {dataset} "
                         f"would compare different classes (drop --dataset or pick a {dataset} checkpoint)")
    data = load_dataset(dataset, Path(root) if root else None)
    if len(meta.get("class_names", [])) != len(data.class_names):
        raise LenetError(f"{meta['path']}: has {len(meta.get('class_names', []))} classes, {dataset} has "
                         f"{len(data.class_names)}")
    spec = get_spec(meta["model"])
    result = evaluate(model, spec, data.test_images, data.test_labels, num_classes=len(data.class_names))
    pred = result.pop("predictions")
    report = {"checkpoint": meta["path"], "model": meta["model"], "dataset": dataset,
              "class_names": data.class_names, **result, "errors": int((pred != data.test_labels).sum())}
    if out is not None:
        wrong = (pred != data.test_labels).nonzero().flatten()[:MAX_MISTAKES_SHOWN]
        names = data.class_names
        titles = [f"{names[int(data.test_labels[i])]}>{names[int(pred[i])]}" for i in wrong.tolist()]
        first = range(min(PREDICTIONS_SHOWN, len(pred)))
        files = [plot_confusion(result["confusion_matrix"], names, out / "confusion.png"),
                 save_image_grid(data.test_images[:len(first)], [names[int(pred[i])] for i in first],
                                 out / "predictions.png", ncols=8)]
        if len(wrong):
            files.append(save_image_grid(data.test_images[wrong], titles, out / "mistakes.png", ncols=10))
        report["files"] = [str(f) for f in files] + [str(out / "eval.json")]
        write_json(out / "eval.json", report)
    return report
