"""Checkpoints: round trip gives identical outputs; no pickle; mismatches explained; atomic."""

import json

import pytest
import torch
from safetensors.torch import save_file

from lenet.checkpoint import load_checkpoint, load_extra_state, read_checkpoint, save_checkpoint
from lenet.errors import LenetError
from lenet.models import create_model, get_spec, prepare_input

META = {"model": "lenet5", "model_args": {"num_classes": 10}, "dataset": "mnist",
        "class_names": [str(i) for i in range(10)], "metrics": {"test_accuracy": 0.99}}


@pytest.mark.parametrize("name", ["lenet5", "lenet5-bn", "cnn-simple"])
def test_round_trip_gives_identical_outputs(tmp_path, name):
    torch.manual_seed(1)
    model = create_model(name).eval()
    x = prepare_input(torch.rand(8, 28, 28), get_spec(name))
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, model, {**META, "model": name})
    loaded, meta = load_checkpoint(path)
    assert torch.equal(model(x), loaded(x))
    assert meta["model"] == name and meta["metrics"]["test_accuracy"] == 0.99
    assert not loaded.training


def test_extra_state_round_trip(tmp_path):
    model = create_model("lenet5-bn")
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.randn(4, 1, 32, 32)).sum().backward()
    opt.step()
    state = {"optimizer": opt.state_dict(), "rng": torch.get_rng_state(), "epoch": 3, "pair": (1, 2.5)}
    save_checkpoint(tmp_path / "last.safetensors", model, META, extra_state=state)
    _, _, back = load_extra_state(tmp_path / "last.safetensors")
    assert back["epoch"] == 3 and back["pair"] == (1, 2.5)
    assert torch.equal(back["rng"], state["rng"])
    opt2 = torch.optim.AdamW(model.parameters(), lr=0.1)
    opt2.load_state_dict(back["optimizer"])
    for k, v in opt.state_dict()["state"].items():
        assert torch.equal(opt2.state_dict()["state"][k]["exp_avg"], v["exp_avg"])


def test_missing_file(tmp_path):
    with pytest.raises(LenetError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "nope.safetensors")


def test_pickle_file_is_refused_not_unpickled(tmp_path):
    path = tmp_path / "model.pt"
    torch.save(create_model("lenet5").state_dict(), path)
    with pytest.raises(LenetError, match="not a safetensors checkpoint"):
        load_checkpoint(path)


def test_foreign_safetensors_file(tmp_path):
    save_file({"w": torch.zeros(2)}, str(tmp_path / "x.safetensors"))
    with pytest.raises(LenetError, match="not written by lenet"):
        read_checkpoint(tmp_path / "x.safetensors")


def test_wrong_shapes_are_explained(tmp_path):
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, create_model("lenet5-bn"), {**META, "model": "lenet5-bn"})
    tensors, meta = read_checkpoint(path)
    meta["model"] = "lenet5-relu-maxpool"  # same family, other layers
    save_file(tensors, str(path), metadata={"lenet": json.dumps(meta)})
    with pytest.raises(LenetError, match="do not fit model 'lenet5-relu-maxpool'"):
        load_checkpoint(path)


@pytest.mark.parametrize("meta", ['[1]', '{"format": 1, "model": ["x"]}', '{"format": 1, "model": "lenet5", "model_args": [1]}',
                                  '{"format": 1, "model": "lenet5", "model_args": {"foo": 1}}'])
def test_hostile_metadata_is_one_clear_error(tmp_path, meta):
    path = tmp_path / "m.safetensors"
    save_file({"model.w": torch.zeros(1)}, str(path), metadata={"lenet": meta})
    with pytest.raises(LenetError, match="m.safetensors: "):
        load_checkpoint(path)


def test_embedded_default_wins_over_a_folder_of_the_same_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mnist").mkdir()
    _, meta = load_checkpoint("mnist")
    assert meta["path"].endswith("mnist-lenet5.safetensors")


def test_written_files_have_normal_permissions(tmp_path):
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, create_model("lenet5"), META)
    assert path.stat().st_mode & 0o644 == 0o644


def test_unknown_model_name(tmp_path):
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, create_model("lenet5"), {**META, "model": "lenet5"})
    tensors, meta = read_checkpoint(path)
    save_file(tensors, str(path), metadata={"lenet": json.dumps({**meta, "model": "resnet50"})})
    with pytest.raises(LenetError, match="unknown model 'resnet50'"):
        load_checkpoint(path)


def test_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, create_model("lenet5"), META)
    before = path.read_bytes()

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("lenet.checkpoint.save_file", broken)
    with pytest.raises(LenetError, match="m.safetensors: cannot write \\(disk full\\)"):
        save_checkpoint(path, create_model("lenet5"), META)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]  # no temp file left
