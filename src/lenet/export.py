"""ONNX export: the model with its input contract built in, checked against PyTorch.

The exported graph takes what preprocessing produces — `image`: (B, 1, 28, 28) float32 in
[0, 1], white digit on black — and returns `logits` (B, classes); normalisation and the pad to
32x32 are inside, so an ONNX user needs no knowledge of the model's mean/std. The class names
and the source checkpoint's metadata go into the ONNX file's metadata_props.

    lenet export --format onnx --out lenet5.onnx                 # the embedded MNIST model
    lenet export --checkpoint runs/best/model.safetensors --format onnx --int8 --out best-int8.onnx

--int8 quantises statically (lenet.quantize: calibrated on training images of the checkpoint's
dataset, so it needs that dataset) and reports the test accuracy of the int8 and float32 files.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lenet.checkpoint import load_checkpoint
from lenet.data import load_dataset
from lenet.datafiles import DATASETS
from lenet.errors import LenetError
from lenet.fileio import atomic_write
from lenet.models import ModelSpec, prepare_input

OPSET = 17
TOLERANCE = 1e-4  # max |logit difference| between onnxruntime and PyTorch (float export)
INT8_MAX_DROP = 0.005  # an int8 file losing more test accuracy than this (half a point) is refused


class WithInputContract(nn.Module):
    """(B, 1, 28, 28) in [0, 1] -> normalised, padded -> the model -> logits."""

    def __init__(self, model: nn.Module, spec: ModelSpec):
        super().__init__()
        self.model, self.spec = model, spec

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.model(prepare_input(image, self.spec))


def export_onnx(checkpoint: str | None, out: Path, int8: bool = False, data_root: Path | None = None) -> dict[str, Any]:
    """Write the ONNX file atomically, run it with onnxruntime, compare with PyTorch; with int8,
    quantise it (calibrated on the checkpoint's dataset, read from `data_root`) and measure the
    test accuracy of both files."""
    try:
        import onnx
        import onnxruntime as ort

        from lenet.quantize import calibration_images, onnx_accuracy, quantize_int8
    except ImportError:
        raise LenetError("ONNX export needs the export extra: pip install 'lenet[export]'") from None
    model, meta = load_checkpoint(checkpoint)
    wrapped = WithInputContract(model, model.input_spec).eval()
    sample = torch.rand(8, 1, 28, 28)
    out = Path(out)
    check: dict[str, float] = {}
    data = None
    if int8:  # calibration and accuracy need the checkpoint's dataset: loaded before anything is written
        if meta.get("dataset") not in DATASETS:
            raise LenetError(f"{meta['path']}: --int8 calibrates on the checkpoint's dataset, and it names "
                             f"{meta.get('dataset')!r}, not one of {', '.join(DATASETS)}")
        data = load_dataset(meta["dataset"], data_root)

    def write(tmp: str) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer notes on shape constants: the side is fixed at 28
            torch.onnx.export(wrapped, (sample,), tmp, input_names=["image"], output_names=["logits"],
                              dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
                              opset_version=OPSET, dynamo=False)
        proto = onnx.load(tmp)
        for key, value in (("class_names", json.dumps(meta.get("class_names", []))), ("lenet", json.dumps(
                {k: meta.get(k) for k in ("model", "model_args", "dataset", "metrics")}))):
            proto.metadata_props.add(key=key, value=value)
        onnx.checker.check_model(proto)
        onnx.save(proto, tmp)
        if int8:
            with tempfile.TemporaryDirectory() as folder:
                fp32 = str(Path(folder) / "float32.onnx")
                shutil.copyfile(tmp, fp32)
                quantize_int8(fp32, tmp, calibration_images(data.train_images))
                check["fp32_accuracy"] = onnx_accuracy(fp32, data.test_images, data.test_labels)
            check["accuracy"] = onnx_accuracy(tmp, data.test_images, data.test_labels)
            if check["fp32_accuracy"] - check["accuracy"] > INT8_MAX_DROP:
                raise LenetError(f"{out}: int8 quantisation loses too much accuracy ({check['accuracy']:.2%} against "
                                 f"{check['fp32_accuracy']:.2%} in float32 on the {data.name} test set); nothing written")
        check["diff"], check["agree"] = compare(tmp)

    def compare(tmp: str) -> tuple[float, float]:
        """Run the written file with onnxruntime; refuse a float export that disagrees."""
        session = ort.InferenceSession(tmp, providers=["CPUExecutionProvider"])
        got = torch.from_numpy(session.run(None, {"image": sample.numpy()})[0])
        with torch.no_grad():
            want = wrapped(sample)
        diff = (got - want).abs().max().item()
        if not int8 and diff > TOLERANCE:
            raise LenetError(f"{out}: onnxruntime disagrees with PyTorch by {diff:.2g}; nothing written")
        return diff, (got.argmax(1) == want.argmax(1)).float().mean().item()

    atomic_write(out, write)  # write() checks the file before it replaces anything at `out`
    result = {"path": str(out), "model": meta["model"], "int8": int8, "bytes": out.stat().st_size,
              "max_abs_logit_difference": check["diff"], "top1_agreement": check["agree"]}
    if int8:  # on the whole test set of the checkpoint's dataset, under onnxruntime
        result.update(dataset=data.name, test_accuracy=check["accuracy"], fp32_test_accuracy=check["fp32_accuracy"])
    return result
