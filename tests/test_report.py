"""Pictures that label themselves: titles (stored in each PNG's metadata too), the selected epoch,
"true 2 → predicted 7", wrong predictions marked; `lenet data show` as shades or numbers."""

from __future__ import annotations


import numpy as np
import torch
from PIL import Image

from lenet.cli import main
from lenet.data import ascii_image
from lenet.evalcmd import mistake_label
from lenet.report import plot_curves, save_image_grid


def title_of(path) -> str:
    return Image.open(path).info.get("Title", "")


def test_eval_pictures_name_model_dataset_and_figure(untrained_eval):
    _, out, result = untrained_eval
    assert result["errors"] > 0  # an untrained model
    confusion = title_of(out / "confusion.png")
    assert confusion.startswith("lenet5-bn on mnist test (20 images): confusion matrix, accuracy ")
    assert f"{result['accuracy']:.2%}" in confusion
    assert title_of(out / "mistakes.png") == f"lenet5-bn on mnist test (20 images): all {result['errors']} mistakes, true → predicted"
    assert title_of(out / "predictions.png") == (f"lenet5-bn on mnist test (20 images): predictions for the first 20, "
                                                 f"{result['errors']} wrong (red)")


def test_mistake_labels():
    assert mistake_label("2", "7") == "true 2 → predicted 7"
    assert mistake_label("T-shirt/top", "Shirt") == "T-shirt/top → Shirt"


def test_wrong_answers_are_framed_in_red(tmp_path):
    images = torch.zeros(4, 28, 28, dtype=torch.uint8)
    plain = save_image_grid(images, list("0123"), tmp_path / "a.png", ncols=4, title="t")
    marked = save_image_grid(images, list("0123"), tmp_path / "b.png", ncols=4, title="t",
                             marked=[False, True, False, False])

    def red(path):
        rgb = np.asarray(Image.open(path).convert("RGB"), dtype=int)
        return int(((rgb[..., 0] > 200) & (rgb[..., 1] < 80) & (rgb[..., 2] < 80)).sum())

    assert red(plain) == 0 and red(marked) > 100


def test_curves_mark_the_selected_epoch(tmp_path):
    history = [{"epoch": e, "train_loss": 1 / e, "val_loss": 1.1 / e, "train_accuracy": 0.9 + e / 100,
                "val_accuracy": 0.9 + e / 200} for e in (1, 2, 3)]
    a = plot_curves(history, tmp_path / "a.png", title="lenet5 on mnist: curves", selected_epoch=2)
    b = plot_curves(history, tmp_path / "b.png", title="lenet5 on mnist: curves")
    assert title_of(a) == "lenet5 on mnist: curves"

    def green(path):
        rgb = np.asarray(Image.open(path).convert("RGB"), dtype=int)
        return int(((rgb[..., 1] > 100) & (rgb[..., 0] < 60) & (rgb[..., 2] < 60)).sum())

    assert green(a) > green(b) + 50  # the dashed green line at the selected epoch


def test_data_show_prints_shades_numbers_or_hex():
    image = torch.zeros(28, 28, dtype=torch.uint8)
    image[3, 5], image[4, 6] = 255, 128
    shades = ascii_image(image, "shades").split("\n")
    assert shades[3][10:12] == "@@" and shades[4][12:14] == "++" and shades[0] == ""
    numbers = ascii_image(image, "numbers").split("\n")
    assert numbers[3].split()[5] == "255" and len(numbers[3].split()) == 28
    assert ascii_image(image, "hex").split("\n")[3][10:12] == "ff"


def test_data_show_defaults_to_shades(synthetic_mnist_root, capsys):
    assert main(["data", "show", "--data-root", str(synthetic_mnist_root)]) == 0
    out = capsys.readouterr().out
    assert "@@@@@@@@@@@@" in out and "ff" not in out  # the 6x6 white square, in shades
    assert main(["data", "show", "--data-root", str(synthetic_mnist_root), "--pixels", "numbers"]) == 0
    assert "255" in capsys.readouterr().out
