"""Loaded by the Python processes that tests/test_distributed.py starts (PYTHONPATH points here):
makes lenet's MNIST spec expect the synthetic files named in $LENET_TEST_MNIST_FILES, as the
`synthetic_mnist_root` fixture does in the test process itself."""

import json
import os

if os.environ.get("LENET_TEST_MNIST_FILES"):
    import dataclasses

    from lenet.datafiles import DATASETS

    files = {role: tuple(v) for role, v in json.loads(os.environ["LENET_TEST_MNIST_FILES"]).items()}
    DATASETS["mnist"] = dataclasses.replace(DATASETS["mnist"], files=files)
