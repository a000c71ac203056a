"""Shared fixtures: one real-dataset root per session, fetched through the offline chain.

`data_root` is a cache folder that survives between runs (.pytest_cache/d/lenet-data), so the
real datasets are fetched once per clone; `mnist_root` / `fashion_root` make sure the dataset
is there (verifying it) and return that root, for `load_dataset(name, root)`. A test that uses
them needs the real data: mark it `@pytest.mark.slow`, so that `make test-fast` fetches nothing.
`synthetic_mnist_root` is the fast stand-in for commands that read a dataset from disk.
"""

from __future__ import annotations

import dataclasses
import hashlib
import struct
from pathlib import Path

import numpy as np
import pytest

from lenet.datafiles import DATASETS, ROLES
from lenet.sources import fetch


REAL_DATA_FIXTURES = {"data_root", "mnist_root", "fashion_root"}


def pytest_collection_modifyitems(config, items):
    """Refuse to run a test that needs a real dataset but is not marked slow: `make test-fast`
    (-m "not slow") must not fetch anything."""
    for item in items:
        if REAL_DATA_FIXTURES & set(getattr(item, "fixturenames", ())) and item.get_closest_marker("slow") is None:
            raise pytest.UsageError(f"{item.nodeid} uses a real dataset: mark it @pytest.mark.slow")


@pytest.fixture(scope="session")
def data_root(request, tmp_path_factory) -> Path:
    cache = getattr(request.config, "cache", None)  # None with -p no:cacheprovider
    return Path(cache.mkdir("lenet-data")) if cache else tmp_path_factory.mktemp("lenet-data")


def _fetched(name: str, root: Path) -> Path:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LENET_OFFLINE", "1")  # tests never try the network
        fetch(name, root, progress=False, log=lambda message: None)
    return root


@pytest.fixture(scope="session")
def mnist_root(data_root) -> Path:
    return _fetched("mnist", data_root)


@pytest.fixture(scope="session")
def fashion_root(data_root) -> Path:
    return _fetched("fashion-mnist", data_root)


def synthetic_idx(n: int, kind: str, seed: int) -> bytes:
    """An IDX file of n images (a bright 6x6 square placed by the class, on faint noise) or labels."""
    labels = np.random.default_rng(seed).integers(0, 10, n, dtype=np.uint8)
    if kind == "labels":
        return struct.pack(">II", 0x801, n) + labels.tobytes()
    images = np.random.default_rng(seed + 1).integers(0, 40, (n, 28, 28), dtype=np.uint8)
    for i, k in enumerate(labels.tolist()):
        r, c = 4 + 6 * (k // 4), 4 + 6 * (k % 4)
        images[i, r:r + 6, c:c + 6] = 255
    return struct.pack(">IIII", 0x803, n, 28, 28) + images.tobytes()


@pytest.fixture
def synthetic_mnist_root(tmp_path, monkeypatch) -> Path:
    """A data root whose MNIST is 64 training and 20 test images made here; the mnist spec is
    made to expect their SHA-256 for this test. Returns the root (for --data-root)."""
    spec, root = DATASETS["mnist"], tmp_path / "data"
    folder = root / spec.folder / "raw"
    folder.mkdir(parents=True)
    files = {}
    for role in ROLES:
        split, kind = role.split("_")
        content = synthetic_idx(64 if split == "train" else 20, kind, seed=0 if split == "train" else 1)
        (folder / spec.files[role][0]).write_bytes(content)
        files[role] = (spec.files[role][0], hashlib.sha256(content).hexdigest())
    monkeypatch.setitem(DATASETS, "mnist", dataclasses.replace(spec, files=files))
    return root


@pytest.fixture
def untrained_eval(synthetic_mnist_root, tmp_path, capsys):
    """`lenet eval --json --out DIR` of an untrained lenet5-bn on the synthetic MNIST:
    -> (checkpoint, out folder, the JSON result)."""
    import json

    import torch

    from lenet.checkpoint import save_checkpoint
    from lenet.cli import main
    from lenet.models import create_model

    checkpoint, out = tmp_path / "m.safetensors", tmp_path / "eval"
    torch.manual_seed(0)
    save_checkpoint(checkpoint, create_model("lenet5-bn"), {"model": "lenet5-bn", "dataset": "mnist",
                                                           "class_names": list("0123456789")})
    assert main(["eval", "--checkpoint", str(checkpoint), "--data-root", str(synthetic_mnist_root),
                 "--out", str(out), "--json"]) == 0
    return checkpoint, out, json.loads(capsys.readouterr().out)
