"""`lenet bench`'s measurements return sane numbers (speed targets live in benchmarks/, not here)."""

import importlib.util
import json
from pathlib import Path

import pytest

from lenet.bench import eval_seconds, predict_latency_ms, train_epoch_rate
from lenet.cli import main
from tests.test_train import synthetic_dataset


def test_measurements_on_synthetic_data():
    data = synthetic_dataset(n_train=5_600, n_test=500)
    rate, seconds = train_epoch_rate("lenet5", data, augment=True)
    assert rate > 0 and seconds > 0 and rate * seconds == pytest.approx(5_600 - 5_000, rel=1e-6)
    assert eval_seconds("lenet5", data) > 0 and eval_seconds("lenet5-bn", data, precision="auto") > 0
    assert 0 < predict_latency_ms(repeats=3) < 5_000


@pytest.mark.slow
def test_bench_command_json(mnist_root, capsys):
    assert main(["bench", "--json", "--data-root", str(mnist_root)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["train_images_per_second"] > 0 and result["eval_10k_seconds"] > 0
    assert result["batch_size"] == 512 and result["eval_precision"] == "float32"  # lenet5 has no bfloat16 path


def test_bench_refuses_a_bad_batch_size(capsys):
    assert main(["bench", "--batch-size", "0"]) == 2
    assert "--batch-size must be at least 1" in capsys.readouterr().err


def test_inference_benchmark_runs_with_tiny_sizes(synthetic_mnist_root, capsys):
    """benchmarks/inference.py end to end on the synthetic MNIST: every case measured, the three
    PyTorch forwards agree, the int8 file is the small one."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "inference.py"
    spec = importlib.util.spec_from_file_location("inference_benchmark", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    argv = ["--data-root", str(synthetic_mnist_root), "--limit", "20", "--images", "8", "--repeats", "1"]
    assert module.main([*argv, "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["images"] == 20 and r["files"] == 8 and r["model"] == "lenet5-bn"
    assert r["torch_layer_by_layer_accuracy"] == r["torch_unfolded_accuracy"] == r["torch_folded_accuracy"]
    for key in ("torch_layer_by_layer_seconds", "torch_folded_seconds", "onnx_fp32_seconds", "onnx_int8_seconds",
                "predict_1_process_images_per_second", "predict_all_cores_images_per_second"):
        assert r[key] > 0, key
    assert r["onnx_int8_bytes"] < r["onnx_fp32_bytes"] / 3 and 0 <= r["onnx_int8_accuracy"] <= 1
    from lenet.precision import bfloat16_convolutions

    if bfloat16_convolutions():  # the bfloat16 forward is timed too
        assert r["torch_folded_bf16_seconds"] > 0 and 0 <= r["torch_folded_bf16_accuracy"] <= 1
    assert module.main(argv) == 0
    text = capsys.readouterr().out
    assert "onnxruntime int8" in text and "images/s in one process" in text
