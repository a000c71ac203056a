"""The fast paths in lenet.layers compute the same function, and the same gradients, as the
plain definitions they replace; each model decides itself when to take its fast path; and C3
keeps Table I's connections."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lenet import layers
from lenet.layers import (C3_TABLE, LeNet5, LeNet5BN, PartialConv, Subsampling, _BatchStats, layer_by_layer,
                          normalise_relu_pool)


def outputs_and_grads(model: nn.Module, x: torch.Tensor, y: torch.Tensor):
    model.zero_grad()
    logits = model(x)
    F.cross_entropy(logits, y).backward()
    return logits.detach(), {name: p.grad.clone() for name, p in model.named_parameters()}


@pytest.mark.parametrize("channels_last", [False, True])
def test_lenet5_fast_forward_matches_layer_by_layer(channels_last):
    torch.manual_seed(0)
    model = LeNet5()
    x, y = torch.randn(16, 1, 32, 32) * 2, torch.randint(0, 10, (16,))
    if channels_last:
        model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    fast_out, fast_grads = outputs_and_grads(model, x, y)
    ref_out, ref_grads = outputs_and_grads(layer_by_layer(model), x, y)
    torch.testing.assert_close(fast_out, ref_out, rtol=1e-5, atol=1e-5)
    for name, ref in ref_grads.items():
        torch.testing.assert_close(fast_grads[name], ref, rtol=1e-4, atol=1e-6, msg=name)


def test_lenet5_parameters_keep_the_layer_by_layer_names():
    """Checkpoints written before the fast forward existed must still load."""
    names = [name for name, _ in LeNet5().named_parameters()]
    assert names == ["0.weight", "0.bias", "2.weight", "2.bias", "4.weight", "4.bias", "6.weight", "6.bias",
                     "8.weight", "8.bias", "11.weight", "11.bias", "13.weight", "13.bias"]


def test_lenet5_fast_forward_inference_matches():
    torch.manual_seed(1)
    model = LeNet5().eval()
    x = torch.randn(8, 1, 32, 32)
    with torch.inference_mode():
        fast = model(x)
        torch.testing.assert_close(fast, layer_by_layer(model)(x), rtol=1e-5, atol=1e-5)


def test_subsampling_is_block_sum_times_weight_plus_bias():
    torch.manual_seed(0)
    layer = Subsampling(3)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([0.5, -1.0, 2.0]))
        layer.bias.copy_(torch.tensor([0.1, 0.2, -0.3]))
    x = torch.randn(2, 3, 9, 9)  # odd side: the last row and column are dropped, as in pooling
    want = F.avg_pool2d(x, 2) * 4 * layer.weight.view(1, 3, 1, 1) + layer.bias.view(1, 3, 1, 1)
    torch.testing.assert_close(layer(x), want)


def test_partial_conv_respects_table_one():
    """A C3 map's output must not change when an S2 map it is not connected to changes."""
    torch.manual_seed(0)
    conv = PartialConv()
    assert sum(p.numel() for p in conv.parameters()) == 60 * 25 + 16  # the paper's 1,516
    x = torch.randn(1, 6, 14, 14)
    base = conv(x)
    for s2_map in range(6):
        bumped = x.clone()
        bumped[:, s2_map] += 1.0
        changed = (conv(bumped) - base).abs().amax(dim=(0, 2, 3)) > 1e-6  # (16,)
        for c3_map, inputs in enumerate(C3_TABLE):
            assert bool(changed[c3_map]) == (s2_map in inputs), (s2_map, c3_map)


@pytest.mark.parametrize("negative_gamma", [False, True])
def test_lenet5_bn_pooled_blocks_match_layer_by_layer(negative_gamma):
    """Training step: same logits, same gradients, same running statistics; then eval mode."""
    torch.manual_seed(0)
    fast = LeNet5BN(c1=8, dropout=0.0).to(memory_format=torch.channels_last)
    if negative_gamma:  # a channel whose max-pool must become a min-pool
        with torch.no_grad():
            fast[1].weight[::2] *= -1
            fast[5].weight[1::3] *= -0.5
    reference = LeNet5BN(c1=8, dropout=0.0).to(memory_format=torch.channels_last)
    reference.load_state_dict(fast.state_dict())
    reference = layer_by_layer(reference)
    # batch 4: few values per channel, so the running variance's n / (n - 1) correction shows
    x, y = torch.randn(4, 1, 32, 32).contiguous(memory_format=torch.channels_last), torch.randint(0, 10, (4,))
    fast_out, fast_grads = outputs_and_grads(fast, x, y)
    ref_out, ref_grads = outputs_and_grads(reference, x, y)
    torch.testing.assert_close(fast_out, ref_out, rtol=1e-4, atol=1e-5)
    for name, ref in ref_grads.items():
        torch.testing.assert_close(fast_grads[name], ref, rtol=1e-3, atol=1e-5, msg=name)
    for name, ref in reference.state_dict().items():
        torch.testing.assert_close(fast.state_dict()[name], ref, rtol=2e-6, atol=1e-7, msg=name)
    fast.eval(), reference.eval()
    with torch.inference_mode():
        torch.testing.assert_close(fast(x), reference(x), rtol=1e-4, atol=1e-5)


def test_lenet5_bn_min_pooled_channel_keeps_the_model_dtype():
    """A negative gamma must not turn a bfloat16 model's activations into float32."""
    torch.manual_seed(0)
    model = LeNet5BN().eval().to(torch.bfloat16)
    with torch.no_grad():
        model[1].weight[0] = -1.0
    x = torch.randn(2, 1, 32, 32, dtype=torch.bfloat16)
    with torch.inference_mode():
        fast = model(x)
        torch.testing.assert_close(fast, layer_by_layer(model)(x), rtol=0.05, atol=0.05)
    assert fast.dtype == torch.bfloat16


# --- the model decides its own fast path ---------------------------------------------------------

@pytest.fixture
def fast_calls(monkeypatch) -> list[str]:
    """Records every use of a fast path: LeNet5's folded sigmoid blocks (two per forward),
    LeNet5BN's pooled blocks (two per training forward) and its folded eval forward (one)."""
    calls: list[str] = []
    subsample, pooled, folded = LeNet5._subsample, layers.normalise_relu_pool, LeNet5BN._folded_forward
    monkeypatch.setattr(LeNet5, "_subsample", staticmethod(lambda *a: calls.append("lenet5") or subsample(*a)))
    monkeypatch.setattr(layers, "normalise_relu_pool", lambda *a: calls.append("lenet5-bn") or pooled(*a))
    monkeypatch.setattr(LeNet5BN, "_folded_forward", staticmethod(lambda *a: calls.append("lenet5-bn eval") or folded(*a)))
    return calls


@pytest.mark.parametrize("cls", [LeNet5, LeNet5BN])
def test_training_and_inference_take_the_fast_path_with_no_switch(cls, fast_calls):
    model = cls()
    assert not hasattr(model, "layerwise")  # nothing for a caller to set
    x = torch.randn(4, 1, 32, 32)
    model.train()(x).sum().backward()
    with torch.inference_mode():
        model.eval()(x)
    assert fast_calls == (["lenet5"] * 4 if cls is LeNet5 else ["lenet5-bn"] * 2 + ["lenet5-bn eval"])


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit.trace is deprecated, but the ONNX exporter traces
@pytest.mark.parametrize("cls", [LeNet5, LeNet5BN])
def test_tracing_runs_layer_by_layer_for_both_models(cls, fast_calls):
    """The ONNX exporter traces: both models give it their plain layers, and the same function."""
    torch.manual_seed(0)
    model, x = cls().eval(), torch.randn(2, 1, 32, 32)
    traced = torch.jit.trace(model, (x,), check_trace=False)  # (the check would run it untraced)
    assert fast_calls == []
    kinds = {node.kind() for node in traced.inlined_graph.nodes()}
    assert "aten::sigmoid" not in kinds  # LeNet5's fast path is written with sigmoids, its layers with tanh
    with torch.no_grad():
        torch.testing.assert_close(traced(x), model(x), rtol=1e-5, atol=1e-5)
    assert fast_calls  # untraced, the same model is fast again


@pytest.mark.parametrize("cls", [LeNet5, LeNet5BN])
def test_a_forward_hook_on_a_layer_sees_it_run(cls, fast_calls):
    """torchinfo and feature-map capture hook the layers: the model runs them, with the same result."""
    torch.manual_seed(0)
    model, x = cls().eval(), torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        fast = model(x)
        seen = []
        handle = model[1].register_forward_hook(lambda module, inputs, output: seen.append(output.shape))
        hooked = model(x)
        handle.remove()
    assert len(seen) == 1 and fast_calls == (["lenet5"] * 2 if cls is LeNet5 else ["lenet5-bn eval"])
    torch.testing.assert_close(hooked, fast, rtol=1e-5, atol=1e-5)


# --- the custom autograd function ------------------------------------------------------------------

def test_batch_statistics_gradient_in_float64():
    torch.manual_seed(0)
    z = torch.randn(3, 4, 5, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(_BatchStats.apply, (z,))
    var, mean = _BatchStats.apply(z)
    want_var, want_mean = torch.var_mean(z, dim=(0, 2, 3), correction=0)
    torch.testing.assert_close((var, mean), (want_var, want_mean))


def test_batch_statistics_refuse_a_second_derivative():
    """Its backward is not itself differentiable: double backward must fail loudly, not be wrong."""
    z = torch.randn(2, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    var, _ = _BatchStats.apply(z)
    weights = torch.ones(3, dtype=torch.float64, requires_grad=True)  # as gradgradcheck does
    (grad,) = torch.autograd.grad(var, z, grad_outputs=weights, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable"):
        grad.sum().backward()


@pytest.mark.parametrize("negative_gamma", [False, True])
def test_normalise_relu_pool_gradient_in_float64(negative_gamma):
    torch.manual_seed(0)
    bn, pool = nn.BatchNorm2d(3).double(), nn.MaxPool2d(2)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([0.7, -1.3 if negative_gamma else 1.3, 2.0]))
        bn.bias.copy_(torch.tensor([0.1, -0.2, 0.3]))
    z = torch.randn(2, 3, 6, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda z, w, b: normalise_relu_pool(z, bn, pool),
                                    (z, bn.weight, bn.bias))
    torch.testing.assert_close(normalise_relu_pool(z, bn, pool), pool(torch.relu(bn(z))))


@pytest.mark.parametrize("shape", [(256, 6, 28, 28), (7, 16, 10, 10), (3, 5, 3, 3), (1, 1, 1, 1)])
@pytest.mark.parametrize("channels_last", [True, False])
def test_channel_stats_equal_var_mean(shape, channels_last):
    from lenet.layers import channel_stats

    torch.manual_seed(0)
    z = torch.randn(*shape) * 3 + 5  # a mean far from 0: a one-pass E[z²] - E[z]² would lose digits
    if channels_last:
        z = z.contiguous(memory_format=torch.channels_last)
    var, mean = channel_stats(z)
    ref_var, ref_mean = torch.var_mean(z.double(), dim=(0, 2, 3), correction=0)
    torch.testing.assert_close(mean.double(), ref_mean, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(var.double(), ref_var, rtol=1e-5, atol=1e-5)
