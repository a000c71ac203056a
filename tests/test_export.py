"""ONNX export: onnxruntime's logits match PyTorch's, with the input contract built in."""

import io
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from lenet import export
from lenet.checkpoint import save_checkpoint
from lenet.cli import main
from lenet.export import export_onnx
from lenet.models import create_model, get_spec, prepare_input
from lenet.quantize import calibration_images, float_first_block, onnx_accuracy, swap_relu_maxpool

META = {"model_args": {}, "dataset": "mnist", "class_names": [str(i) for i in range(10)]}


@pytest.mark.parametrize("name", ["lenet5", "lenet5-bn", "lenet5-sigmoid-avgpool", "mlp"])
def test_onnx_logits_match_torch(tmp_path, name):
    torch.manual_seed(0)
    model = create_model(name).eval()
    ckpt = tmp_path / "m.safetensors"
    save_checkpoint(ckpt, model, {**META, "model": name})
    result = export_onnx(str(ckpt), tmp_path / "m.onnx")
    x = torch.rand(5, 1, 28, 28)  # batch size other than the traced one: the batch axis is dynamic
    got = ort.InferenceSession(str(tmp_path / "m.onnx")).run(None, {"image": x.numpy()})[0]
    with torch.no_grad():
        want = model(prepare_input(x, get_spec(name))).numpy()
    assert np.abs(got - want).max() < 1e-4 and result["max_abs_logit_difference"] < 1e-4
    props = {p.key: p.value for p in onnx.load(str(tmp_path / "m.onnx")).metadata_props}
    assert json.loads(props["class_names"]) == META["class_names"]


@pytest.mark.slow
def test_int8_export_of_the_embedded_default_keeps_its_accuracy(mnist_root, tmp_path, capsys):
    assert main(["export", "--int8", "--out", str(tmp_path / "q.onnx"), "--data-root", str(mnist_root), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["int8"] and result["dataset"] == "mnist" and result["top1_agreement"] >= 0.75
    assert result["fp32_test_accuracy"] > 0.99 and abs(result["test_accuracy"] - result["fp32_test_accuracy"]) <= 0.001
    assert result["bytes"] < 370_000 / 3  # the float32 file is about 371 kB
    assert onnx_accuracy(str(tmp_path / "q.onnx"), *mnist_test_set(mnist_root)) == result["test_accuracy"]


def test_int8_export_is_static_with_a_float_first_block(synthetic_mnist_root, tmp_path, capsys):
    """Calibrated QDQ quantisation (no dynamic ConvInteger); the one-channel first conv stays float32, its
    pool moved before its ReLU; the metadata survive; accuracy of both files on the dataset's test set."""
    ckpt = tmp_path / "m.safetensors"
    torch.manual_seed(0)
    save_checkpoint(ckpt, create_model("lenet5-bn").eval(), {**META, "model": "lenet5-bn"})
    out = tmp_path / "q.onnx"
    assert main(["export", "--checkpoint", str(ckpt), "--int8", "--out", str(out), "--data-root",
                 str(synthetic_mnist_root), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    model = onnx.load(str(out))
    ops = [n.op_type for n in model.graph.node]
    assert "ConvInteger" not in ops and "DynamicQuantizeLinear" not in ops and ops.count("DequantizeLinear") > 5
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    floats = {t.name for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT}
    assert convs[0].input[1] in floats and all(c.input[1] not in floats for c in convs[1:])  # conv 1 float, the rest int8
    first = ops.index("Conv")
    assert ops[first + 1:first + 3] == ["MaxPool", "Relu"]
    assert json.loads({p.key: p.value for p in model.metadata_props}["class_names"]) == META["class_names"]
    assert 0 <= result["test_accuracy"] <= 1 and 0 <= result["fp32_test_accuracy"] <= 1
    images, labels = mnist_test_set(synthetic_mnist_root)
    assert onnx_accuracy(str(out), images, labels) == result["test_accuracy"] and len(labels) == 20


def test_int8_export_that_loses_accuracy_is_refused(synthetic_mnist_root, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(export, "INT8_MAX_DROP", -1.0)  # any result is "too much" lost
    out = tmp_path / "q.onnx"
    assert main(["export", "--int8", "--out", str(out), "--data-root", str(synthetic_mnist_root)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "int8 quantisation loses too much accuracy" in err[0] and not out.exists()
    assert not list(tmp_path.glob(".q.onnx*"))  # no temporary file left behind


def test_int8_export_needs_the_checkpoints_dataset(tmp_path, capsys):
    ckpt = tmp_path / "m.safetensors"
    save_checkpoint(ckpt, create_model("mlp").eval(), {**META, "model": "mlp", "dataset": "digits-of-my-own"})
    assert main(["export", "--checkpoint", str(ckpt), "--int8", "--out", str(tmp_path / "q.onnx")]) == 2
    err = capsys.readouterr().err
    assert "--int8 calibrates on the checkpoint's dataset" in err and len(err.strip().splitlines()) == 1


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the TorchScript exporter, which lenet.export uses too
def test_swapping_relu_and_maxpool_keeps_the_values(tmp_path):
    """The graph rewrite behind the float first block: Relu -> MaxPool becomes MaxPool -> Relu."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 8, 3), nn.ReLU(), nn.MaxPool2d(2))
    path = tmp_path / "net.onnx"
    torch.onnx.export(net, (torch.rand(2, 1, 16, 16),), str(path), input_names=["image"], dynamo=False)
    model = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    block = float_first_block(model)
    assert [n.op_type for n in model.graph.node if n.name in block] == ["Conv", "Relu", "MaxPool"]
    swap_relu_maxpool(model, block)
    assert [n.op_type for n in model.graph.node] == ["Conv", "MaxPool", "Relu", "Conv", "Relu", "MaxPool"]
    onnx.checker.check_model(model, full_check=True)
    x = np.random.default_rng(0).normal(size=(2, 1, 16, 16)).astype(np.float32)  # the traced batch
    before = ort.InferenceSession(str(path)).run(None, {"image": x})[0]
    after = ort.InferenceSession(model.SerializeToString()).run(None, {"image": x})[0]
    np.testing.assert_array_equal(after, before)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_a_first_conv_reading_several_channels_is_quantised_too():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
    buf = io.BytesIO()
    torch.onnx.export(net, (torch.rand(1, 3, 8, 8),), buf, dynamo=False)
    assert float_first_block(onnx.load_from_string(buf.getvalue())) == []


def test_calibration_images_are_seeded_and_scaled():
    train = torch.randint(0, 256, (1000, 28, 28), dtype=torch.uint8)
    a, b = calibration_images(train), calibration_images(train)
    assert a.shape == (300, 1, 28, 28) and a.dtype == np.float32 and np.array_equal(a, b)
    assert 0 <= a.min() and a.max() <= 1 and not np.array_equal(a, calibration_images(train, seed=1))


def mnist_test_set(root):
    from lenet.data import load_dataset

    data = load_dataset("mnist", root)
    return data.test_images, data.test_labels


def test_export_of_a_missing_checkpoint_is_one_line(tmp_path, capsys):
    assert main(["export", "--checkpoint", str(tmp_path / "nope"), "--out", str(tmp_path / "x.onnx")]) == 2
    assert "no such checkpoint" in capsys.readouterr().err and not (tmp_path / "x.onnx").exists()
