"""What `lenet models` prints, precomputed, so that the command starts without importing torch.

The model zoo itself is lenet.models (importing torch takes about a second); this table repeats
its name, parameter count, input contract and description for each registered model.
tests/test_models.py checks it against the real models; after changing a model, print the new
table with `python -m lenet.catalog` and paste it here.
"""

from __future__ import annotations

from typing import Any

MODELS: tuple[dict[str, Any], ...] = (
    {"name": "lenet5", "parameters": 60850, "input_size": 32, "mean": 0.1307, "std": 0.3081,
     "description": "LeCun et al. 1998 as published: scaled tanh, trainable subsampling, C3 partial connections (Table I)"},
    {"name": "lenet5-sigmoid-avgpool", "parameters": 61706, "input_size": 28, "mean": 0.1307, "std": 0.3081,
     "description": "tutorial variant: sigmoid, average pooling, conv C5; 28x28 input with padding 2 on C1"},
    {"name": "lenet5-tanh-avgpool", "parameters": 61706, "input_size": 32, "mean": 0.1307, "std": 0.3081,
     "description": "tutorial variant: tanh, average pooling, full C3, conv C5"},
    {"name": "lenet5-relu-maxpool", "parameters": 61706, "input_size": 32, "mean": 0.1307, "std": 0.3081,
     "description": "tutorial variant: ReLU, max pooling, full C3, F5 400 -> 120"},
    {"name": "lenet5-bn", "parameters": 61932, "input_size": 32, "mean": 0.1307, "std": 0.3081,
     "description": "modern LeNet-5: same widths with batch norm, ReLU, max pooling, dropout before the classifier"},
    {"name": "mlp", "parameters": 623290, "input_size": 28, "mean": 0.1307, "std": 0.3081,
     "description": "tutorial baseline: 784 -> 784 -> 10, ReLU"},
    {"name": "cnn-simple", "parameters": 678798, "input_size": 28, "mean": 0.1307, "std": 0.3081,
     "description": "tutorial baseline: conv 10@5x5, max-pool stride 1, dropout, FC 128"},
)


def live_models() -> list[dict[str, Any]]:
    """The same rows computed from the registry: builds every model (imports torch)."""
    from lenet.models import count_parameters, create_model, list_models

    return [{"name": s.name, "parameters": count_parameters(create_model(s.name)), "input_size": s.input_size,
             "mean": s.mean, "std": s.std, "description": s.description} for s in list_models()]


if __name__ == "__main__":  # prints MODELS' rows, to paste above
    import json

    for row in live_models():
        head = ", ".join(f"{json.dumps(k)}: {json.dumps(v)}" for k, v in row.items() if k != "description")
        print(f"    {{{head},\n     \"description\": {json.dumps(row['description'])}}},")
