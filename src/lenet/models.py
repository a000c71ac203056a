"""The LeNet-5 model zoo: nn.Modules, a small registry, and each model's input contract.

No I/O here. `create_model("lenet5")` builds a model; `get_spec(name)` gives its input
contract (side length it sees, normalisation); `prepare_input(images, spec)` turns a batch
of 28x28 images in [0, 1] (or uint8) into exactly what that model's `forward` expects.
Every `forward` returns logits (B, num_classes); softmax only where probabilities are shown.

    lenet models            # the registry, with parameter counts
    lenet summary lenet5    # per-layer shapes (torchinfo)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from lenet.layers import LeNet5, LeNet5BN

# Mean and std of the MNIST training pixels in [0, 1]; the tutorials' Normalize((0.1307,), (0.3081,)).
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081


@dataclass(frozen=True)
class ModelSpec:
    """A registered model and its input contract (timm's `_cfg`, reduced to what we need)."""

    name: str
    builder: Callable[..., nn.Module]
    description: str
    input_size: int  # side the model sees: 28, or 32 for the paper's 28x28 digit padded by 2
    mean: float = MNIST_MEAN
    std: float = MNIST_STD


_REGISTRY: dict[str, ModelSpec] = {}


def register_model(name: str, *, input_size: int, description: str):
    """Decorator: `@register_model("lenet5", input_size=32, description=...)` on a builder."""

    def wrap(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _REGISTRY[name] = ModelSpec(name, builder, description, input_size)
        return builder

    return wrap


def list_models() -> list[ModelSpec]:
    return list(_REGISTRY.values())


def get_spec(name: str) -> ModelSpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; choose one of: {', '.join(_REGISTRY)}") from None


def create_model(name: str, **kwargs) -> nn.Module:
    """Build a registered model; kwargs go to its builder (e.g. num_classes=10). Its input
    contract travels with it as `model.input_spec` (timm's pretrained_cfg), so callers never
    look it up again from a name."""
    spec = get_spec(name)
    model = spec.builder(**kwargs)
    model.input_spec = spec
    return model


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters, the way the paper counts them (C3's absent connections excluded)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def prepare_input(images: torch.Tensor, spec: ModelSpec) -> torch.Tensor:
    """(B, 28, 28) or (B, 1, 28, 28), uint8 or float in [0, 1] -> normalised (B, 1, S, S).

    The pad to 32 is the paper's blank border: it is added before normalisation, so the
    border has the background's value, not zero.
    """
    x = images.float().div_(255.0) if images.dtype == torch.uint8 else images.float()
    if x.dim() == 3:
        x = x.unsqueeze(1)
    pad = (spec.input_size - x.shape[-1]) // 2
    if pad > 0:
        x = F.pad(x, (pad, pad, pad, pad))
    return (x - spec.mean) / spec.std


def _side(size: int, kernel: int, padding: int = 0, stride: int = 1) -> int:
    """Output side of a convolution or pooling layer."""
    return (size + 2 * padding - kernel) // stride + 1


@register_model("lenet5", input_size=32, description="LeCun et al. 1998 as published: "
                "scaled tanh, trainable subsampling, C3 partial connections (Table I)")
def lenet5(num_classes: int = 10) -> nn.Module:
    """LeNet-5 as in the paper, with two documented departures.

    Follows the paper: 32x32 input (the 28x28 digit padded by 2), C1 6@5x5, S2 as trainable
    subsampling (2x2 sum x coefficient + bias per map, then the squashing function), C3
    16@5x5 with Table I's partial connections, S4 like S2, C5 120@5x5 (a convolution that
    covers its whole 5x5 input), F6 84 units, activation 1.7159 tanh(2a/3) throughout.
    Departs from it: the output layer is a linear layer (84 -> 10 logits) trained with
    cross-entropy instead of the paper's 10 Euclidean RBF units with fixed 7x12 bitmap
    prototypes and its MAP loss; and weights use PyTorch's default initialisation (uniform
    +-1/sqrt(fan_in); subsampling starts as an average, biases at zero) instead of the
    paper's uniform +-2.4/F_in.
    """
    return LeNet5(num_classes)


def _lenet_conv_c5(act: type[nn.Module], pool: type[nn.Module], num_classes: int,
                   first_padding: int) -> nn.Module:
    """C1-S2-C3-S4 with a full-connection C3, then C5 as a 5x5 conv to 120, F6 84, out."""
    return nn.Sequential(
        nn.Conv2d(1, 6, 5, padding=first_padding), act(), pool(2),  # (B, 6, 14, 14)
        nn.Conv2d(6, 16, 5), act(), pool(2),  # (B, 16, 5, 5)
        nn.Conv2d(16, 120, 5), act(),  # C5: (B, 120, 1, 1)
        nn.Flatten(),  # (B, 120)
        nn.Linear(120, 84), act(),  # (B, 84)
        nn.Linear(84, num_classes),
    )


@register_model("lenet5-sigmoid-avgpool", input_size=28, description="tutorial variant: "
                "sigmoid, average pooling, conv C5; 28x28 input with padding 2 on C1")
def lenet5_sigmoid_avgpool(num_classes: int = 10) -> nn.Module:
    return _lenet_conv_c5(nn.Sigmoid, nn.AvgPool2d, num_classes, first_padding=2)


@register_model("lenet5-tanh-avgpool", input_size=32, description="tutorial variant: "
                "tanh, average pooling, full C3, conv C5")
def lenet5_tanh_avgpool(num_classes: int = 10) -> nn.Module:
    return _lenet_conv_c5(nn.Tanh, nn.AvgPool2d, num_classes, first_padding=0)


@register_model("lenet5-relu-maxpool", input_size=32, description="tutorial variant: "
                "ReLU, max pooling, full C3, F5 400 -> 120")
def lenet5_relu_maxpool(num_classes: int = 10) -> nn.Module:
    flat = 16 * _side(_side(_side(_side(32, 5), 2, stride=2), 5), 2, stride=2) ** 2  # 16*5*5
    return nn.Sequential(
        nn.Conv2d(1, 6, 5), nn.ReLU(), nn.MaxPool2d(2),  # (B, 6, 14, 14)
        nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2),  # (B, 16, 5, 5)
        nn.Flatten(),  # (B, 400)
        nn.Linear(flat, 120), nn.ReLU(),
        nn.Linear(120, 84), nn.ReLU(),
        nn.Linear(84, num_classes),
    )


@register_model("lenet5-bn", input_size=32, description="modern LeNet-5: same widths with "
                "batch norm, ReLU, max pooling, dropout before the classifier")
def lenet5_bn(num_classes: int = 10, c1: int = 6, c3: int = 16, c5: int = 120, f6: int = 84,
              dropout: float = 0.0) -> nn.Module:
    """LeNet-5's layout (widths adjustable, defaults as published) with BatchNorm + ReLU."""
    return LeNet5BN(num_classes, c1, c3, c5, f6, dropout)


@register_model("mlp", input_size=28, description="tutorial baseline: 784 -> 784 -> 10, ReLU")
def mlp(num_classes: int = 10, hidden: int = 784) -> nn.Module:
    return nn.Sequential(
        nn.Flatten(),  # (B, 784)
        nn.Linear(28 * 28, hidden), nn.ReLU(),
        nn.Linear(hidden, num_classes),
    )


@register_model("cnn-simple", input_size=28, description="tutorial baseline: conv 10@5x5, "
                "max-pool stride 1, dropout, FC 128")
def cnn_simple(num_classes: int = 10) -> nn.Module:
    side = _side(_side(28, 5), 2, stride=1)  # 24 after the conv, 23 after the pool
    return nn.Sequential(
        nn.Conv2d(1, 10, 5), nn.ReLU(),  # (B, 10, 24, 24)
        nn.MaxPool2d(2, stride=1),  # (B, 10, 23, 23)
        nn.Dropout(0.25),
        nn.Flatten(),  # (B, 5290)
        nn.Linear(10 * side * side, 128), nn.ReLU(),
        nn.Dropout(0.5),
        nn.Linear(128, num_classes),
    )
