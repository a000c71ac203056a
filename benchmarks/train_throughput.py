"""Training throughput: our in-memory trainer vs the tutorials' pipeline, same model, one run.

The tutorials' pipeline is torchvision's MNIST dataset + ToTensor + Normalize + DataLoader
(batch 16 and 64): every image goes through PIL one by one. Ours slices uint8 tensors held in
memory and augments whole batches. Both train the same model with the same optimiser; we
report images/s (median of the timed repeats), the ratio, the implied epoch time, and the
time to evaluate the 10,000 test images.

    python benchmarks/train_throughput.py                 # lenet5, batch 128 and 512, 2 repeats
    python benchmarks/train_throughput.py --model lenet5-bn --batch-sizes 256 --repeats 3 --json
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import time
import warnings
from collections import defaultdict

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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="lenet5")
    p.add_argument("--batch-sizes", default="128,512", help="our trainer's batch sizes, comma-separated")
    p.add_argument("--tutorial-images", type=int, default=12_800, help="images timed per tutorial run")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    root = default_root()
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


if __name__ == "__main__":
    main()
