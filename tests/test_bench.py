"""`lenet bench`'s measurements return sane numbers (speed targets live in benchmarks/, not here)."""

import json

import pytest

from lenet.bench import eval_seconds, predict_latency_ms, train_epoch_rate
from lenet.cli import main
from tests.test_train import synthetic_dataset


def test_measurements_on_synthetic_data():
    data = synthetic_dataset(n_train=5_600, n_test=500)
    rate, seconds = train_epoch_rate("lenet5", data, augment=True)
    assert rate > 0 and seconds > 0 and rate * seconds == pytest.approx(5_600 - 5_000, rel=1e-6)
    assert eval_seconds("lenet5", data) > 0
    assert 0 < predict_latency_ms(repeats=3) < 5_000


@pytest.mark.slow
def test_bench_command_json(mnist_root, capsys):
    assert main(["bench", "--json", "--data-root", str(mnist_root)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["train_images_per_second"] > 0 and result["eval_10k_seconds"] > 0
    assert result["batch_size"] == 512


def test_bench_refuses_a_bad_batch_size(capsys):
    assert main(["bench", "--batch-size", "0"]) == 2
    assert "--batch-size must be at least 1" in capsys.readouterr().err
