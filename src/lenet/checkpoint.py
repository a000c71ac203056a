"""Checkpoints: safetensors tensors + one JSON metadata entry; atomic writes; no pickle.

A checkpoint carries what rebuilds its model (nanoGPT's `model_args`):

    {"format": 1, "model": "lenet5", "model_args": {"num_classes": 10},
     "dataset": "mnist", "class_names": [...], "metrics": {...}, "lenet_version": "..."}

Training state (optimizer, scheduler, RNG) for `--resume` is stored the same way: nested
dicts are flattened so tensors go to safetensors and everything else to JSON.
The embedded defaults live in `lenet/weights/` and are found by name (`mnist`, `fashion-mnist`).
"""

from __future__ import annotations

import json
import os
import secrets
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from lenet.errors import LenetError
from lenet.models import create_model, get_spec

FORMAT_VERSION = 1
META_KEY = "lenet"
MODEL_PREFIX = "model."
EMBEDDED = {"mnist": "mnist-lenet5.safetensors", "fashion-mnist": "fashion-mnist-lenet5.safetensors"}


def atomic_write(path: Path, write) -> None:
    """Call write(tmp_path), flush it to disk, then rename over `path`: readers (and a crash)
    never see a half-written file. An OS error becomes one LenetError line naming the file."""
    path = Path(path)
    tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))  # mode 0666 minus umask
        mode = tmp.stat().st_mode
        write(str(tmp))
        os.chmod(tmp, mode)  # some writers (safetensors) recreate the file as 0600
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as exc:
        raise LenetError(f"{path}: cannot write ({exc.strerror or exc})") from None
    finally:
        tmp.unlink(missing_ok=True)


def flatten_state(state: Any, prefix: str, tensors: dict[str, torch.Tensor]) -> Any:
    """Nested dict/list with tensors -> JSON skeleton; tensors go into `tensors` by key."""
    if isinstance(state, torch.Tensor):
        tensors[prefix] = state.detach().cpu().contiguous()
        return {"__tensor__": prefix}
    if isinstance(state, dict):
        return {"__dict__": [[flatten_state(k, f"{prefix}.k{i}", tensors),
                              flatten_state(v, f"{prefix}.{i}", tensors)]
                             for i, (k, v) in enumerate(state.items())]}
    if isinstance(state, (list, tuple)):
        items = [flatten_state(v, f"{prefix}.{i}", tensors) for i, v in enumerate(state)]
        return {"__tuple__": items} if isinstance(state, tuple) else items
    return state


def unflatten_state(skeleton: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of flatten_state."""
    if isinstance(skeleton, dict):
        if "__tensor__" in skeleton:
            return tensors[skeleton["__tensor__"]]
        if "__tuple__" in skeleton:
            return tuple(unflatten_state(v, tensors) for v in skeleton["__tuple__"])
        return {unflatten_state(k, tensors): unflatten_state(v, tensors)
                for k, v in skeleton["__dict__"]}
    if isinstance(skeleton, list):
        return [unflatten_state(v, tensors) for v in skeleton]
    return skeleton


def save_checkpoint(path: str | Path, model: nn.Module, meta: dict[str, Any],
                    extra_state: dict[str, Any] | None = None) -> None:
    """Write model weights (+ optional training state) and metadata atomically.

    `meta` must name the model and its args; `extra_state` is any nested state (optimizer,
    scheduler, RNG) stored next to the weights.
    """
    tensors = {MODEL_PREFIX + k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    meta = {"format": FORMAT_VERSION, **meta}
    if extra_state is not None:
        meta["extra_state"] = flatten_state(extra_state, "state", tensors)
    text = json.dumps(meta)
    atomic_write(Path(path), lambda tmp: save_file(tensors, tmp, metadata={META_KEY: text}))


def read_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors and metadata of a checkpoint file, or a LenetError saying what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise LenetError(f"{path}: no such checkpoint file")
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get(META_KEY)
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise LenetError(f"{path}: not a safetensors checkpoint ({exc})") from None
    if raw is None:
        raise LenetError(f"{path}: safetensors file without lenet metadata; it was not written by lenet")
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError:
        raise LenetError(f"{path}: its lenet metadata is not valid JSON") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_VERSION:
        raise LenetError(f"{path}: unsupported checkpoint format")
    if not isinstance(meta.get("model"), str) or not isinstance(meta.get("model_args", {}), dict):
        raise LenetError(f"{path}: its metadata does not name a model and its arguments")
    return tensors, meta


def build_model(tensors: dict[str, torch.Tensor], meta: dict[str, Any], path: Path) -> nn.Module:
    """Rebuild the model named in `meta` and load its weights, explaining any mismatch."""
    try:
        get_spec(meta["model"])
    except KeyError as exc:
        raise LenetError(f"{path}: {exc.args[0]}") from None
    try:
        model = create_model(meta["model"], **meta.get("model_args", {}))
    except (TypeError, ValueError, RuntimeError) as exc:
        raise LenetError(f"{path}: model arguments do not fit {meta['model']!r} ({exc})") from None
    state = {k[len(MODEL_PREFIX):]: v for k, v in tensors.items() if k.startswith(MODEL_PREFIX)}
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}" for k, v in expected.items()
             if k in state and state[k].shape != v.shape]
    if missing or unexpected or wrong:
        parts = [f"missing {missing[:3]}" if missing else "", f"unexpected {unexpected[:3]}" if unexpected else "",
                 f"shape {wrong[:3]}" if wrong else ""]
        raise LenetError(f"{path}: weights do not fit model {meta['model']!r}: "
                         + "; ".join(p for p in parts if p))
    model.load_state_dict(state)
    return model


def resolve_checkpoint(name_or_path: str | Path | None) -> Path:
    """None -> the embedded MNIST model; an embedded name -> its file; else a path."""
    if name_or_path is None:
        name_or_path = "mnist"
    path = Path(name_or_path)
    if path.is_file() or str(name_or_path) not in EMBEDDED:  # a folder named mnist/ is not a checkpoint
        return path
    ref = resources.files("lenet") / "weights" / EMBEDDED[str(name_or_path)]
    if not ref.is_file():
        raise LenetError(f"embedded checkpoint {name_or_path!r} is missing from this installation")
    return Path(str(ref))


def load_checkpoint(name_or_path: str | Path | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """(model in eval mode, metadata) from a file path or an embedded name (default: mnist)."""
    path = resolve_checkpoint(name_or_path)
    tensors, meta = read_checkpoint(path)
    model = build_model(tensors, meta, path)
    meta["path"] = str(path)
    return model.eval(), meta


def load_extra_state(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any], Any]:
    """(tensors, meta, training state) of a `last.safetensors` written with extra_state."""
    tensors, meta = read_checkpoint(path)
    if "extra_state" not in meta:
        raise LenetError(f"{path}: has no training state to resume from (use last.safetensors)")
    return tensors, meta, unflatten_state(meta["extra_state"], tensors)
