"""ONNX export: onnxruntime's logits match PyTorch's, with the input contract built in."""

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from lenet.checkpoint import save_checkpoint
from lenet.cli import main
from lenet.export import export_onnx
from lenet.models import create_model, get_spec, prepare_input

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


def test_int8_export_of_the_embedded_default(tmp_path, capsys):
    assert main(["export", "--format", "onnx", "--int8", "--out", str(tmp_path / "q.onnx"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["int8"] and result["top1_agreement"] >= 0.75 and (tmp_path / "q.onnx").is_file()


def test_export_of_a_missing_checkpoint_is_one_line(tmp_path, capsys):
    assert main(["export", "--checkpoint", str(tmp_path / "nope"), "--out", str(tmp_path / "x.onnx")]) == 2
    assert "no such checkpoint" in capsys.readouterr().err and not (tmp_path / "x.onnx").exists()
