"""LeNet-5's layers, and the exact fast paths that make it train quickly on a CPU.

The layers are the paper's: LeCun's scaled tanh, trainable subsampling, C3's partial
connections (Table I). `LeNet5` holds them in order, so its parameters, its state_dict and
`lenet summary lenet5` read like the paper, but its `forward` computes the same function in
fewer, cheaper passes over memory (profiled on a 2-core CPU, batch 512):

- f(a) = A tanh(2a/3) equals 2A sigmoid(4a/3) - A. Sigmoid is about 3x cheaper than tanh on
  the CPU, and the affine parts fold into the neighbouring layers' weights, which are tiny,
  instead of costing extra passes over the activations, which are large.
- Subsampling (2x2 sum x coefficient + bias) is one depthwise stride-2 convolution instead
  of pool, multiply, add: about 2x faster forward and backward in channels-last.

`LeNet5BN` (lenet5-bn) max-pools its first two blocks before batch norm and ReLU instead of
after (`normalise_relu_pool`): both are monotone per channel, so the result is the same and
the elementwise work is a quarter. In eval mode it folds each batch norm into the layer before
it and runs its conv blocks on oneDNN's blocked layout (`_folded_forward`): `lenet eval` 1.3-1.8x
as fast again. With `eval_dtype` bfloat16 (lenet.precision, `lenet eval`'s default on CPUs with
AMX units) those blocks and C5 run in bfloat16: the only fast path that is *not* the same
function to float rounding (logits within a few hundredths, tests/test_fast_eval.py).

Each model decides for itself when to take its fast path (`runs_layer_by_layer`): always,
except where a caller needs to see the layers one by one (torch.jit tracing and ONNX export,
torch.compile/torch.export, forward hooks on a layer as torchinfo's summary registers them);
then it runs its modules in order, as the nn.Sequential it is. Each fast path in float32 is the
same function to float rounding, and tests/test_layers.py checks outputs, gradients and running
statistics against the layer-by-layer run (`layer_by_layer(model)`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable
from torch.nn.modules.batchnorm import _BatchNorm

A = 1.7159  # amplitude of LeCun's squashing function f(a) = A tanh(2a/3) (paper, Appendix A)
K = 4.0 / 3.0  # f(a) = 2A sigmoid(K a) - A
_is_compiling = getattr(torch.compiler, "is_compiling", lambda: False)  # PyTorch >= 2.3; earlier: never


def runs_layer_by_layer(model: nn.Module) -> bool:
    """True where a fast forward would hide layers that someone is looking at: while tracing
    (torch.jit, the ONNX exporter), compiling or exporting (dynamo), or when a layer has forward
    hooks (torchinfo's summary, feature-map capture). About 2 microseconds per call."""
    if torch.jit.is_tracing() or _is_compiling():
        return True
    return any(m._forward_hooks or m._forward_pre_hooks for m in model._modules.values())


def layer_by_layer(model: nn.Sequential) -> nn.Sequential:
    """The same modules (shared parameters and buffers) as a plain nn.Sequential: the reference
    run that the fast forwards must match, for tests and benchmarks."""
    return nn.Sequential(*model.children())


class ScaledTanh(nn.Module):
    """LeCun's squashing function f(a) = 1.7159 tanh(2a/3)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return A * torch.tanh(x * (2.0 / 3.0))


def subsample(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, H/2, W/2): each 2x2 block's sum x weight[c] + bias[c], as a
    depthwise stride-2 convolution whose 2x2 kernel is weight[c] everywhere."""
    channels = weight.shape[0]
    kernel = weight.view(channels, 1, 1, 1).expand(channels, 1, 2, 2)
    return F.conv2d(x, kernel, bias, stride=2, groups=channels)


class Subsampling(nn.Module):
    """The paper's S2/S4: sum of each 2x2 block times a trainable coefficient, plus a
    trainable bias, one pair per feature map (S2 has 12 parameters, S4 32)."""

    def __init__(self, channels: int):
        super().__init__()
        self.weight = nn.Parameter(torch.full((channels,), 0.25))  # 0.25: starts as an average
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return subsample(x, self.weight, self.bias)


# Table I of LeCun et al. 1998: which S2 maps (rows 0..5) feed each C3 map (columns 0..15).
C3_TABLE = (
    (0, 1, 2), (1, 2, 3), (2, 3, 4), (3, 4, 5), (0, 4, 5), (0, 1, 5),
    (0, 1, 2, 3), (1, 2, 3, 4), (2, 3, 4, 5), (0, 3, 4, 5), (0, 1, 4, 5), (0, 1, 2, 5),
    (0, 1, 3, 4), (1, 2, 4, 5), (0, 2, 3, 5),
    (0, 1, 2, 3, 4, 5),
)


class PartialConv(nn.Module):
    """C3: a 5x5 convolution 6 -> 16 where map j sees only the inputs C3_TABLE[j].

    Only the 60 connected 5x5 kernels are parameters (60*25 + 16 = 1,516, as in the paper);
    `dense_weight` scatters them into a (16, 6, 5, 5) kernel so one conv2d does the work.
    """

    def __init__(self, table=C3_TABLE, in_channels: int = 6, kernel: int = 5):
        super().__init__()
        outs = [j for j, ins in enumerate(table) for _ in ins]
        ins = [i for conn in table for i in conn]
        self.register_buffer("out_index", torch.tensor(outs), persistent=False)
        self.register_buffer("in_index", torch.tensor(ins), persistent=False)
        self.shape = (len(table), in_channels, kernel, kernel)
        fan_in = torch.tensor([len(table[j]) * kernel * kernel for j in outs], dtype=torch.float)
        bound = (1.0 / fan_in).sqrt().view(-1, 1, 1)  # PyTorch's default conv init, per map's fan-in
        self.weight = nn.Parameter((torch.rand(len(ins), kernel, kernel) * 2 - 1) * bound)
        self.bias = nn.Parameter(torch.zeros(len(table)))

    def dense_weight(self) -> torch.Tensor:
        """(16, 6, 5, 5), zeros where a map is not connected."""
        return self.weight.new_zeros(self.shape).index_put((self.out_index, self.in_index), self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.dense_weight(), self.bias)


class LeNet5(nn.Sequential):
    """LeNet-5 as published (see models.lenet5 for what is and is not the paper's).

    The modules run in order where `runs_layer_by_layer` says so (tracing, export, hooks).
    Otherwise `forward` computes the same function with every activation written as
    h = 2A s - A, s = sigmoid(K a), and the affine parts folded into the next layer: a layer
    computing W h + b computes (2A W) s + (b - A W 1) instead, and each layer's weights and
    bias are scaled by K before its sigmoid.
    """

    def __init__(self, num_classes: int = 10):
        super().__init__(
            nn.Conv2d(1, 6, 5), ScaledTanh(),  # C1: (B, 6, 28, 28)
            Subsampling(6), ScaledTanh(),  # S2: (B, 6, 14, 14)
            PartialConv(), ScaledTanh(),  # C3: (B, 16, 10, 10)
            Subsampling(16), ScaledTanh(),  # S4: (B, 16, 5, 5)
            nn.Conv2d(16, 120, 5), ScaledTanh(),  # C5: (B, 120, 1, 1)
            nn.Flatten(),  # (B, 120)
            nn.Linear(120, 84), ScaledTanh(),  # F6: (B, 84)
            nn.Linear(84, num_classes),  # logits: (B, 10)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if runs_layer_by_layer(self):
            return super().forward(x)
        c1, _, s2, _, c3, _, s4, _, c5, _, _, f6, _, out = self
        s = torch.sigmoid(F.conv2d(x, c1.weight * K, c1.bias * K))  # (B, 6, 28, 28)
        s = self._subsample(s, s2)  # (B, 6, 14, 14)
        s = self._weighted(s, c3.dense_weight(), c3.bias, F.conv2d)  # (B, 16, 10, 10)
        s = self._subsample(s, s4)  # (B, 16, 5, 5)
        s = self._weighted(s.flatten(1), c5.weight.flatten(1), c5.bias, F.linear)  # C5 covers its 5x5 input: (B, 120)
        s = self._weighted(s, f6.weight, f6.bias, F.linear)  # (B, 84)
        return F.linear(s, out.weight * (2 * A), out.bias - A * out.weight.sum(1))  # logits: (B, 10)

    @staticmethod
    def _subsample(s: torch.Tensor, layer: Subsampling) -> torch.Tensor:
        """Next s after S2/S4 applied to h = 2A s - A: each 2x2 sum of h is 2A sum(s) - 4A."""
        return torch.sigmoid(subsample(s, layer.weight * (2 * A * K), (layer.bias - 4 * A * layer.weight) * K))

    @staticmethod
    def _weighted(s: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, op) -> torch.Tensor:
        """Next s after a conv or linear layer applied to h = 2A s - A."""
        ones = weight.sum(tuple(range(1, weight.dim())))  # W 1: each output's sum of weights
        return torch.sigmoid(op(s, weight * (2 * A * K), (bias - A * ones) * K))


def channel_stats(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel biased variance and mean of (B, C, H, W): torch.var_mean's result to float
    rounding, 3-6x faster on a CPU for channels-last input.

    torch.var_mean runs Welford's update per element. Here: two passes (the mean, then the mean
    squared deviation from it, as stable as Welford's for these sizes) over the (B*H*W, C)
    matrix that channels-last memory already is, read as rows of k*C values (k rows side by
    side), so that the reductions run over vector-wide rows rather than rows of 6 or 16."""
    channels = z.shape[1]
    if not z.is_contiguous(memory_format=torch.channels_last) or z.dim() != 4:
        return torch.var_mean(z, dim=(0, 2, 3), correction=0)
    rows = z.permute(0, 2, 3, 1).reshape(-1, channels)  # (B*H*W, C), no copy
    k = next((k for k in (16, 8, 4, 2) if rows.shape[0] % k == 0 and k * channels <= 128), 1)
    wide = rows.reshape(-1, k * channels)  # (B*H*W / k, k*C): k rows side by side
    mean = wide.mean(0).view(k, channels).mean(0)
    var = (wide - mean.repeat(k)).pow_(2).mean(0).view(k, channels).mean(0)
    return var, mean


class _BatchStats(torch.autograd.Function):
    """Per-channel biased variance and mean of (B, C, H, W), with a one-pass backward.

    torch.var_mean's own backward takes about five passes over the (large) input; this one is a
    single addcmul: d/dz = (2 g_var / N) z + (g_mean / N - (2 g_var / N) mean), N = B*H*W.
    """

    @staticmethod
    def forward(ctx, z):
        var, mean = channel_stats(z)  # (C,), (C,)
        ctx.save_for_backward(z, mean)
        return var, mean

    @staticmethod
    @once_differentiable  # a second derivative through this backward would be wrong: refuse it
    def backward(ctx, grad_var, grad_mean):
        z, mean = ctx.saved_tensors
        n = z.numel() / z.shape[1]
        coef = grad_var * (2.0 / n)  # (C,)
        const = grad_mean / n - coef * mean
        return torch.addcmul(const.view(1, -1, 1, 1), z, coef.view(1, -1, 1, 1))


def normalise_relu_pool(z: torch.Tensor, bn: nn.BatchNorm2d, pool: nn.MaxPool2d) -> torch.Tensor:
    """pool(relu(bn(z))) computed as relu(bn(pool(z))): the same function, 4x less elementwise work.

    Batch norm is a per-channel affine map a z + b with z's own statistics (in training), and
    ReLU is monotone, so max-pooling commutes with both when a > 0; for a channel with a < 0 the
    max becomes a min (pooled as -pool(-z)). Running statistics are updated as BatchNorm2d does.
    """
    if bn.running_mean is None:  # track_running_stats=False: not a case our models build
        return pool(torch.relu(bn(z)))
    if bn.training:
        var, mean = _BatchStats.apply(z)  # (C,), (C,): biased, as BN normalises
        with torch.no_grad():
            bn.num_batches_tracked += 1
            momentum = bn.momentum if bn.momentum is not None else 1.0 / bn.num_batches_tracked.item()
            n = z.numel() / z.shape[1]
            bn.running_mean.lerp_(mean, momentum)
            bn.running_var.lerp_(var * (n / max(n - 1, 1)), momentum)  # unbiased, as BN stores it
    else:
        var, mean = bn.running_var, bn.running_mean
    scale = bn.weight * torch.rsqrt(var + bn.eps)  # (C,)
    shift = bn.bias - mean * scale
    if bool((scale < 0).any()):
        sign = torch.where(scale < 0, -torch.ones_like(scale), torch.ones_like(scale)).view(1, -1, 1, 1)  # z's dtype
        pooled = pool(z * sign) * sign
    else:
        pooled = pool(z)
    return torch.relu(torch.addcmul(shift.view(1, -1, 1, 1), pooled, scale.view(1, -1, 1, 1)))


def fold_batch_norm(layer: nn.Conv2d | nn.Linear, bn: _BatchNorm) -> tuple[torch.Tensor, torch.Tensor]:
    """bn(layer(x)) with bn in eval mode, as one layer's (weight, bias): batch norm is then the
    fixed per-channel map s z + (beta - mean s), s = gamma / sqrt(running_var + eps), so
    weight = s W (each output's row scaled) and bias = s (b - mean) + beta."""
    scale = torch.rsqrt(bn.running_var + bn.eps)  # (C,)
    if bn.weight is not None:
        scale = scale * bn.weight
    bias = -bn.running_mean if layer.bias is None else layer.bias - bn.running_mean
    bias = bias * scale if bn.bias is None else torch.addcmul(bn.bias, bias, scale)
    weight = layer.weight * scale.view(-1, *[1] * (layer.weight.dim() - 1))
    return weight, bias


class LeNet5BN(nn.Sequential):
    """lenet5-bn: conv-BN-ReLU-maxpool twice, conv-BN-ReLU (C5), FC-BN-ReLU, dropout, FC.

    Its `forward` runs the two pooled blocks through `normalise_relu_pool` (same function,
    tested against the layer-by-layer run, which it takes itself where `runs_layer_by_layer`
    says so: tracing, export, hooks). Known limit of the fast path: where a gamma is exactly 0,
    its gradient is the one-sided limit, not the layer-by-layer run's tie-breaking choice.
    With every batch norm in eval mode it takes `_folded_forward` instead (same function too).
    """

    def __init__(self, num_classes: int = 10, c1: int = 6, c3: int = 16, c5: int = 120, f6: int = 84,
                 dropout: float = 0.0):
        def conv_block(cin: int, cout: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 5, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

        super().__init__(
            *conv_block(1, c1), nn.MaxPool2d(2),  # (B, c1, 14, 14)
            *conv_block(c1, c3), nn.MaxPool2d(2),  # (B, c3, 5, 5)
            *conv_block(c3, c5),  # C5: (B, c5, 1, 1)
            nn.Flatten(),  # (B, c5)
            nn.Linear(c5, f6, bias=False), nn.BatchNorm1d(f6), nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(f6, num_classes),
        )
        # Precision of the eval-mode conv blocks and C5 on a CPU (lenet.precision); not saved.
        self.eval_dtype = torch.float32

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if runs_layer_by_layer(self):
            return super().forward(x)
        layers = list(self)  # (slicing a Sequential would call this class's constructor)
        if not any(m.training or m.running_mean is None for m in layers if isinstance(m, _BatchNorm)):
            return self._folded_forward(x, layers, self.eval_dtype)  # eval mode (evaluate, predict, serve)
        for conv, bn, _, pool in (layers[0:4], layers[4:8]):
            x = normalise_relu_pool(conv(x), bn, pool)
        for layer in layers[8:]:
            x = layer(x)
        return x

    @staticmethod
    def _folded_forward(x: torch.Tensor, layers: list[nn.Module], dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Eval mode: each batch norm folded into the conv or linear layer before it
        (`fold_batch_norm`), max-pooling before ReLU (ReLU is monotone: the same result on a
        quarter of the values), C5 as the linear layer it is on a 5x5 input (7x faster than the
        conv). Where no gradient is wanted, on a CPU, the conv blocks run on oneDNN's blocked
        layout (`to_mkldnn`: no reorder between conv, pool and ReLU), EVAL_CHUNK images at a time
        (a bound on the memory; fewer, larger chunks suffer less where the CPU is shared: each
        oneDNN call waits for all its threads). benchmarks/inference.py times it.

        With `dtype` bfloat16 that path runs the conv blocks and C5 in bfloat16 (oneDNN wants
        the bias blocked too then); F6 and the classifier stay in float32."""
        c1, n1, _, p1, c3, n3, _, p3, c5, n5, _, flat, f6, n6, _, drop, out = layers
        blocks = [(c1, *fold_batch_norm(c1, n1), p1), (c3, *fold_batch_norm(c3, n3), p3)]
        if (x.device.type == "cpu" and x.dtype == c1.weight.dtype == torch.float32 and x.dim() == 4 and len(x) > 0
                and not torch.is_grad_enabled() and torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled):
            low = dtype == torch.bfloat16
            blocks = [(conv, weight.to(dtype).to_mkldnn(), bias.to(dtype).to_mkldnn() if low else bias, pool)
                      for conv, weight, bias, pool in blocks]  # C1: 2x faster than dense float32
            h = torch.cat([conv_blocks(x[i:i + EVAL_CHUNK].to(dtype).to_mkldnn(), blocks).to_dense()
                           for i in range(0, len(x), EVAL_CHUNK)])  # (B, c3, 5, 5), float32 or bfloat16
        else:
            h = conv_blocks(x, blocks)
        weight, bias = fold_batch_norm(c5, n5)
        if (h.shape[-2:] == weight.shape[-2:] and c5.padding in ((0, 0), "valid") and c5.groups == 1
                and c5.dilation == (1, 1)):  # C5 covers its whole input
            h = torch.relu(F.linear(h.flatten(1), weight.flatten(1).to(h.dtype), bias.to(h.dtype)))  # (B, c5)
            h = h.to(weight.dtype)  # back to the model's dtype after the bfloat16 path
        else:
            h = flat(torch.relu(c5._conv_forward(h.to(weight.dtype), weight, bias)))
        h = torch.relu(F.linear(h, *fold_batch_norm(f6, n6)))  # (B, f6)
        return out(drop(h))  # logits: (B, classes)


EVAL_CHUNK = 1024  # at most this many images at a time through LeNet5BN's eval conv blocks on a CPU


def conv_blocks(h: torch.Tensor, blocks: list[tuple]) -> torch.Tensor:
    """relu(pool(conv(h))) for each (conv, folded weight, folded bias, pool): the eval-mode
    conv-BN-ReLU-pool blocks of LeNet5BN, on a dense or an mkldnn tensor."""
    for conv, weight, bias, pool in blocks:
        h = torch.relu(pool(conv._conv_forward(h, weight, bias)))
    return h
