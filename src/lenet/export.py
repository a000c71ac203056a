"""ONNX export: the model with its input contract built in, checked against PyTorch.

The exported graph takes what preprocessing produces — `image`: (B, 1, 28, 28) float32 in
[0, 1], white digit on black — and returns `logits` (B, classes); normalisation and the pad to
32x32 are inside, so an ONNX user needs no knowledge of the model's mean/std. The class names
and the source checkpoint's metadata go into the ONNX file's metadata_props.

    lenet export --format onnx --out lenet5.onnx                 # the embedded MNIST model
    lenet export --checkpoint runs/best/model.safetensors --format onnx --int8 --out best-int8.onnx
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lenet.checkpoint import load_checkpoint
from lenet.errors import LenetError
from lenet.fileio import atomic_write
from lenet.models import ModelSpec, prepare_input

OPSET = 17
TOLERANCE = 1e-4  # max |logit difference| between onnxruntime and PyTorch (float export)


class WithInputContract(nn.Module):
    """(B, 1, 28, 28) in [0, 1] -> normalised, padded -> the model -> logits."""

    def __init__(self, model: nn.Module, spec: ModelSpec):
        super().__init__()
        self.model, self.spec = model, spec

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.model(prepare_input(image, self.spec))


def export_onnx(checkpoint: str | None, out: Path, int8: bool = False) -> dict[str, Any]:
    """Write the ONNX file atomically, run it with onnxruntime, compare with PyTorch."""
    try:
        import onnx
        import onnxruntime as ort
    except ImportError:
        raise LenetError("ONNX export needs the export extra: pip install 'lenet[export]'") from None
    model, meta = load_checkpoint(checkpoint)
    wrapped = WithInputContract(model, model.input_spec).eval()
    sample = torch.rand(8, 1, 28, 28)
    out = Path(out)
    check: dict[str, float] = {}

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
            from onnxruntime.quantization import QuantType, quantize_dynamic

            logging.disable(logging.WARNING)  # onnxruntime's quantizer logs advice for every tensor
            try:
                quantize_dynamic(tmp, tmp, weight_type=QuantType.QInt8)
            finally:
                logging.disable(logging.NOTSET)
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
    return {"path": str(out), "model": meta["model"], "int8": int8, "bytes": out.stat().st_size,
            "max_abs_logit_difference": check["diff"], "top1_agreement": check["agree"]}
