"""Static int8 quantisation of an exported ONNX model, made to pay under onnxruntime on a CPU.

`lenet export --int8` used onnxruntime's dynamic quantisation: every activation is quantised on
the fly and convolutions become ConvInteger, which onnxruntime runs without its fast int8
kernels (6x slower than float32 on a 2-core AVX-512 CPU). Here, instead:

- `quant_pre_process` (shape inference and graph optimisation, as onnxruntime advises), then
  static QDQ quantisation: int8 weights per output channel, uint8 activations with ranges
  calibrated on CALIBRATION_IMAGES training images (seeded), so QLinearConv and QGemm run on
  onnxruntime's int8 kernels (VNNI where the CPU has it);
- the first convolution stays float32 when it reads a single channel (the image): int8 kernels
  gain nothing on one input channel (4x slower than float32 here), and it is the layer with the
  most outputs. Its ReLU, pooling and such up to the next convolution stay float32 with it, a
  ReLU followed by max-pooling being swapped (the same values): the int8 part then starts after
  the pool, where onnxruntime cannot move the quantisation back in front of it (it does so
  across a max-pool, which then runs on uint8 in NCHW: 5x slower).

benchmarks/inference.py measures it: the embedded MNIST model, 10,000 test images, same accuracy.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import numpy as np
import onnx

CALIBRATION_IMAGES = 300
SEED = 0
LAYERS = ("Conv", "Gemm", "MatMul")  # what is worth quantising; what ends a float32 block


def calibration_images(train_images, n: int = CALIBRATION_IMAGES, seed: int = SEED) -> np.ndarray:
    """n training images (uint8 (N, 28, 28)) picked with a seeded generator -> (n, 1, 28, 28) float32 in [0, 1]."""
    pick = np.random.default_rng(seed).choice(len(train_images), size=min(n, len(train_images)), replace=False)
    return (np.asarray(train_images)[np.sort(pick)].astype(np.float32) / 255.0)[:, None]


def float_first_block(model: onnx.ModelProto) -> list[str]:
    """Names of the first Conv, when it reads one input channel, and of the nodes after it up to
    the next layer (each the only reader of the one before); [] when the first layer is not such a conv."""
    nodes, weights = list(model.graph.node), {t.name: t for t in model.graph.initializer}
    first = next((n for n in nodes if n.op_type in LAYERS), None)
    if first is None or first.op_type != "Conv" or first.input[1] not in weights or weights[first.input[1]].dims[1] != 1:
        return []
    block, tail = [first.name], first
    while True:
        readers = [n for n in nodes if tail.output[0] in n.input]
        if len(readers) != 1 or readers[0].op_type in LAYERS or len(readers[0].output) != 1:
            return block
        tail = readers[0]
        block.append(tail.name)


def swap_relu_maxpool(model: onnx.ModelProto, names: list[str]) -> None:
    """Within `names`, Relu -> MaxPool (its only reader) becomes MaxPool -> Relu: max-pooling
    commutes with any non-decreasing function, so the values are the same."""
    nodes = model.graph.node
    index = {n.name: i for i, n in enumerate(nodes)}
    for name in names:
        i = index[name]
        readers = [j for j, n in enumerate(nodes) if nodes[i].output[0] in n.input]
        if nodes[i].op_type != "Relu" or len(readers) != 1 or nodes[readers[0]].name not in names \
                or nodes[readers[0]].op_type != "MaxPool":
            continue
        j = readers[0]
        x, mid, y = nodes[i].input[0], nodes[i].output[0], nodes[j].output[0]
        pool, relu = onnx.NodeProto(), onnx.NodeProto()
        pool.CopyFrom(nodes[j])
        relu.CopyFrom(nodes[i])
        pool.input[0], pool.output[0] = x, mid
        relu.input[0], relu.output[0] = mid, y
        nodes[i].CopyFrom(pool)  # the pool takes the ReLU's place: still in topological order
        nodes[j].CopyFrom(relu)
        for stale in [v for v in model.graph.value_info if v.name == mid]:  # its shape is the pooled one now
            model.graph.value_info.remove(stale)


class _Reader:
    """onnxruntime's CalibrationDataReader protocol: the calibration images in batches of 100."""

    def __init__(self, images: np.ndarray, input_name: str):
        self.batches = iter([{input_name: images[i:i + 100]} for i in range(0, len(images), 100)])

    def get_next(self):
        return next(self.batches, None)


def quantize_int8(src: str, dst: str, calibration: np.ndarray) -> list[str]:
    """Write the static int8 model of the float ONNX file `src` to `dst`; returns the nodes kept
    in float32. The metadata_props of `src` are kept."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quant_pre_process, quantize_static

    source = onnx.load(src)
    with tempfile.TemporaryDirectory() as folder:
        pre = str(Path(folder) / "pre.onnx")
        logging.disable(logging.WARNING)  # the quantiser logs advice for every tensor
        try:
            quant_pre_process(src, pre)
            model = onnx.load(pre)
            keep = float_first_block(model)
            swap_relu_maxpool(model, keep)
            onnx.save(model, pre)
            quantize_static(pre, dst, _Reader(calibration, source.graph.input[0].name), quant_format=QuantFormat.QDQ,
                            per_channel=True, reduce_range=False, activation_type=QuantType.QUInt8,
                            weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
                            nodes_to_exclude=keep)
        finally:
            logging.disable(logging.NOTSET)
    quantized = onnx.load(dst)
    del quantized.metadata_props[:]
    quantized.metadata_props.extend(source.metadata_props)
    onnx.checker.check_model(quantized)
    onnx.save(quantized, dst)
    return keep


def onnx_accuracy(path: str, images, labels, batch: int = 1000) -> float:
    """Top-1 accuracy of an ONNX file (input (B, 1, 28, 28) in [0, 1]) under onnxruntime on the CPU;
    images: uint8 (N, 28, 28), labels: (N,)."""
    import onnxruntime as ort

    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    images, labels = np.asarray(images), np.asarray(labels)
    correct = 0
    for start in range(0, len(images), batch):
        x = (images[start:start + batch].astype(np.float32) / 255.0)[:, None]
        correct += int((session.run(None, {name: x})[0].argmax(1) == labels[start:start + batch]).sum())
    return correct / max(len(images), 1)
