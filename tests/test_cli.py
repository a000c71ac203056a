"""The command-line contract: --help everywhere, --json output, one-line errors with exit 2."""

import importlib
import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

import lenet
from lenet.checkpoint import build_model, load_extra_state, save_checkpoint
from lenet.cli import build_parser, main
from lenet.models import create_model

COMMANDS = [["models"], ["summary"], ["data"], ["data", "fetch"], ["data", "show"], ["train"], ["eval"],
            ["predict"], ["explain"], ["serve"], ["export"], ["bench"]]


@pytest.mark.parametrize("argv", [[], *COMMANDS])
def test_every_command_has_help(argv, capsys):
    assert main([*argv, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: lenet") and len(out.splitlines()) > 3


def test_python_dash_m_works():
    out = subprocess.run([sys.executable, "-m", "lenet", "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("lenet ")


def test_models_json(capsys):
    assert main(["models", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    by_name = {r["name"]: r for r in rows}
    assert by_name["lenet5"]["parameters"] == 60_850 and by_name["lenet5"]["input_size"] == 32
    assert {"name", "parameters", "input_size", "description"} <= set(rows[0])


def test_summary_json_shapes(capsys):
    assert main(["summary", "lenet5-relu-maxpool", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["parameters"] == 61_706
    shapes = [layer["output_shape"] for layer in info["layers"]]
    assert [1, 6, 28, 28] in shapes and [1, 16, 5, 5] in shapes and shapes[-1] == [1, 10]


@pytest.mark.parametrize("name, layers", [("lenet5", 14), ("lenet5-bn", 17)])
def test_summary_lists_every_layer_of_the_fast_forward_models(name, layers, capsys):
    """Their fast `forward` skips the modules; the summary must still see each one."""
    assert main(["summary", name, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert len(info["layers"]) == layers
    assert sum(layer["parameters"] for layer in info["layers"]) == info["parameters"]


def test_summary_text(capsys):
    assert main(["summary", "lenet5"]) == 0
    assert "Total params: 60,850" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["summary", "resnet"], "unknown model 'resnet'"),
    (["frobnicate"], "invalid choice"),
    (["data", "show", "--dataset", "cifar"], "invalid choice"),
    (["predict", "--top-k", "x", "a.png"], "invalid int value"),
    (["eval", "--checkpoint", "/nonexistent.safetensors"], "no such checkpoint file"),
])
def test_bad_input_is_one_line_and_exit_2(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_predict_one_line_per_bad_file_and_the_good_ones_still_predicted(tmp_path, capsys):
    """A corrupt DDS (NotImplementedError inside Pillow) and a float TIFF holding Inf used to end
    `lenet predict` with a traceback and no result even for the good file (issue 11)."""
    import io

    import numpy as np
    from PIL import Image, ImageDraw

    ckpt = tmp_path / "m.safetensors"
    torch.manual_seed(0)
    save_checkpoint(ckpt, create_model("lenet5-bn").eval(),
                    {"model": "lenet5-bn", "model_args": {}, "dataset": "mnist", "class_names": list("0123456789")})
    good = tmp_path / "good.png"
    img = Image.new("L", (60, 60), 255)
    ImageDraw.Draw(img).line([(30, 8), (30, 52)], fill=0, width=6)
    img.save(good)
    buf = io.BytesIO()
    Image.new("RGBA", (8, 8), (200, 10, 10, 255)).save(buf, "DDS")
    evil = tmp_path / "evil.dds"
    evil.write_bytes(buf.getvalue()[:80] + b"\0\0\0\0" + buf.getvalue()[84:192])  # pixel-format flags 0
    arr = np.full((40, 40), 230.0, np.float32)
    arr[8:32, 18:22], arr[2:6, 2:6] = 20.0, np.inf
    inf = tmp_path / "inf.tif"
    Image.fromarray(arr, "F").save(inf)
    assert main(["predict", "--json", "--checkpoint", str(ckpt), str(good), str(evil), str(inf)]) == 1
    out, err = capsys.readouterr()
    assert [json.loads(line)["path"] for line in out.splitlines()] == [str(good), str(inf)]
    assert err.startswith(f"lenet: error: {evil}: ") and len(err.strip().splitlines()) == 1
    assert "Traceback" not in err


def test_predict_keeps_libtiff_and_pillow_warnings_off_stderr(tmp_path, capfd):
    """libtiff writes its complaints to file descriptor 2 itself, and Pillow warns in Python:
    a corrupt TIFF still gets exactly one line."""
    import io

    import numpy as np
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray((np.random.default_rng(0).random((64, 64)) * 255).astype(np.uint8)).save(
        buf, "TIFF", compression="tiff_lzw")
    data = bytearray(buf.getvalue())
    data[-30] ^= 0xFF
    data[-60:-50] = b"\xff" * 10  # the directory at the end: tags point past the file
    bad = tmp_path / "bad.tif"
    bad.write_bytes(bytes(data))
    assert main(["predict", str(bad)]) == 2
    err = capfd.readouterr().err
    assert err.startswith(f"lenet: error: {bad}: ") and len(err.strip().splitlines()) == 1, err


# --- start-up: the commands that need no model import no torch --------------------------------------

@pytest.mark.parametrize("argv", [["--help"], ["--version"], ["models"], ["models", "--json"], ["train", "--help"]])
def test_quick_commands_start_without_torch(argv):
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "lenet", *argv], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0 and done.stdout
    imported = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}
    assert "lenet.cli" in imported  # -X importtime did report
    assert not imported & {"torch", "numpy", "torchvision", "matplotlib", "PIL"}, sorted(imported & {"torch", "numpy"})


# --- `lenet.evaluate` is one thing --------------------------------------------------------------------

def test_lenet_evaluate_is_the_function_even_after_lenet_eval_ran():
    from lenet.train import evaluate

    assert lenet.evaluate is evaluate
    importlib.import_module("lenet.evalcmd")  # what `lenet eval` imports
    assert lenet.evaluate is evaluate and callable(lenet.evaluate)
    assert importlib.util.find_spec("lenet.evaluate") is None  # no submodule to shadow it


# --- one spelling for the data folder ---------------------------------------------------------------

@pytest.mark.parametrize("argv", [["data", "fetch"], ["data", "show"], ["train"], ["eval"], ["bench"]])
def test_data_root_is_one_flag_and_root_still_works(argv, capsys):
    parser = build_parser()
    for flag in ("--data-root", "--root"):
        assert parser.parse_args([*argv, flag, "/some/dir"]).data_root == "/some/dir"
    assert main([*argv, "--help"]) == 0
    text = capsys.readouterr().out
    assert "--data-root" in text and "--root" not in text.replace("--data-root", "")


# --- `lenet eval` and `lenet train --resume`, all the way through the CLI ---------------------------

def test_eval_writes_its_report_and_pictures(untrained_eval, synthetic_mnist_root, capsys):
    checkpoint, out, result = untrained_eval
    assert result["dataset"] == "mnist" and result["model"] == "lenet5-bn" and result["checkpoint"] == str(checkpoint)
    confusion = torch.tensor(result["confusion_matrix"])
    assert confusion.shape == (10, 10) and confusion.sum() == 20  # the 20 synthetic test images
    assert result["accuracy"] == pytest.approx(confusion.trace().item() / 20)
    assert result["errors"] == 20 - confusion.trace().item() and len(result["per_class_accuracy"]) == 10
    assert result["loss"] > 0 and 0 < result["model_seconds"] < 60
    names = {"confusion.png", "predictions.png", "eval.json"} | ({"mistakes.png"} if result["errors"] else set())
    assert {p.name for p in out.iterdir()} == names
    assert sorted(result["files"]) == sorted(str(out / n) for n in names)
    assert json.loads((out / "eval.json").read_text()) == result

    assert main(["eval", "--checkpoint", str(checkpoint), "--data-root", str(synthetic_mnist_root)]) == 0
    text = capsys.readouterr().out.splitlines()
    assert text[0] == f"{checkpoint} on mnist test: accuracy {result['accuracy']:.4f}, loss {result['loss']:.4f}"
    assert len(text) == 12  # then one line per class, then the model time
    assert text[-1].startswith("model time ") and text[-1].endswith(f" s ({result['precision']})")
    from lenet.precision import bfloat16_in_hardware

    assert result["precision"] == ("bfloat16" if bfloat16_in_hardware() else "float32")  # --precision auto


def test_eval_precision_bfloat16_for_a_model_without_it_is_one_error_line(synthetic_mnist_root, tmp_path, capsys):
    from lenet.checkpoint import save_checkpoint
    from lenet.models import create_model

    checkpoint = tmp_path / "paper.safetensors"
    save_checkpoint(checkpoint, create_model("lenet5"), {"model": "lenet5", "dataset": "mnist",
                                                         "class_names": list("0123456789")})
    code = main(["eval", "--checkpoint", str(checkpoint), "--data-root", str(synthetic_mnist_root),
                 "--precision", "bfloat16"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1 and "--precision bfloat16: only lenet5-bn models" in err[0]
    assert main(["eval", "--checkpoint", str(checkpoint), "--data-root", str(synthetic_mnist_root),
                 "--precision", "auto", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["precision"] == "float32"


def test_eval_precision_bfloat16_moves_the_loss_a_little(untrained_eval, synthetic_mnist_root, capsys):
    from lenet.precision import bfloat16_convolutions

    if not bfloat16_convolutions():
        pytest.skip("no oneDNN bfloat16 convolutions in this build or CPU")
    checkpoint, _, _ = untrained_eval
    losses = {}
    for precision in ("float32", "bfloat16"):
        assert main(["eval", "--checkpoint", str(checkpoint), "--data-root", str(synthetic_mnist_root),
                     "--precision", precision, "--json"]) == 0
        result = json.loads(capsys.readouterr().out)
        assert result["precision"] == precision
        losses[precision] = result["loss"]
    assert losses["float32"] != losses["bfloat16"] and abs(losses["float32"] - losses["bfloat16"]) < 0.05


@pytest.mark.slow
def test_eval_of_the_embedded_model_on_real_mnist(mnist_root, capsys):
    """Both precisions on the real test set: where bfloat16 runs (asked for, where oneDNN has it),
    its predictions are float32's on all but a handful of the 10,000 images."""
    from lenet.precision import bfloat16_convolutions, bfloat16_in_hardware

    results = {}
    precisions = ["float32"] + (["bfloat16"] if bfloat16_convolutions() else [])
    for precision in ["auto", *precisions]:
        assert main(["eval", "--data-root", str(mnist_root), "--json", "--precision", precision]) == 0
        results[precision] = result = json.loads(capsys.readouterr().out)
        assert result["accuracy"] > 0.99 and sum(map(sum, result["confusion_matrix"])) == 10_000
    assert results["auto"]["precision"] == ("bfloat16" if bfloat16_in_hardware() else "float32")
    if "bfloat16" in results:
        f32, b16 = (torch.tensor(results[p]["confusion_matrix"]) for p in ("float32", "bfloat16"))
        assert results["bfloat16"]["precision"] == "bfloat16"
        assert (f32 - b16).abs().sum() <= 10  # each changed prediction moves 2 counts
        assert abs(results["bfloat16"]["loss"] - results["float32"]["loss"]) < 0.01


def test_train_interrupted_then_resumed_through_the_cli(synthetic_mnist_root, tmp_path, capsys, monkeypatch):
    """`lenet train --resume last.safetensors` (and where the data is) finishes the run exactly as an
    uninterrupted one, from the config stored in the file."""
    from lenet import train

    common = ["--data-root", str(synthetic_mnist_root), "--model", "lenet5-bn", "--epochs", "2", "--batch-size", "16",
              "--val-size", "16", "--threads", "1", "--model-args", '{"dropout": 0.2}', "--json"]
    assert main(["train", *common, "--out", str(tmp_path / "whole")]) == 0
    whole = json.loads(capsys.readouterr().out)

    write_history = train.write_history

    def stop_after_epoch_one(path, history):  # as Ctrl-C would, once epoch 1 is saved
        write_history(path, history)
        if len(history) == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(train, "write_history", stop_after_epoch_one)
    last = tmp_path / "split" / "last.safetensors"
    assert main(["train", *common, "--out", str(tmp_path / "split")]) == 130
    err = capsys.readouterr().err
    assert f"interrupted after epoch 1/2; continue with `lenet train --resume {last}`" in err
    assert "\r" not in err  # stderr is no terminal here: no progress bar
    monkeypatch.setattr(train, "write_history", write_history)
    tensors, meta, state = load_extra_state(last)  # as a run from before `compile` was retired wrote it
    meta = {k: v for k, v in meta.items() if k != "extra_state"}
    save_checkpoint(last, build_model(tensors, meta, last), {**meta, "config": {**meta["config"], "compile": False}},
                    extra_state=state)

    assert main(["train", "--resume", str(last), "--data-root", str(synthetic_mnist_root), "--json"]) == 0
    out = capsys.readouterr()
    resumed = json.loads(out.out)
    assert "resuming" in out.err and resumed["epochs"] == 2
    for key in ("test_accuracy", "test_loss", "best_val_accuracy", "best_epoch"):
        assert resumed[key] == whole[key], key
    a, b = load_file(str(tmp_path / "whole" / "last.safetensors")), load_file(str(last))
    assert all(torch.equal(a[k], b[k]) for k in a if k.startswith("model."))



def test_atomic_write_to_a_name_too_long_is_one_lenet_error(tmp_path):
    from pathlib import Path

    from lenet.errors import LenetError
    from lenet.fileio import atomic_write

    with pytest.raises(LenetError, match="cannot write"):
        atomic_write(tmp_path / ("x" * 300 + ".png"), lambda tmp: Path(tmp).write_bytes(b"data"))
