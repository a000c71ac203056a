"""`lenet eval`: a checkpoint on its dataset's test set, with optional pictures.

The numbers come from `lenet.evaluate` (lenet.train.evaluate); this module adds the checkpoint,
the dataset and the pictures. (It is not called lenet/evaluate.py so that `lenet.evaluate` is
always that function, never this module.)

    lenet eval                                   # the embedded MNIST model
    lenet eval --checkpoint runs/best/model.safetensors --json
    lenet eval --checkpoint fashion-mnist --out runs/eval-fashion
    lenet eval --precision float32               # no bfloat16, even on a CPU with AMX
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from lenet.checkpoint import load_checkpoint
from lenet.data import load_dataset
from lenet.errors import LenetError
from lenet.fileio import write_json
from lenet.precision import set_eval_precision
from lenet.report import plot_confusion, save_image_grid
from lenet.train import evaluate

MAX_MISTAKES_SHOWN = 100
PREDICTIONS_SHOWN = 64


def mistake_label(true: str, predicted: str) -> str:
    """"true 2 → predicted 7"; for long class names (Fashion-MNIST) the short "T-shirt/top → Shirt"."""
    label = f"true {true} → predicted {predicted}"
    return label if len(label) <= 22 else f"{true} → {predicted}"


def eval_command(checkpoint: str | None, dataset: str | None, out: Path | None,
                 root: str | None = None, precision: str = "auto") -> dict[str, Any]:
    """Evaluate on the test set; with `out`, also write confusion.png, mistakes.png ("true 2 →
    predicted 7"), predictions.png (the first test images with their predicted class, wrong ones
    framed in red) and eval.json; each picture's title names the model, the dataset and the figure.
    `precision` (lenet.precision.set_eval_precision): "auto" runs lenet5-bn's conv blocks in bfloat16
    where the CPU has AMX; the report's "precision" says which ran."""
    model, meta = load_checkpoint(checkpoint)
    try:
        precision = set_eval_precision(model, precision)
    except ValueError as e:
        raise LenetError(f"--precision {precision}: {e} ({meta['path']}: {meta['model']})") from None
    trained_on = meta.get("dataset")
    dataset = dataset or trained_on
    if dataset != trained_on:
        raise LenetError(f"{meta['path']} was trained on {trained_on}; evaluating it on {dataset} "
                         f"would compare different classes (drop --dataset or pick a {dataset} checkpoint)")
    data = load_dataset(dataset, Path(root) if root else None)
    if len(meta.get("class_names", [])) != len(data.class_names):
        raise LenetError(f"{meta['path']}: has {len(meta.get('class_names', []))} classes, {dataset} has "
                         f"{len(data.class_names)}")
    spec = model.input_spec
    start = time.perf_counter()
    result = evaluate(model, spec, data.test_images, data.test_labels, num_classes=len(data.class_names))
    seconds = time.perf_counter() - start  # the model over the test set, after loading
    pred = result.pop("predictions")
    report = {"checkpoint": meta["path"], "model": meta["model"], "dataset": dataset,
              "class_names": data.class_names, **result, "errors": int((pred != data.test_labels).sum()),
              "model_seconds": round(seconds, 4), "precision": precision}
    if out is not None:
        all_wrong = (pred != data.test_labels).nonzero().flatten()
        wrong = all_wrong[:MAX_MISTAKES_SHOWN]
        names, labels = data.class_names, data.test_labels
        titles = [mistake_label(names[int(labels[i])], names[int(pred[i])]) for i in wrong.tolist()]
        first = list(range(min(PREDICTIONS_SHOWN, len(pred))))
        who = f"{meta['model']} on {dataset} test ({len(labels):,} images)"
        marked = [bool(pred[i] != labels[i]) for i in first]
        files = [plot_confusion(result["confusion_matrix"], names, out / "confusion.png",
                                title=f"{who}: confusion matrix, accuracy {result['accuracy']:.2%}"),
                 save_image_grid(data.test_images[first], [names[int(pred[i])] if not marked[i] else
                                 f"{names[int(pred[i])]} (true {names[int(labels[i])]})" for i in first],
                                 out / "predictions.png", ncols=8, marked=marked,
                                 title=f"{who}: predictions for the first {len(first)}, {sum(marked)} wrong (red)")]
        if len(wrong):
            shown = f"{len(wrong)} of {len(all_wrong)}" if len(wrong) < len(all_wrong) else f"all {len(all_wrong)}"
            files.append(save_image_grid(data.test_images[wrong], titles, out / "mistakes.png", ncols=10,
                                         title=f"{who}: {shown} mistakes, true → predicted"))
        report["files"] = [str(f) for f in files] + [str(out / "eval.json")]
        write_json(out / "eval.json", report)
    return report
