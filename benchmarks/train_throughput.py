"""Training throughput: our in-memory trainer vs the tutorials' pipeline, same model, one run.

The tutorials' pipeline is torchvision's MNIST dataset + ToTensor + Normalize + DataLoader
(batch 16 and 64): every image goes through PIL one by one. Ours slices uint8 tensors held in
memory and augments whole batches. Both train the same model with the same optimiser; we
report images/s (median of the timed repeats), the ratio, the implied epoch time, and the
time to evaluate the 10,000 test images.

    python benchmarks/train_throughput.py                 # lenet5, 2 repeats
    python benchmarks/train_throughput.py --model lenet5-bn --repeats 3 --json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F

from lenet.bench import eval_seconds, train_epoch_rate
from lenet.data import default_root, load_dataset
from lenet.models import create_model, get_spec


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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="lenet5")
    p.add_argument("--batch-size", type=int, default=128, help="our trainer's batch size")
    p.add_argument("--tutorial-images", type=int, default=12_800, help="images timed per tutorial run")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    root = default_root()
    data = load_dataset("mnist", root)
    results: dict[str, list[float]] = {"ours": [], "ours_augmented": [], "tutorial_b16": [], "tutorial_b64": [],
                                        "eval_10k_seconds": []}
    for _ in range(args.repeats):  # interleaved, so a noisy neighbour hits every variant alike
        results["ours"].append(train_epoch_rate(args.model, data, False, args.batch_size)[0])
        results["ours_augmented"].append(train_epoch_rate(args.model, data, True, args.batch_size)[0])
        results["tutorial_b16"].append(tutorial_images_per_second(args.model, 16, args.tutorial_images, root))
        results["tutorial_b64"].append(tutorial_images_per_second(args.model, 64, args.tutorial_images, root))
        results["eval_10k_seconds"].append(eval_seconds(args.model, data))
    med = {k: statistics.median(v) for k, v in results.items()}
    summary = {"model": args.model, "threads": torch.get_num_threads(), "repeats": args.repeats,
               **{f"{k}_median": round(v, 3 if "seconds" in k else 0) for k, v in med.items()},
               "ratio_vs_tutorial_b64": round(med["ours"] / med["tutorial_b64"], 1),
               "ratio_vs_tutorial_b16": round(med["ours"] / med["tutorial_b16"], 1),
               "epoch_seconds_ours": round(55_000 / med["ours"], 1),
               "epoch_seconds_ours_augmented": round(55_000 / med["ours_augmented"], 1),
               "epoch_seconds_tutorial_b64": round(60_000 / med["tutorial_b64"], 1)}
    if args.json:
        print(json.dumps(summary))
        return
    print(f"model {args.model}, {summary['threads']} threads, median of {args.repeats} interleaved repeats")
    print(f"{'pipeline':<34}{'images/s':>10}{'epoch s':>9}")
    for key, label, n in (("ours", f"lenet trainer (batch {args.batch_size})", 55_000),
                          ("ours_augmented", "lenet trainer + batch augmentation", 55_000),
                          ("tutorial_b64", "tutorial DataLoader, batch 64", 60_000),
                          ("tutorial_b16", "tutorial DataLoader, batch 16", 60_000)):
        print(f"{label:<34}{med[key]:>10,.0f}{n / med[key]:>9.1f}")
    print(f"ratio vs tutorial batch 64: {summary['ratio_vs_tutorial_b64']}x, batch 16: "
          f"{summary['ratio_vs_tutorial_b16']}x; evaluating 10,000 test images: {med['eval_10k_seconds']:.3f} s")


if __name__ == "__main__":
    main()
