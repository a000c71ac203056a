"""Training throughput: our in-memory trainer vs the tutorials' pipeline, same model, one run.

The tutorials' pipeline is torchvision's MNIST dataset + ToTensor + Normalize + DataLoader
(batch 16 and 64): every image goes through PIL one by one. Ours slices uint8 tensors held in
memory and augments whole batches. Both train the same model with the same optimiser; we
report images/s (median of the timed repeats), the ratio, the implied epoch time, and the
time to evaluate the 10,000 test images. Then data parallel against threads on the same cores:
`lenet train` as 2 processes x 1 thread (torchrun, gloo) and as 1 process x 2 threads, side by
side, with the ratio of their training images/s.

    python benchmarks/train_throughput.py                 # lenet5, batch 128 and 512, 2 repeats
    python benchmarks/train_throughput.py --model lenet5-bn --batch-sizes 256 --repeats 3 --json
    python benchmarks/train_throughput.py --processes-only --train-images 10000   # a quick look
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections import defaultdict
from pathlib import Path

import torch
import torch.nn.functional as F

from lenet.bench import eval_seconds, train_epoch_rate
from lenet.data import default_root, load_dataset
from lenet.models import create_model, get_spec, prepare_input


def tutorial_images_per_second(model_name: str, batch_size: int, images: int, root) -> float:
    """The tutorials' loop: DataLoader over torchvision's MNIST with ToTensor + Normalize."""
    from torchvision import datasets, transforms

    spec = get_spec(model_name)
    pad = (spec.input_size - 28) // 2
    tf = transforms.Compose([transforms.Pad(pad), transforms.ToTensor(),
                             transforms.Normalize((spec.mean,), (spec.std,))])
    loader = torch.utils.data.DataLoader(datasets.MNIST(str(root), train=True, download=False, transform=tf),
                                         batch_size=batch_size, shuffle=True)
    model = create_model(model_name)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    seen, start = 0, time.perf_counter()
    for x, y in loader:
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        seen += len(y)
        if seen >= images:
            break
    return seen / (time.perf_counter() - start)


def onnxruntime_eval_seconds(model_name: str, data) -> float | None:
    """Seconds for onnxruntime to run the 10,000 test images through the same model exported
    to ONNX (batch 2,000); None without the export extra."""
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    spec, model = get_spec(model_name), create_model(model_name).eval()
    images = prepare_input(data.test_images, spec).numpy()  # (10000, 1, S, S)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(model, (torch.from_numpy(images[:8]),), buffer, input_names=["x"], output_names=["logits"],
                          dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}}, opset_version=17, dynamo=False)
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    session = ort.InferenceSession(buffer.getvalue(), options, providers=["CPUExecutionProvider"])
    session.run(None, {"x": images[:2000]})  # warm-up
    start = time.perf_counter()
    for i in range(0, len(images), 2000):
        session.run(None, {"x": images[i:i + 2000]})
    return time.perf_counter() - start


def lenet_train_rate(model_name: str, batch_size: int, nproc: int, threads: int, train_images: int,
                     epochs: int, root) -> dict[str, float]:
    """`lenet train` in a fresh process (or `--nproc` of them, through torchrun): the median training
    images/s over its epochs (augmentation on, evaluation not counted) and the wall time."""
    val_size = 60_000 - train_images  # the rest of the training set becomes the validation split
    with tempfile.TemporaryDirectory() as out:
        cmd = [sys.executable, "-m", "lenet", "train", "--model", model_name, "--batch-size", str(batch_size),
               "--epochs", str(epochs), "--val-size", str(val_size), "--threads", str(threads),
               "--nproc", str(nproc), "--data-root", str(root), "--no-progress", "--out", out, "--json"]
        start = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": str(threads)})
        wall = time.perf_counter() - start
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
        metrics = json.loads(Path(out, "metrics.json").read_text())
    return {"images_per_second": metrics["train_images_per_second"], "wall_seconds": wall,
            "world_size": metrics["world_size"]}


def processes_vs_threads(args, root) -> dict[str, float]:
    """2 processes x 1 thread against 1 process x 2 threads, interleaved over the repeats."""
    b = int(args.batch_sizes.split(",")[-1])
    runs: dict[str, list[dict[str, float]]] = defaultdict(list)
    for _ in range(args.repeats):
        runs["1x2"].append(lenet_train_rate(args.model, b, 1, 2, args.train_images, args.dist_epochs, root))
        runs["2x1"].append(lenet_train_rate(args.model, b, 2, 1, args.train_images, args.dist_epochs, root))
    med = {f"{k}_{m}": statistics.median(r[m] for r in v) for k, v in runs.items()
           for m in ("images_per_second", "wall_seconds")}
    return {"dist_batch_size": b, "dist_train_images": args.train_images, "dist_epochs": args.dist_epochs,
            **{k: round(v, 1) for k, v in med.items()},
            "ratio_2x1_vs_1x2": round(med["2x1_images_per_second"] / med["1x2_images_per_second"], 2)}


def print_processes_vs_threads(d: dict[str, float], repeats: int) -> None:
    print(f"lenet train, batch {d['dist_batch_size']}, {d['dist_train_images']:,} training images, "
          f"{d['dist_epochs']} epochs, median of {repeats}")
    print(f"{'layout':<40}{'images/s':>10}{'wall s':>9}")
    print(f"{'1 process x 2 threads':<40}{d['1x2_images_per_second']:>10,.0f}{d['1x2_wall_seconds']:>9.1f}")
    print(f"{'2 processes x 1 thread (torchrun, gloo)':<40}{d['2x1_images_per_second']:>10,.0f}{d['2x1_wall_seconds']:>9.1f}")
    print(f"2 processes x 1 thread vs 1 process x 2 threads: {d['ratio_2x1_vs_1x2']}x training images/s")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="lenet5")
    p.add_argument("--batch-sizes", default="128,512", help="our trainer's batch sizes, comma-separated")
    p.add_argument("--tutorial-images", type=int, default=12_800, help="images timed per tutorial run")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--json", action="store_true")
    p.add_argument("--processes-only", action="store_true", help="only 2 processes x 1 thread vs 1 x 2")
    p.add_argument("--train-images", type=int, default=55_000, help="training images in the process runs")
    p.add_argument("--dist-epochs", type=int, default=2, help="epochs of each process run")
    args = p.parse_args()
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    root = default_root()
    if args.processes_only:
        load_dataset("mnist", root)  # fetched and checked once, before the timed runs
        dist = processes_vs_threads(args, root)
        if args.json:
            print(json.dumps({"model": args.model, "repeats": args.repeats, **dist}))
        else:
            print_processes_vs_threads(dist, args.repeats)
        return
    data = load_dataset("mnist", root)
    results: dict[str, list[float]] = defaultdict(list)
    for _ in range(args.repeats):  # interleaved, so a noisy neighbour hits every variant alike
        for b in batch_sizes:
            results[f"ours_b{b}"].append(train_epoch_rate(args.model, data, False, b)[0])
        results[f"ours_augmented_b{batch_sizes[-1]}"].append(train_epoch_rate(args.model, data, True, batch_sizes[-1])[0])
        results["tutorial_b16"].append(tutorial_images_per_second(args.model, 16, args.tutorial_images, root))
        results["tutorial_b64"].append(tutorial_images_per_second(args.model, 64, args.tutorial_images, root))
        results["eval_10k_seconds"].append(eval_seconds(args.model, data))
        ort_seconds = onnxruntime_eval_seconds(args.model, data)
        if ort_seconds is not None:
            results["eval_10k_seconds_onnxruntime"].append(ort_seconds)
    med = {k: statistics.median(v) for k, v in results.items()}
    best = max((k for k in med if k.startswith("ours_b")), key=med.get)
    summary = {"model": args.model, "threads": torch.get_num_threads(), "repeats": args.repeats,
               **{f"{k}_median": round(v, 3 if "seconds" in k else 0) for k, v in med.items()},
               "fastest": best,
               "ratio_vs_tutorial_b64": round(med[best] / med["tutorial_b64"], 1),
               "ratio_vs_tutorial_b16": round(med[best] / med["tutorial_b16"], 1),
               "epoch_seconds_fastest": round(55_000 / med[best], 1),
               "epoch_seconds_tutorial_b64": round(60_000 / med["tutorial_b64"], 1)}
    dist = processes_vs_threads(args, root)
    summary.update(dist)
    if args.json:
        print(json.dumps(summary))
        return
    print(f"model {args.model}, {summary['threads']} threads, median of {args.repeats} interleaved repeats")
    print(f"{'pipeline':<40}{'images/s':>10}{'epoch s':>9}")
    rows = [(f"ours_b{b}", f"lenet trainer, batch {b}", 55_000) for b in batch_sizes]
    rows += [(f"ours_augmented_b{batch_sizes[-1]}", f"lenet trainer + augmentation, batch {batch_sizes[-1]}", 55_000),
             ("tutorial_b64", "tutorial DataLoader, batch 64", 60_000),
             ("tutorial_b16", "tutorial DataLoader, batch 16", 60_000)]
    for key, label, n in rows:
        print(f"{label:<40}{med[key]:>10,.0f}{n / med[key]:>9.1f}")
    print(f"fastest of ours vs tutorial batch 64: {summary['ratio_vs_tutorial_b64']}x, batch 16: "
          f"{summary['ratio_vs_tutorial_b16']}x")
    ort_text = (f"; onnxruntime on the exported model: {med['eval_10k_seconds_onnxruntime']:.3f} s"
                if "eval_10k_seconds_onnxruntime" in med else "")
    print(f"evaluating 10,000 test images: PyTorch {med['eval_10k_seconds']:.3f} s{ort_text}")
    print()
    print_processes_vs_threads(dist, args.repeats)


if __name__ == "__main__":
    main()
