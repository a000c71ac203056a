"""The fast paths in lenet.layers compute the same function, and the same gradients, as the
plain definitions they replace; and C3 keeps Table I's connections."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lenet.layers import C3_TABLE, LeNet5, LeNet5BN, PartialConv, Subsampling


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
    model.layerwise = True
    ref_out, ref_grads = outputs_and_grads(model, x, y)
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
        model.layerwise = True
        torch.testing.assert_close(fast, model(x), rtol=1e-5, atol=1e-5)


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
    reference.layerwise = True
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
        model.layerwise = True
        torch.testing.assert_close(fast, model(x), rtol=0.05, atol=0.05)
    assert fast.dtype == torch.bfloat16
