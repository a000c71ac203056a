"""lenet: LeNet-5 handwritten-digit recognition — train, evaluate, predict, serve.

    pip install .            # then:
    lenet predict my_digit.jpg
    lenet train --preset quick
    lenet serve

Python API (imports are lazy so `import lenet` stays fast):
    from lenet import create_model, list_models, load_checkpoint, Predictor, fit, TrainConfig
"""

__version__ = "0.1.0"

_EXPORTS = {
    "create_model": "lenet.models", "list_models": "lenet.models", "get_spec": "lenet.models",
    "prepare_input": "lenet.models", "count_parameters": "lenet.models",
    "load_checkpoint": "lenet.checkpoint", "save_checkpoint": "lenet.checkpoint",
    "load_dataset": "lenet.data", "fetch": "lenet.sources",
    "TrainConfig": "lenet.config", "fit": "lenet.train", "evaluate": "lenet.train",
    "preprocess": "lenet.preprocess", "open_image": "lenet.preprocess", "Predictor": "lenet.predict",
    "LenetError": "lenet.errors",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'lenet' has no attribute {name!r}")
