"""Eval mode's fast forwards give the layer-by-layer model's logits, for every model in the zoo:
with and without autograd (oneDNN's blocked layout or dense tensors), any batch size, batch norm
with non-trivial running statistics (negative gammas too), the embedded checkpoints. In bfloat16
(lenet.precision) they stay close, and only where they should run in it."""

import pytest
import torch
from torch import nn

from lenet.checkpoint import load_checkpoint
from lenet import layers, precision
from lenet.layers import LeNet5BN, layer_by_layer
from lenet.models import create_model, list_models, prepare_input

ZOO = [spec.name for spec in list_models()]


def trained_statistics(model: nn.Module) -> nn.Module:
    """The model after a few training-mode forwards on shifted data (running means and variances
    far from 0 and 1), with random, partly negative, batch-norm gammas and betas; then eval mode."""
    torch.manual_seed(1)
    side = model.input_spec.input_size
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(16, 1, side, side) * 1.7 + 0.4)
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.weight.copy_(torch.randn_like(m.weight))  # about a third of them negative
                m.bias.copy_(torch.randn_like(m.bias) * 0.5)
    return model.eval()


def inputs(model: nn.Module, batch: int) -> torch.Tensor:
    side = model.input_spec.input_size
    return torch.randn(batch, 1, side, side) * 1.5


@pytest.mark.parametrize("name", ZOO)
@pytest.mark.parametrize("batch", [1, 35])  # one image; several chunks of 16 and a remainder
def test_every_zoo_model_in_eval_mode_matches_layer_by_layer(name, batch, monkeypatch):
    monkeypatch.setattr(layers, "EVAL_CHUNK", 16)
    torch.manual_seed(0)
    model = trained_statistics(create_model(name))
    if name == "lenet5-bn":
        bn = model[1]
        assert bool((bn.weight < 0).any()) and not torch.allclose(bn.running_mean, torch.zeros_like(bn.running_mean))
    x = inputs(model, batch)
    reference = layer_by_layer(model)
    with torch.no_grad():
        want = reference(x)
    for memory_format in (torch.contiguous_format, torch.channels_last):
        xf = x.contiguous(memory_format=memory_format)
        with torch.inference_mode():
            got = model(xf)
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
        assert torch.equal(got.argmax(1), want.argmax(1))
        got = model(xf)  # autograd on: the dense path
        torch.testing.assert_close(got.detach(), want, rtol=1e-4, atol=1e-4)


@pytest.mark.filterwarnings("ignore:TF32 acceleration")  # torch.backends.mkldnn.flags() says it on CPUs
@pytest.mark.parametrize("args", [{}, {"c1": 12, "c3": 24, "dropout": 0.1}])
def test_lenet5_bn_folded_forward_with_and_without_onednn(args, monkeypatch):
    """Both branches of the eval fast path (blocked oneDNN tensors, plain dense tensors) are the
    same function as the layer-by-layer run, and the fast path is taken: no unfolded batch norm."""
    torch.manual_seed(0)
    model = trained_statistics(create_model("lenet5-bn", **args))
    x = inputs(model, 37)
    with torch.no_grad():
        want = layer_by_layer(model)(x)
    calls = []
    monkeypatch.setattr(nn.BatchNorm2d, "forward", lambda *a: calls.append(a) or pytest.fail("BN was run"))
    for enabled in (True, False):
        with torch.backends.mkldnn.flags(enabled=enabled), torch.inference_mode():
            torch.testing.assert_close(model(x), want, rtol=1e-4, atol=1e-4)
    assert calls == []


def test_lenet5_bn_eval_gradients_match_layer_by_layer():
    """Attributions (lenet explain) differentiate the eval-mode model: input and weight gradients
    of the folded forward are the layer-by-layer ones."""
    torch.manual_seed(0)
    model = trained_statistics(create_model("lenet5-bn", dropout=0.3))
    x = inputs(model, 4).requires_grad_()
    grads = []
    for net in (model, layer_by_layer(model)):
        model.zero_grad()
        x.grad = None
        net(x)[:, 3].sum().backward()
        grads.append((x.grad.clone(), model[0].weight.grad.clone(), model[1].weight.grad.clone()))
    for fast, ref in zip(*grads):
        torch.testing.assert_close(fast, ref, rtol=1e-4, atol=1e-5)


def test_one_batch_norm_in_training_mode_keeps_the_training_path():
    """model.eval() then one BN put back in training: nothing is folded, the batch's own statistics
    are used there and its running statistics move, as in the layer-by-layer run."""
    torch.manual_seed(0)
    model = trained_statistics(create_model("lenet5-bn"))
    twin = trained_statistics(create_model("lenet5-bn"))
    twin.load_state_dict(model.state_dict())
    model[5].train(), twin[5].train()
    x = inputs(model, 8)
    with torch.no_grad():
        torch.testing.assert_close(model(x), layer_by_layer(twin)(x), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(model[5].running_mean, twin[5].running_mean)


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_embedded_checkpoints_fast_eval_matches_layer_by_layer(name):
    model, _ = load_checkpoint(name)
    assert isinstance(model, LeNet5BN) and not model.training
    torch.manual_seed(0)
    images = (torch.rand(300, 28, 28) < 0.2).to(torch.uint8) * 255  # ink on black, as the data
    x = prepare_input(images, model.input_spec)
    with torch.inference_mode():
        got, want = model(x), layer_by_layer(model)(x)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    assert torch.equal(got.argmax(1), want.argmax(1))


def test_empty_batch_in_eval_mode():
    model = create_model("lenet5-bn").eval()
    with torch.inference_mode():
        assert model(torch.zeros(0, 1, 32, 32)).shape == (0, 10)


bf16_convolutions = pytest.mark.skipif(not precision.bfloat16_convolutions(),
                                       reason="no oneDNN bfloat16 convolutions in this build or CPU")


@bf16_convolutions
@pytest.mark.parametrize("batch", [1, 37])
def test_bfloat16_eval_is_close_to_float32_and_only_without_autograd(batch, monkeypatch):
    """set_eval_precision(model, "bfloat16"): the conv blocks and C5 run in bfloat16 (the logits move
    off the float32 ones, by at most a few per cent of their scale); with autograd on (lenet explain's
    attributions) the model is the exact float32 function still."""
    monkeypatch.setattr(layers, "EVAL_CHUNK", 16)
    torch.manual_seed(0)
    model = trained_statistics(create_model("lenet5-bn", c1=12, c3=24, dropout=0.1))
    x = inputs(model, batch)
    with torch.no_grad():
        want = layer_by_layer(model)(x)
    assert precision.set_eval_precision(model, "bfloat16") == "bfloat16" and model.eval_dtype == torch.bfloat16
    with torch.inference_mode():
        got = model(x)
    assert got.dtype == torch.float32 and got.shape == want.shape
    error = (got - want).abs().max().item()
    assert 1e-5 < error <= 0.03 * want.abs().max().item()  # bfloat16 ran, and stayed close
    torch.testing.assert_close(model(x).detach(), want, rtol=1e-4, atol=1e-4)  # autograd on: float32
    assert precision.set_eval_precision(model, "float32") == "float32"
    with torch.inference_mode():
        torch.testing.assert_close(model(x), want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("amx", [True, False])
def test_auto_precision_is_bfloat16_only_with_amx_and_only_for_lenet5_bn(amx, monkeypatch):
    monkeypatch.setattr(precision, "bfloat16_in_hardware", lambda: amx)
    bn, paper = create_model("lenet5-bn"), create_model("lenet5")
    assert precision.set_eval_precision(bn, "auto") == ("bfloat16" if amx else "float32")
    assert bn.eval_dtype == (torch.bfloat16 if amx else torch.float32)
    assert precision.set_eval_precision(paper, "auto") == "float32"
    assert precision.set_eval_precision(paper, "float32") == "float32"
    with pytest.raises(ValueError, match="only lenet5-bn"):
        precision.set_eval_precision(paper, "bfloat16")
    with pytest.raises(ValueError, match="one of auto, float32, bfloat16"):
        precision.set_eval_precision(bn, "float16")


def test_the_cli_offers_the_same_precisions_as_lenet_precision():
    from lenet import cli

    assert cli.EVAL_PRECISIONS == precision.EVAL_PRECISIONS


@bf16_convolutions
@pytest.mark.filterwarnings("ignore:TF32 acceleration")  # torch.backends.mkldnn.flags() says it on CPUs
def test_bfloat16_setting_leaves_bfloat16_models_empty_batches_and_disabled_onednn_alone():
    torch.manual_seed(0)
    model = trained_statistics(create_model("lenet5-bn"))
    precision.set_eval_precision(model, "bfloat16")
    with torch.inference_mode():
        assert model(torch.zeros(0, 1, 32, 32)).shape == (0, 10)
        x = inputs(model, 5)
        with torch.backends.mkldnn.flags(enabled=False):  # no oneDNN: the dense float32 path, exactly
            torch.testing.assert_close(model(x), layer_by_layer(model)(x), rtol=1e-4, atol=1e-4)
            assert not precision.bfloat16_convolutions() and precision.set_eval_precision(model, "auto") == "float32"
            with pytest.raises(ValueError, match="no oneDNN bfloat16"):
                precision.set_eval_precision(model, "bfloat16")
    precision.set_eval_precision(model, "bfloat16")
    model = model.to(torch.bfloat16)  # a model whose weights are bfloat16 keeps bfloat16 logits
    with torch.inference_mode():
        assert model(x.to(torch.bfloat16)).dtype == torch.bfloat16
