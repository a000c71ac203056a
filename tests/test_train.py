"""The trainer on small synthetic data (seconds), and one short run on real MNIST (slow)."""

import csv
import json
import os
import signal

import pytest
import torch
from safetensors.torch import load_file

from lenet.checkpoint import save_checkpoint
from lenet.cli import main
from lenet.config import TrainConfig
from lenet.data import Dataset, load_dataset
from lenet.errors import LenetError
from lenet.models import create_model
from lenet.train import Run, fit


def synthetic_dataset(n_train=600, n_test=200, seed=0) -> Dataset:
    """10 classes: a bright 6x6 square at a class-dependent place, plus noise."""
    gen = torch.Generator().manual_seed(seed)

    def make(n):
        labels = torch.randint(0, 10, (n,), generator=gen)
        images = torch.randint(0, 40, (n, 28, 28), generator=gen).to(torch.uint8)
        for i, k in enumerate(labels.tolist()):
            r, c = 4 + 6 * (k // 4), 4 + 6 * (k % 4)
            images[i, r:r + 6, c:c + 6] = 255
        return images, labels

    train_x, train_y = make(n_train)
    test_x, test_y = make(n_test)
    return Dataset("mnist", [str(i) for i in range(10)], train_x, train_y, test_x, test_y)


def quiet(**kw) -> dict:
    return {"data": synthetic_dataset(), "progress": False, "log": lambda s: None, **kw}


def config(tmp_path, **kw) -> TrainConfig:
    base = {"model": "lenet5-bn", "epochs": 3, "batch_size": 64, "val_size": 100, "lr": 0.01,
            "out": str(tmp_path / "run"), "threads": 1}
    return TrainConfig(**{**base, **kw})


def test_outputs_match_the_contract(tmp_path):
    metrics = fit(config(tmp_path, model_args={"dropout": 0.1}), **quiet())
    out = tmp_path / "run"
    for name in ("model.safetensors", "last.safetensors", "config.json", "history.csv", "curves.png",
                 "metrics.json"):
        assert (out / name).is_file(), name
    saved = json.loads((out / "metrics.json").read_text())
    assert saved == metrics
    for key in ("test_accuracy", "best_val_accuracy", "epochs", "seconds", "train_images_per_second"):
        assert key in saved
    assert saved["epochs"] == 3 and saved["test_accuracy"] > 0.9  # the squares are easy
    rows = list(csv.DictReader((out / "history.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert json.loads((out / "config.json").read_text())["model_args"] == {"dropout": 0.1}
    assert not list(out.glob("*.tmp"))


def test_same_seed_same_metrics(tmp_path):
    a = fit(config(tmp_path / "a", augment=True, elastic_alpha=1.0), **quiet())
    b = fit(config(tmp_path / "b", augment=True, elastic_alpha=1.0), **quiet())
    c = fit(config(tmp_path / "c", augment=True, elastic_alpha=1.0, seed=1), **quiet())
    keys = ("test_accuracy", "test_loss", "best_val_accuracy", "best_epoch")
    assert [a[k] for k in keys] == [b[k] for k in keys]
    wa = load_file(str(tmp_path / "a/run/last.safetensors"))
    wb = load_file(str(tmp_path / "b/run/last.safetensors"))
    wc = load_file(str(tmp_path / "c/run/last.safetensors"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa if k.startswith("model."))
    assert not all(torch.equal(wa[k], wc[k]) for k in wa if k.startswith("model."))


def test_kill_and_resume_gives_the_same_final_weights(tmp_path):
    cfg = dict(augment=True, model_args={"dropout": 0.2})  # dropout + augmentation: both RNGs matter
    fit(config(tmp_path / "whole", **cfg), **quiet())

    def kill_after_epoch_one(line):
        if line.startswith("epoch   1/"):
            os.kill(os.getpid(), signal.SIGTERM)  # as `kill PID` would, between epochs

    with pytest.raises(LenetError, match="interrupted after epoch 1/3.*--resume"):
        fit(config(tmp_path / "split", **cfg), **quiet(log=kill_after_epoch_one))
    last = tmp_path / "split/run/last.safetensors"
    fit(config(tmp_path / "split", **cfg), resume=last, **quiet())
    whole = load_file(str(tmp_path / "whole/run/last.safetensors"))
    split = load_file(str(last))
    model_keys = [k for k in whole if k.startswith("model.")]
    assert model_keys and all(torch.equal(whole[k], split[k]) for k in model_keys)
    a = json.loads((tmp_path / "whole/run/metrics.json").read_text())
    b = json.loads((tmp_path / "split/run/metrics.json").read_text())
    assert a["test_accuracy"] == b["test_accuracy"] and b["epochs"] == 3


def test_resume_refuses_missing_and_foreign_checkpoints(tmp_path):
    with pytest.raises(LenetError, match="no such checkpoint"):
        fit(config(tmp_path), resume=tmp_path / "missing.safetensors", **quiet())
    plain = tmp_path / "plain.safetensors"
    save_checkpoint(plain, create_model("lenet5-bn"), {"model": "lenet5-bn", "dataset": "mnist"})
    with pytest.raises(LenetError, match="no training state"):
        fit(config(tmp_path), resume=plain, **quiet())
    fit(config(tmp_path, model="lenet5", epochs=1), **quiet())
    with pytest.raises(LenetError, match="was trained as lenet5 on mnist, not lenet5-bn"):
        fit(config(tmp_path), resume=tmp_path / "run/last.safetensors", **quiet())


def test_resume_must_keep_what_shapes_the_result(tmp_path):
    fit(config(tmp_path, epochs=1), **quiet())
    last = tmp_path / "run/last.safetensors"
    with pytest.raises(LenetError, match="used --seed 0, not 5"):
        fit(config(tmp_path, epochs=1, seed=5), resume=last, **quiet())
    with pytest.raises(LenetError, match="used --epochs 1, not 4"):
        fit(config(tmp_path, epochs=4), resume=last, **quiet())


def test_a_second_run_does_not_replace_the_first(tmp_path):
    fit(config(tmp_path, epochs=1), **quiet())
    before = (tmp_path / "run/model.safetensors").read_bytes()
    with pytest.raises(LenetError, match="already holds a run.*--overwrite"):
        fit(config(tmp_path, epochs=1, seed=3), **quiet())
    assert (tmp_path / "run/model.safetensors").read_bytes() == before
    fit(config(tmp_path, epochs=1, seed=3), overwrite=True, **quiet())
    assert (tmp_path / "run/model.safetensors").read_bytes() != before


def test_no_validation_split_reports_no_validation_figure(tmp_path):
    metrics = fit(config(tmp_path, epochs=1, val_size=0), **quiet())
    assert metrics["best_val_accuracy"] is None and metrics["selected_on"].startswith("last epoch")


def test_validation_split_never_overlaps_training(tmp_path):
    run = Run(config(tmp_path, val_size=150), synthetic_dataset(), torch.device("cpu"))
    train, val = set(run.train_idx.tolist()), set(run.val_idx.tolist())
    assert len(val) == 150 and not train & val and len(train | val) == 600


def test_select_on_test_is_recorded(tmp_path):
    metrics = fit(config(tmp_path, epochs=1, select_on_test=True), **quiet())
    assert metrics["selected_on"].startswith("test")


@pytest.mark.parametrize("argv, message", [
    (["--epochs", "-1"], "--epochs must be at least 1"),
    (["--optimizer", "rmsprop"], "invalid choice: 'rmsprop'"),
    (["--lr", "0"], "--lr must be in (0, 10]"),
    (["--model", "lenet6"], "unknown model 'lenet6'"),
    (["--model-args", "[1]"], "must be a JSON object"),
    (["--resume", "nope.safetensors"], "no such checkpoint"),
    (["--val-size", "60000"], "leaves no training images"),
    (["--elastic-sigma", "0"], "--elastic-sigma must be in (0, 9]"),
    (["--momentum", "1.5"], "--momentum must be in [0, 1)"),
    (["--config", "/"], "cannot read"),
])
def test_bad_flags_exit_2_with_one_line(tmp_path, capsys, mnist_root, argv, message):
    code = main(["train", "--data-root", str(mnist_root), "--out", str(tmp_path / "r"), "--no-progress", *argv])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


@pytest.mark.parametrize("values, message", [
    ({"epochs": "x"}, "epochs: expected int"), ({"augment": "false"}, "augment: expected bool"),
    ({"batch_size": 1.5}, "batch_size: expected int"), ({"optimiser": "sgd"}, "unknown config fields optimiser"),
])
def test_config_file_values_are_type_checked(tmp_path, values, message):
    from lenet.config import resolve

    path = tmp_path / "c.json"
    path.write_text(json.dumps(values))
    with pytest.raises(LenetError, match=message):
        resolve(config_file=str(path))


def test_precedence_defaults_preset_file_flags(tmp_path):
    from lenet.config import PRESETS, resolve

    path = tmp_path / "c.json"
    path.write_text(json.dumps({"epochs": 7, "lr": 0.02}))
    cfg = resolve("quick", str(path), lr=0.05)
    assert (cfg.epochs, cfg.lr) == (7, 0.05)  # file over preset, flag over file
    assert (cfg.model, cfg.batch_size) == (PRESETS["quick"]["model"], PRESETS["quick"]["batch_size"])  # preset
    assert cfg.optimizer == TrainConfig().optimizer  # untouched fields keep their defaults


@pytest.mark.slow
def test_short_training_on_real_mnist_passes_97_percent(tmp_path, mnist_root):
    data = load_dataset("mnist", mnist_root)
    cfg = TrainConfig(model="lenet5-bn", epochs=1, batch_size=128, lr=5e-3, augment=False,
                      out=str(tmp_path / "run"))
    metrics = fit(cfg, data=data, progress=False, log=lambda s: None)
    assert metrics["test_accuracy"] > 0.97
    assert metrics["selected_on"] == "validation"
