"""The command-line contract: --help everywhere, --json output, one-line errors with exit 2."""

import json
import subprocess
import sys

import pytest

from lenet.cli import build_parser, main

COMMANDS = [["models"], ["summary"], ["data"], ["data", "fetch"], ["data", "show"], ["train"], ["eval"],
            ["predict"], ["serve"], ["export"], ["bench"]]


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

