"""Every registered model: forward + backward on a random batch, output shape, parameter count."""

import pytest
import torch

from lenet.models import count_parameters, create_model, get_spec, list_models, prepare_input

# Counted by hand from the layer sizes (see each builder's comments).
EXPECTED_PARAMETERS = {
    # C1 156 + S2 12 + C3 1,516 (paper) + S4 32 + C5 48,120 + F6 10,164 + output 850
    "lenet5": 60_850,
    # C1 156 + C3 2,416 (full connection) + C5/F5 48,120 + F6 10,164 + output 850
    "lenet5-sigmoid-avgpool": 61_706,
    "lenet5-tanh-avgpool": 61_706,
    "lenet5-relu-maxpool": 61_706,
    # convolutions without bias (batch norm has one): 150 + 2,400 + 48,000 + 10,080 + 850, norms 2*(6+16+120+84)
    "lenet5-bn": 61_932,
    "mlp": 784 * 784 + 784 + 784 * 10 + 10,
    "cnn-simple": 10 * 25 + 10 + 10 * 23 * 23 * 128 + 128 + 128 * 10 + 10,
}


def test_registry_lists_every_model():
    assert sorted(s.name for s in list_models()) == sorted(EXPECTED_PARAMETERS)


@pytest.mark.parametrize("name", sorted(EXPECTED_PARAMETERS))
def test_forward_backward_shape_and_parameters(name):
    torch.manual_seed(0)
    spec = get_spec(name)
    model = create_model(name)
    assert count_parameters(model) == EXPECTED_PARAMETERS[name]
    x = prepare_input(torch.randint(0, 256, (5, 28, 28), dtype=torch.uint8), spec)
    assert x.shape == (5, 1, spec.input_size, spec.input_size)
    logits = model(x)
    assert logits.shape == (5, 10)
    logits.logsumexp(1).sum().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


def test_num_classes_argument():
    assert create_model("lenet5-bn", num_classes=7)(torch.zeros(2, 1, 32, 32)).shape == (2, 7)


def test_unknown_model_names_the_choices():
    with pytest.raises(KeyError, match="lenet5-bn"):
        get_spec("lenet6")


def test_prepare_input_pads_with_background_and_normalises():
    spec = get_spec("lenet5")
    x = prepare_input(torch.zeros(1, 28, 28, dtype=torch.uint8), spec)
    assert x.shape == (1, 1, 32, 32)
    assert torch.allclose(x, torch.full_like(x, -spec.mean / spec.std))
    ones = prepare_input(torch.ones(1, 1, 28, 28), spec)
    assert torch.isclose(ones[0, 0, 16, 16], torch.tensor((1 - spec.mean) / spec.std))
    assert torch.isclose(ones[0, 0, 0, 0], torch.tensor(-spec.mean / spec.std))


def test_the_precomputed_catalog_matches_the_real_models():
    """`lenet models` reads lenet.catalog to start without torch; after changing a model, print the
    new table with `python -m lenet.catalog`."""
    from lenet.catalog import MODELS, live_models

    assert list(MODELS) == live_models()


def test_the_input_contract_travels_with_the_model():
    from lenet.checkpoint import load_checkpoint

    for spec in list_models():
        assert create_model(spec.name).input_spec is spec
    model, meta = load_checkpoint()  # rebuilt from a file: the same contract
    assert model.input_spec is get_spec(meta["model"])
