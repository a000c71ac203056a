"""The floor under lenet5's training speed set by PyTorch's own convolution kernels (oneDNN).

Times, for one batch, only the convolutions of lenet5 (C1, S2 and S4 as depthwise stride-2
convolutions, C3), forward and backward, in channels-last, with nothing else around them; and
compares their sum with the time one batch may take for a 3-second epoch of 55,000 images.
If the convolutions alone take longer, no Python-level change reaches that epoch time.

    python benchmarks/kernel_floor.py                 # batch 512, PyTorch's default threads
    python benchmarks/kernel_floor.py --batch-size 1024 --json
    python benchmarks/kernel_floor.py --dtype bfloat16   # the same in bfloat16 (AMX units, where the CPU has them)
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F

EPOCH_IMAGES, TARGET_EPOCH_SECONDS = 55_000, 3.0

# name: (input shape without batch, weight shape, stride, groups, input needs a gradient)
LAYERS = {
    "C1 conv 1->6 5x5": ((1, 32, 32), (6, 1, 5, 5), 1, 1, False),
    "S2 depthwise 2x2/2": ((6, 28, 28), (6, 1, 2, 2), 2, 6, True),
    "C3 conv 6->16 5x5": ((6, 14, 14), (16, 6, 5, 5), 1, 1, True),
    "S4 depthwise 2x2/2": ((16, 10, 10), (16, 1, 2, 2), 2, 16, True),
}


def median_ms(fn, repeats: int) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def layer_ms(batch: int, shape, weight_shape, stride: int, groups: int, input_grad: bool, repeats: int,
             dtype: torch.dtype = torch.float32):
    """(forward ms, forward + backward ms) of one convolution on a channels-last batch.

    With one input channel, .contiguous(memory_format=channels_last) keeps NCHW strides (both
    layouts are "contiguous"), and oneDNN's weight gradient is then 4x slower; .to() sets the
    channels-last strides, as nn.Module.to(memory_format=...) does for our models."""
    cl = torch.channels_last
    x = torch.randn(batch, *shape).to(dtype, memory_format=cl).requires_grad_(input_grad)
    w = torch.randn(weight_shape).to(dtype, memory_format=cl).requires_grad_()
    b = torch.randn(weight_shape[0]).to(dtype).requires_grad_()
    grad = F.conv2d(x, w, b, stride=stride, groups=groups).detach().normal_().contiguous(memory_format=cl)
    wanted = (x, w, b) if input_grad else (w, b)
    with torch.no_grad():
        forward = median_ms(lambda: F.conv2d(x, w, b, stride=stride, groups=groups), repeats)
    both = median_ms(lambda: torch.autograd.grad(F.conv2d(x, w, b, stride=stride, groups=groups), wanted, grad),
                     repeats)
    return forward, both


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    dtype = getattr(torch, args.dtype)
    rows = {name: layer_ms(args.batch_size, *spec, args.repeats, dtype) for name, spec in LAYERS.items()}
    total = sum(both for _, both in rows.values())
    budget = TARGET_EPOCH_SECONDS * args.batch_size / EPOCH_IMAGES * 1000
    summary = {"batch_size": args.batch_size, "dtype": args.dtype, "threads": torch.get_num_threads(),
               "layers_ms": {k: {"forward": round(f, 2), "forward_backward": round(fb, 2)} for k, (f, fb) in rows.items()},
               "convolutions_ms_per_batch": round(total, 2), "budget_ms_per_batch_for_3s_epoch": round(budget, 2),
               "epoch_seconds_convolutions_alone": round(total / 1000 * EPOCH_IMAGES / args.batch_size, 2)}
    if args.json:
        print(json.dumps(summary))
        return
    print(f"batch {args.batch_size}, {args.dtype}, {summary['threads']} threads, median of {args.repeats}")
    print(f"{'layer':<22}{'forward ms':>12}{'fwd+bwd ms':>12}")
    for name, (f, fb) in rows.items():
        print(f"{name:<22}{f:>12.2f}{fb:>12.2f}")
    print(f"convolutions alone: {total:.1f} ms per batch = {summary['epoch_seconds_convolutions_alone']} s per "
          f"epoch; a {TARGET_EPOCH_SECONDS:.0f} s epoch allows {budget:.1f} ms per batch for everything")


if __name__ == "__main__":
    main()
