"""What lenet.layers' fast forward paths buy: training images/s of the same model run layer by
layer (`lenet.layers.layer_by_layer`, the plain nn.Sequential) and through its fast `forward`, interleaved in
one process so a noisy neighbour hits both alike; and the 10,000-image evaluation both ways.

    python benchmarks/fast_paths.py                      # lenet5 (batch 128) and lenet5-bn (batch 256)
    python benchmarks/fast_paths.py --repeats 5 --json
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict

import torch

from lenet.bench import eval_seconds, train_epoch_rate
from lenet.data import default_root, load_dataset

CASES = {"lenet5": 128, "lenet5-bn": 256}  # each model at its preset's batch size (paper, quick)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    data = load_dataset("mnist", default_root())
    results: dict[str, list[float]] = defaultdict(list)
    for repeat in range(args.repeats):
        for name, batch in CASES.items():
            order = (True, False) if repeat % 2 == 0 else (False, True)  # alternate who goes first
            for layerwise in order:
                key = f"{name}_{'layerwise' if layerwise else 'fast'}"
                results[f"{key}_images_per_second"].append(train_epoch_rate(name, data, False, batch, layerwise)[0])
                results[f"{key}_eval_10k_seconds"].append(eval_seconds(name, data, layerwise))
    med = {k: statistics.median(v) for k, v in results.items()}
    summary = {"threads": torch.get_num_threads(), "repeats": args.repeats,
               **{k: round(v, 3 if "seconds" in k else 0) for k, v in med.items()}}
    if args.json:
        print(json.dumps(summary))
        return
    print(f"{summary['threads']} threads, median of {args.repeats} interleaved repeats")
    print(f"{'model':<12}{'batch':>6}{'layer by layer':>16}{'fast forward':>14}{'speed-up':>10}"
          f"{'eval 10k':>10}{'fast':>8}")
    for name, batch in CASES.items():
        slow, fast = med[f"{name}_layerwise_images_per_second"], med[f"{name}_fast_images_per_second"]
        print(f"{name:<12}{batch:>6}{slow:>12,.0f} i/s{fast:>10,.0f} i/s{fast / slow:>9.2f}x"
              f"{med[f'{name}_layerwise_eval_10k_seconds']:>9.3f}s{med[f'{name}_fast_eval_10k_seconds']:>7.3f}s")


if __name__ == "__main__":
    main()
