"""Inference speed, side by side and interleaved in one process (medians of --repeats, ratios):

- PyTorch, `lenet eval`'s model time (lenet.evaluate over the test set, after loading): the
  model's layers run one by one (`layer_by_layer`), its eval forward before batch norm was
  folded (`normalise_relu_pool` with the running statistics, reproduced here), and its own
  forward now (batch norm folded, oneDNN's blocked layout), in float32 and, where oneDNN has
  bfloat16 convolutions, in bfloat16 (`lenet eval --precision`; its default on CPUs with AMX);
- onnxruntime: the float32 and the int8 file of `lenet export [--int8]`, seconds over the test
  set (batches of 1,000), test accuracy and size;
- `lenet predict` over a folder of realistic digit photos, scans and drawings
  (benchmarks/realistic_digits.py): images/s with one process, and with a worker per core.

    python benchmarks/inference.py                      # 10,000 test images, 300 files, 5 repeats
    python benchmarks/inference.py --repeats 9 --json
    python benchmarks/inference.py --threads 1          # where other jobs share the cores: see README
"""

from __future__ import annotations

import argparse
import copy
import io
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

from realistic_digits import generate  # noqa: E402 - a sibling script

from lenet.checkpoint import load_checkpoint  # noqa: E402
from lenet.data import load_dataset  # noqa: E402
from lenet.export import export_onnx  # noqa: E402
from lenet.layers import LeNet5BN, layer_by_layer, normalise_relu_pool  # noqa: E402
from lenet.precision import bfloat16_convolutions, set_eval_precision  # noqa: E402
from lenet.predict import predict_command  # noqa: E402
from lenet.distributed import cpu_cores  # noqa: E402
from lenet.train import evaluate  # noqa: E402

FOLDER_KINDS = ("fonts", "canvas", "scans", "light-on-dark")
PNG = b"\x89PNG"


class Unfolded(nn.Module):
    """LeNet5BN's eval forward before batch norm was folded: the pooled blocks through
    normalise_relu_pool with the running statistics, then the remaining modules one by one."""

    def __init__(self, model: LeNet5BN):
        super().__init__()
        self.layers = nn.ModuleList(model)  # the same modules

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv, bn, _, pool in (self.layers[0:4], self.layers[4:8]):
            x = normalise_relu_pool(conv(x), bn, pool)
        for layer in self.layers[8:]:
            x = layer(x)
        return x


def onnx_runner(path: str, images: np.ndarray, threads: int | None, batch: int = 1000):
    """A function running the file over all images, returning the logits (threads: onnxruntime's
    intra-op threads; None: its default, one per core)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or 0
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    return lambda: np.concatenate([session.run(None, {"image": images[i:i + batch]})[0]
                                   for i in range(0, len(images), batch)])


def make_folder(folder: Path, n: int) -> int:
    """n realistic digit images (PNG/JPEG) in `folder`, the four kinds in turn."""
    folder.mkdir(parents=True, exist_ok=True)
    for k, kind in enumerate(FOLDER_KINDS):
        count = n // len(FOLDER_KINDS) + (k < n % len(FOLDER_KINDS))
        for i, data in enumerate(generate(kind, count, seed=0)[0]):
            suffix = ".png" if data.startswith(PNG) else ".jpg"
            (folder / f"{kind}-{i:04d}{suffix}").write_bytes(data)
    return n


def measure(args) -> dict:
    root = Path(args.data_root) if args.data_root else None
    data = load_dataset("mnist", root)
    images, labels = data.test_images[:args.limit], data.test_labels[:args.limit]
    model, meta = load_checkpoint(args.checkpoint)
    spec = model.input_spec
    torch_models = {"layer_by_layer": layer_by_layer(model), "folded": model}
    if isinstance(model, LeNet5BN):
        torch_models["unfolded"] = Unfolded(model)
        if bfloat16_convolutions():
            torch_models["folded_bf16"] = copy.deepcopy(model)
            set_eval_precision(torch_models["folded_bf16"], "bfloat16")
    cases, accuracy = {}, {}
    for name, net in torch_models.items():
        cases[f"torch_{name}"] = lambda net=net: evaluate(net, spec, images, labels)["accuracy"]
    work = Path(tempfile.mkdtemp(prefix="lenet-inference-"))
    sizes = {}
    floats = (images.numpy().astype(np.float32) / 255.0)[:, None]
    for kind in ("fp32", "int8"):
        path = work / f"{kind}.onnx"
        sizes[f"onnx_{kind}_bytes"] = export_onnx(args.checkpoint, path, int8=kind == "int8", data_root=root)["bytes"]
        run = onnx_runner(str(path), floats, args.threads)
        cases[f"onnx_{kind}"] = lambda run=run: float((run().argmax(1) == labels.numpy()).mean())
    files = make_folder(work / "folder", args.images)
    for workers in (1, None):
        key = "predict_1_process" if workers == 1 else "predict_all_cores"
        cases[key] = lambda workers=workers: predict_command(
            [str(work / "folder")], args.checkpoint, 3, True, None, out=io.StringIO(), err=io.StringIO(), workers=workers)
    for name, case in cases.items():  # warm-up; the accuracies
        accuracy[name] = case()
    seconds: dict[str, list[float]] = {name: [] for name in cases}
    keys = list(cases)
    for repeat in range(args.repeats):
        for name in keys[repeat % len(keys):] + keys[:repeat % len(keys)]:  # who goes first rotates
            time.sleep(0.2)  # onnxruntime's threads spin a while after a run, worker processes exit: let them
            start = time.perf_counter()
            cases[name]()
            seconds[name].append(time.perf_counter() - start)
    med = {name: statistics.median(v) for name, v in seconds.items()}
    result = {"images": len(labels), "files": files, "repeats": args.repeats, "threads": args.threads or 0,
              "torch_threads": torch.get_num_threads(),
              "cores": cpu_cores(), "model": meta["model"], **sizes}
    for name in torch_models:
        result[f"torch_{name}_seconds"] = round(med[f"torch_{name}"], 4)
        result[f"torch_{name}_accuracy"] = accuracy[f"torch_{name}"]
        result[f"torch_{name}_speedup"] = round(med["torch_layer_by_layer"] / med[f"torch_{name}"], 2)
    for kind in ("fp32", "int8"):
        result[f"onnx_{kind}_seconds"] = round(med[f"onnx_{kind}"], 4)
        result[f"onnx_{kind}_accuracy"] = accuracy[f"onnx_{kind}"]
    result["onnx_int8_speedup"] = round(med["onnx_fp32"] / med["onnx_int8"], 2)
    for key in ("predict_1_process", "predict_all_cores"):
        result[f"{key}_images_per_second"] = round(files / med[key], 1)
    result["predict_speedup"] = round(med["predict_1_process"] / med["predict_all_cores"], 2)
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default=None, help="model file or embedded name (default: mnist)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--limit", type=int, default=10_000, help="test images (default: all 10,000)")
    p.add_argument("--images", type=int, default=300, help="files in the folder lenet predict reads")
    p.add_argument("--data-root", help="where MNIST is (default: lenet's data root)")
    p.add_argument("--threads", type=int, help="PyTorch and onnxruntime threads (default: theirs, one per core)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    r = measure(args)
    if args.json:
        print(json.dumps(r))
        return 0
    print(f"{r['model']}, {r['images']:,} test images, torch {r['torch_threads']} threads, {r['cores']} cores; "
          f"median of {r['repeats']} interleaved repeats")
    for name, title in (("layer_by_layer", "layer by layer"), ("unfolded", "eval path before folding"),
                        ("folded", "model's forward now"), ("folded_bf16", "model's forward, bfloat16")):
        if f"torch_{name}_seconds" in r:
            print(f"  PyTorch {title:<26}{r[f'torch_{name}_seconds']:8.3f} s {r[f'torch_{name}_speedup']:6.2f}x"
                  f"   accuracy {r[f'torch_{name}_accuracy']:.2%}")
    for kind in ("fp32", "int8"):
        print(f"  onnxruntime {kind:<22}{r[f'onnx_{kind}_seconds']:8.3f} s"
              f"{(r['onnx_int8_speedup'] if kind == 'int8' else 1.0):6.2f}x   accuracy {r[f'onnx_{kind}_accuracy']:.2%}"
              f", {r[f'onnx_{kind}_bytes']:,} bytes")
    print(f"  lenet predict, {r['files']} files: {r['predict_1_process_images_per_second']:.0f} images/s in one process, "
          f"{r['predict_all_cores_images_per_second']:.0f} with a worker per core ({r['predict_speedup']:.2f}x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
