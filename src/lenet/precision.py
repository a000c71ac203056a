"""The precision `lenet eval` runs lenet5-bn in: float32, or bfloat16 where the CPU has AMX units.

On such a CPU (Intel Sapphire Rapids and later) oneDNN runs bfloat16 convolutions on the AMX
tiles, and LeNet5BN's eval-mode conv blocks and C5 take 0.10-0.19 s for the 10,000 test images
against 0.20-0.29 s in float32 (2 threads; benchmarks/inference.py); the embedded mnist model's
test predictions are unchanged, fashion-mnist's change on 9 of 10,000. Elsewhere bfloat16 is emulated or runs on narrower units, and "auto"
keeps float32. Only the eval forward without autograd changes: training, attributions
(lenet explain), predict and serve stay float32.

    lenet eval                       # auto
    lenet eval --precision float32   # the exact float32 function everywhere
"""

from __future__ import annotations

import torch
from torch import nn

from lenet.layers import LeNet5BN

EVAL_PRECISIONS = ("auto", "float32", "bfloat16")


def bfloat16_convolutions() -> bool:
    """True where LeNet5BN's eval path can run in bfloat16: oneDNN built in, enabled, and able
    to run bfloat16 convolutions on this CPU (emulated or not)."""
    mkldnn = torch.backends.mkldnn
    supported = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)  # absent without oneDNN
    return bool(mkldnn.is_available() and mkldnn.enabled and supported is not None and supported())


def bfloat16_in_hardware() -> bool:
    """True where the bfloat16 path runs on the CPU's AMX tiles: the only place "auto" picks it."""
    amx = getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)  # private, PyTorch >= 2.3
    return bfloat16_convolutions() and bool(amx())


def set_eval_precision(model: nn.Module, asked: str = "auto") -> str:
    """Sets the precision of a LeNet5BN's eval-mode conv blocks and C5 on a CPU; returns its name.
    "auto": bfloat16 where bfloat16_in_hardware(), else float32; float32 for models without a
    bfloat16 path. Asking for "bfloat16" where it cannot run raises ValueError."""
    if asked not in EVAL_PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(EVAL_PRECISIONS)}, not {asked!r}")
    has_path = isinstance(model, LeNet5BN)
    if asked == "bfloat16" and not has_path:
        raise ValueError("only lenet5-bn models have a bfloat16 path")
    if asked == "bfloat16" and not bfloat16_convolutions():
        raise ValueError("this PyTorch build or CPU runs no oneDNN bfloat16 convolutions")
    low = has_path and (asked == "bfloat16" or (asked == "auto" and bfloat16_in_hardware()))
    if has_path:
        model.eval_dtype = torch.bfloat16 if low else torch.float32
    return "bfloat16" if low else "float32"
