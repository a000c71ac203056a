"""`lenet train --tensorboard`: event files in the run folder, read back with TensorBoard's own reader."""

from __future__ import annotations

import csv

import pytest

from lenet.train import fit
from tests.test_train import config, quiet

pytest.importorskip("tensorboard")


def test_tensorboard_event_files_hold_the_scalars(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    fit(config(tmp_path, epochs=2, tensorboard=True), **quiet())
    out = tmp_path / "run"
    assert list(out.glob("events.out.tfevents.*"))
    acc = EventAccumulator(str(out), size_guidance={"scalars": 0, "histograms": 0, "images": 0}).Reload()
    tags = acc.Tags()
    history = list(csv.DictReader((out / "history.csv").open()))
    steps_per_epoch = -(-500 // 64)  # 600 synthetic images, 100 held out, batch 64
    assert len(acc.Scalars("step/loss")) == 2 * steps_per_epoch
    assert [e.step for e in acc.Scalars("step/lr")] == list(range(1, 2 * steps_per_epoch + 1))
    for key in ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr"):
        events = acc.Scalars(f"epoch/{key}")
        assert [e.step for e in events] == [1, 2]
        assert [e.value for e in events] == pytest.approx([float(r[key]) for r in history], rel=1e-5)
    assert acc.Scalars("epoch/train_accuracy")[-1].value > 0.5
    assert len(acc.Images("C1 kernels")) == 2
    assert any(t.startswith("weights/") for t in tags["histograms"])
    assert any(t.startswith("gradients/") for t in tags["histograms"])
    assert tags["graph"]


def test_without_the_flag_no_event_files(tmp_path):
    fit(config(tmp_path, epochs=1), **quiet())
    assert not list((tmp_path / "run").glob("events.out.tfevents.*"))
