"""Shared fixtures: one real-dataset root per session, fetched through the offline chain.

`data_root` is a cache folder that survives between runs (.pytest_cache/d/lenet-data), so the
real datasets are fetched once per clone; `mnist_root` / `fashion_root` make sure the dataset
is there (verifying it) and return that root, for `load_dataset(name, root)`.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from lenet.sources import fetch


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
