"""`lenet explain`: the four pictures, the layers' names and shapes, for every model in the zoo."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageFilter

from lenet.cli import main
from lenet.explain import FILES, attributions, explain_one, stages
from lenet.models import create_model, get_spec, list_models, prepare_input

pytest.importorskip("captum")


def drawn_seven(path):
    img = Image.new("RGB", (200, 200), (235, 230, 220))
    ImageDraw.Draw(img).line([(60, 40), (140, 40), (90, 170)], fill=(20, 20, 60), width=12)
    img.save(path)
    return path


def not_blank(path):
    pixels = np.asarray(Image.open(path).convert("L"), dtype=np.float32)
    return pixels.std() > 5 and pixels.shape[0] > 100 and pixels.shape[1] > 100


def test_explain_a_photo_writes_four_titled_pictures(tmp_path, capsys):
    photo = drawn_seven(tmp_path / "seven.jpg")
    assert main(["explain", str(photo), "--out", str(tmp_path / "out"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["prediction"] == 7 and result["runner_up"] != 7
    assert [p.rsplit("/", 1)[1] for p in result["files"]] == list(FILES)
    assert all(not_blank(p) for p in result["files"])
    assert all(p.startswith(str(tmp_path / "out" / "seven")) for p in result["files"])
    assert result["steps"][0] == "original 200x200" and len(result["steps"]) == 8
    assert any("to_gray" in s for s in result["steps"]) and any("to_model_input" in s for s in result["steps"])
    names = [layer["name"] for layer in result["layers"]]
    assert names == ["C1", "S2", "C3", "S4", "C5", "F6", "output"]
    assert result["layers"][-1]["shape"] == [10]


def test_explain_index_uses_the_test_set(synthetic_mnist_root, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["explain", "--index", "0", "--index", "3", "--data-root", str(synthetic_mnist_root),
                 "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "C1 12@28x28" in text
    for name in ("test-0", "test-3"):
        assert sorted(p.name for p in (out / name).iterdir()) == sorted(FILES)
    assert main(["explain", "--index", "20", "--data-root", str(synthetic_mnist_root), "--out", str(out)]) == 2


def test_explain_needs_an_input(tmp_path, capsys):
    assert main(["explain", "--out", str(tmp_path)]) == 2
    assert "--index" in capsys.readouterr().err


@pytest.mark.parametrize("name", [spec.name for spec in list_models()])
def test_every_model_in_the_zoo(name, tmp_path):
    torch.manual_seed(0)
    model = create_model(name).eval()
    image = torch.zeros(1, 28, 28)
    image[0, 6:22, 12:16] = 1.0  # a "1"
    result = explain_one(model, {"model": name, "dataset": "mnist"}, image, tmp_path, "one")
    assert all(not_blank(p) for p in result["files"])
    layers = result["layers"]
    assert layers[-1]["shape"] == [10]
    if name.startswith("lenet5"):
        assert [layer["name"] for layer in layers] == ["C1", "S2", "C3", "S4", "C5", "F6", "output"]
        assert layers[0]["title"] == "C1 6@28x28" and layers[2]["title"] == "C3 16@10x10"
        assert layers[4]["title"] == "C5 120" and layers[5]["title"] == "F6 84"
    else:
        assert all(layer["name"][0].isdigit() for layer in layers)  # module names: "1 Linear"


def test_stages_follow_the_layers_of_the_model():
    model = create_model("lenet5")
    x = prepare_input(torch.zeros(1, 28, 28), get_spec("lenet5"))
    layer_stages = stages(model, "lenet5")
    assert [s.index for s in layer_stages] == [1, 3, 5, 7, 9, 12, 13]  # after each activation
    assert [s.name for s in stages(create_model("mlp"), "mlp")] == ["1 Linear", "3 Linear"]
    assert model(x).shape == (1, 10)


def test_attributions_fall_on_the_ink(tmp_path):
    from lenet.checkpoint import load_checkpoint
    from lenet.predict import Predictor

    predictor = Predictor()
    image = predictor.preprocess(Image.open(drawn_seven(tmp_path / "seven.png"))).image  # (1, 28, 28)
    model, meta = load_checkpoint("mnist")
    maps = attributions(model, get_spec(meta["model"]), image, [7])
    ink = image[0].numpy() > 0.2
    near = np.asarray(Image.fromarray(ink.astype(np.uint8) * 255).filter(ImageFilter.MaxFilter(5))) > 0
    ig = np.abs(maps["Integrated Gradients"][0])
    assert ig[ink].sum() / ig.sum() > 0.9
    occ = np.clip(maps["occlusion"][0], 0, None)
    assert occ[near].sum() / occ.sum() > 0.8


def test_an_image_without_a_digit_is_one_line(tmp_path, capsys):
    Image.new("L", (100, 100), 255).save(tmp_path / "blank.png")
    assert main(["explain", str(tmp_path / "blank.png"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "blank.png: no digit found" in err


def test_c3_kernels_show_the_partial_connection_table(tmp_path):
    from lenet.explain import plot_kernels

    def grey(name):  # cells left blank (#dddddd): Table I's absent connections, and the gaps between kernels
        path = plot_kernels(create_model(name), name, tmp_path / f"{name}.png")
        rgb = np.asarray(Image.open(path).convert("RGB"), dtype=int)
        return int((np.abs(rgb - 0xDD).max(axis=2) <= 2).sum())

    assert grey("lenet5") > grey("lenet5-tanh-avgpool") + 20_000  # 36 of 96 kernels absent


def test_stages_of_a_nearest_enlargement_are_shown_at_the_size_the_pipeline_reads():
    """A 14 px digit enlarged 8x by "nearest": the stages after the undo are at 14 px, like the
    ink found, so every picture lines up with the next one."""
    from lenet.explain import image_steps
    from lenet.preprocess import DIGITS

    small = Image.new("L", (14, 14), 255)
    ImageDraw.Draw(small).line([(4, 3), (10, 3), (6, 11)], fill=0, width=2)
    blocky = small.resize((112, 112), Image.Resampling.NEAREST)
    steps, image = image_steps(blocky, DIGITS)
    shapes = {title.split(" (")[0]: picture.shape[:2] for title, picture in steps}
    assert shapes["original 112x112"] == (112, 112)
    assert shapes["enlargement undone 14x14"] == (14, 14)
    assert shapes["grey 14x14"] == shapes["paper removed"] == shapes["ink found"] == (14, 14)
    assert image.shape == (1, 28, 28)
    smooth_steps, _ = image_steps(small.resize((112, 112), Image.Resampling.BILINEAR), DIGITS)
    assert not any("undone" in title for title, _ in smooth_steps)  # only an exact enlargement is undone
