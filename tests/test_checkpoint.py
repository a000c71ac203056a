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


# --- issue 11: integrity (finding 1), hostile metadata (finding 2), sizes (finding 7) ------------

def _data_start(path) -> int:
    """Offset of the tensor data in a safetensors file: 8-byte header length + header."""
    return 8 + int.from_bytes(path.read_bytes()[:8], "little")


def _one_line_error(path, match):
    with pytest.raises(LenetError, match=match) as info:
        load_checkpoint(path)
    assert "\n" not in str(info.value)


def test_one_flipped_bit_in_the_weights_is_refused(tmp_path):
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, create_model("lenet5"), META)
    data = bytearray(path.read_bytes())
    data[_data_start(path) + 1000] ^= 0x08  # one bit of one float
    path.write_bytes(bytes(data))
    _one_line_error(path, "m.safetensors: .*checksum")


def test_a_file_without_checksum_loads_with_a_one_line_warning(tmp_path, capsys):
    path = tmp_path / "m.safetensors"
    tensors = {"model." + k: v for k, v in create_model("lenet5").state_dict().items()}
    save_file(tensors, str(path), metadata={"lenet": json.dumps({"format": 1, **META})})
    load_checkpoint(path)
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "m.safetensors" in err and "checksum" in err


def test_embedded_weights_carry_a_checksum_and_load_silently(capsys):
    from safetensors import safe_open

    for name in ("mnist", "fashion-mnist"):
        _, meta = load_checkpoint(name)
        with safe_open(meta["path"], framework="pt") as f:
            assert "tensor_sha256" in json.loads(f.metadata()["lenet"])
    assert capsys.readouterr().err == ""


def _poisoned(name, value):
    model = create_model("lenet5-bn")
    with torch.no_grad():
        dict(model.named_parameters(), **dict(model.named_buffers()))[name].view(-1)[0] = value
    return model


@pytest.mark.parametrize("name, value, match", [
    ("layers.0.weight", float("nan"), "non-finite"), ("layers.0.weight", float("inf"), "non-finite"),
    ("layers.1.running_var", -1.0, "negative"),
])
def test_non_finite_weights_and_negative_variance_are_refused(tmp_path, name, value, match):
    model = create_model("lenet5-bn")
    key = next(k for k in model.state_dict() if k.endswith(name.split(".", 1)[1]) and
               (name.endswith("running_var") or k.endswith(".weight")))
    with torch.no_grad():
        model.state_dict()[key].view(-1)[0] = value
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, model, {**META, "model": "lenet5-bn"})
    _one_line_error(path, f"m.safetensors: .*{match}")


@pytest.mark.parametrize("dtype", [torch.int8, torch.uint8, torch.bool, torch.int32])
def test_weights_of_the_wrong_dtype_are_refused(tmp_path, dtype):
    tensors = {"model." + k: v for k, v in create_model("lenet5").state_dict().items()}
    key = next(iter(tensors))
    tensors[key] = tensors[key].to(dtype)
    path = tmp_path / "m.safetensors"
    save_file(tensors, str(path), metadata={"lenet": json.dumps({"format": 1, **META})})
    _one_line_error(path, "m.safetensors: .*dtype")


def test_resaving_keeps_tensors_bit_identical_and_new_metadata(tmp_path):
    model, meta = load_checkpoint("mnist")
    meta["trust"] = {"temperature": 1.25, "threshold": 0.5, "bins": [0.1, 0.2]}
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, model, meta)
    tensors, back = read_checkpoint(path)
    original, _ = read_checkpoint(meta["path"])
    assert back["trust"] == meta["trust"] and "path" not in back
    assert {k: v for k, v in back.items() if k not in ("trust", "tensor_sha256")} == \
        {k: v for k, v in meta.items() if k not in ("trust", "tensor_sha256", "path")}
    assert tensors.keys() == original.keys() and all(torch.equal(tensors[k], original[k]) for k in tensors)


def _with_meta(tmp_path, text):
    path = tmp_path / "m.safetensors"
    tensors = {"model." + k: v for k, v in create_model("lenet5").state_dict().items()}
    save_file(tensors, str(path), metadata={"lenet": text})
    return path


def _meta_text(**changes):
    return json.dumps({"format": 1, **META, **changes})


@pytest.mark.parametrize("text, match", [
    ('{"format": 1, "model": "lenet5", "x": ' + '{"a": ' * 5000 + "1" + "}" * 5000 + "}", "nested"),
    ("[" * 100_000 + "]" * 100_000, "nested"),
    (_meta_text(command="x" * 3_000_000), "bytes"),
    (_meta_text(class_names="0123456789"), "class_names"),
    (_meta_text(class_names=list(range(10))), "class_names"),
    (_meta_text(class_names=[str(i) for i in range(20)]), "class_names"),
    (_meta_text(class_names=["a\x1b[2J"] * 10), "class_names"),
    (_meta_text(metrics={"test_accuracy": 1.5}), "test_accuracy"),
    (_meta_text(metrics={"test_loss": -1}), "test_loss"),
    (_meta_text(metrics=[1]), "metrics"),
    (_meta_text(dataset=7), "dataset"),
    (_meta_text(lenet_version=["0.1"]), "lenet_version"),
    (_meta_text(model_args={"num_classes": "10"}), "model_args"),
    (_meta_text(model_args={"num_classes": 10, "x": [1]}), "model_args"),
    (_meta_text(config=[1]), "config"),
    (_meta_text(tensor_sha256=5), "tensor_sha256"),
    (_meta_text(trust="x" * 200_000), "trust"),
    (_meta_text()[:-1] + ', "nan": NaN}', "NaN"),
    ('{"format": 1, "model": "lenet5", "n": ' + "9" * 5000 + "}", "valid JSON"),
])
def test_hostile_metadata_fields_are_one_line(tmp_path, text, match):
    _one_line_error(_with_meta(tmp_path, text), f"m.safetensors: .*{match}")


def test_well_formed_unknown_metadata_is_kept(tmp_path):
    path = _with_meta(tmp_path, _meta_text(trust={"temperature": 1.3, "bins": [[0.1, 0.9]]}, note="hello"))
    _, meta = load_checkpoint(path)
    assert meta["trust"] == {"temperature": 1.3, "bins": [[0.1, 0.9]]} and meta["note"] == "hello"


def test_hostile_metadata_through_the_cli_is_one_line(tmp_path, capsys):
    from PIL import Image

    from lenet.cli import main

    path = _with_meta(tmp_path, '{"format": 1, "model": "lenet5", "x": ' + "[" * 50_000 + "]" * 50_000 + "}")
    Image.new("L", (28, 28)).save(tmp_path / "a.png")
    assert main(["predict", "--checkpoint", str(path), str(tmp_path / "a.png")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("lenet: error: ")


def test_model_args_are_size_checked_before_allocating(tmp_path, monkeypatch):
    import lenet.checkpoint

    real = lenet.checkpoint.create_model

    def guarded(name, **args):  # a real (not meta-device) model this wide would take gigabytes
        if args.get("c5", 0) > 10_000 and torch.get_default_device().type != "meta":
            raise AssertionError("allocated a model from unchecked model_args")
        return real(name, **args)

    monkeypatch.setattr(lenet.checkpoint, "create_model", guarded)
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, create_model("lenet5-bn"), {**META, "model": "lenet5-bn"})
    tensors, meta = read_checkpoint(path)
    meta["model_args"] = {"num_classes": 10, "c5": 10 ** 6}
    save_file(tensors, str(path), metadata={"lenet": json.dumps(meta)})
    _one_line_error(path, "m.safetensors: .*(do not fit|parameters)")
