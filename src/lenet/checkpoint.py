"""Checkpoints: safetensors tensors + one JSON metadata entry; atomic writes (lenet.fileio); no pickle.

A checkpoint carries what rebuilds its model (nanoGPT's `model_args`):

    {"format": 1, "model": "lenet5", "model_args": {"num_classes": 10},
     "dataset": "mnist", "class_names": [...], "metrics": {...}, "lenet_version": "..."}

Training state (optimizer, scheduler, RNG) for `--resume` is stored the same way: nested
dicts are flattened so tensors go to safetensors and everything else to JSON.
The embedded defaults live in `lenet/weights/` and are found by name (`mnist`, `fashion-mnist`).

Nothing corrupt loads silently: the file's size and header length are bounded before it is
parsed, the metadata is checked field by field (lenet.metadata), the tensors must match the
SHA-256 stored when saving (files without one load with a one-line warning), and the weights
must fit the model in names, shapes and dtypes (checked on the meta device, before any
allocation), be finite, and have no negative batch-norm running variance.
"""

from __future__ import annotations

import hashlib
import json
import sys
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from lenet.errors import LenetError
from lenet.fileio import atomic_write
from lenet.metadata import FORMAT_VERSION, HASH_KEY, check_meta, parse_meta
from lenet.models import create_model, get_spec

META_KEY = "lenet"
MODEL_PREFIX = "model."
RUNTIME_KEYS = ("path", HASH_KEY)  # set when loading / saving, never carried over from a caller's meta
MAX_FILE_BYTES = 1 << 30  # a last.safetensors of the widest registered model is about 8 MB
MAX_HEADER_BYTES = 8 << 20  # safetensors' JSON header: tensor table + metadata (at most 1 MB)
MAX_PARAMETERS = 50_000_000  # model_args are checked against this before the model is built
EMBEDDED = {"mnist": "mnist-lenet5.safetensors", "fashion-mnist": "fashion-mnist-lenet5.safetensors"}


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
    """Inverse of flatten_state; a skeleton flatten_state could not have written raises ValueError."""
    if isinstance(skeleton, list):
        return [unflatten_state(v, tensors) for v in skeleton]
    if not isinstance(skeleton, dict):
        return skeleton
    tag, value = next(iter(skeleton.items())) if len(skeleton) == 1 else (None, None)  # {"__tensor__": key}, ...
    if tag == "__tensor__":
        if not isinstance(value, str) or value not in tensors or value.startswith(MODEL_PREFIX):
            raise ValueError(f"it refers to a tensor {value!r} the file does not hold")
        return tensors[value]
    if tag == "__tuple__" and isinstance(value, list):
        return tuple(unflatten_state(v, tensors) for v in value)
    if tag == "__dict__" and isinstance(value, list) and all(isinstance(p, list) and len(p) == 2 for p in value):
        pairs = [(unflatten_state(k, tensors), unflatten_state(v, tensors)) for k, v in value]
        if not all(isinstance(k, (str, int)) for k, _ in pairs):  # what state_dicts use as keys
            raise ValueError("a key of its state is neither text nor a whole number")
        return dict(pairs)
    raise ValueError(f"an entry of its state is not one lenet writes ({', '.join(map(str, skeleton))[:60]})")


def tensor_digest(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over every tensor's name, dtype, shape and bytes, in name order (hex)."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}\0{t.dtype}\0{list(t.shape)}\0".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy())  # the raw bytes, no copy
    return digest.hexdigest()


def save_checkpoint(path: str | Path, model: nn.Module, meta: dict[str, Any],
                    extra_state: dict[str, Any] | None = None) -> None:
    """Write model weights (+ optional training state) and metadata atomically.

    `meta` must name the model and its args; any other key it holds is kept (as long as
    lenet.metadata accepts it; "path" from load_checkpoint is dropped). `extra_state` is any
    nested state (optimizer, scheduler, RNG) stored next to the weights. The SHA-256 of all
    tensors goes into the metadata, for read_checkpoint to verify.
    """
    tensors = {MODEL_PREFIX + k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    meta = {"format": FORMAT_VERSION, **{k: v for k, v in meta.items() if k not in RUNTIME_KEYS}}
    if extra_state is not None:
        meta["extra_state"] = flatten_state(extra_state, "state", tensors)
    meta[HASH_KEY] = tensor_digest(tensors)
    check_meta(meta, f"{path}: cannot save")  # never write what would not load back
    text = json.dumps(meta)
    atomic_write(Path(path), lambda tmp: save_file(tensors, tmp, metadata={META_KEY: text}))


def check_file_size(path: Path) -> None:
    """Refuse a file or a safetensors header larger than any lenet writes, before parsing it."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            header = int.from_bytes(f.read(8), "little")  # safetensors: u64 header length first
    except OSError as exc:
        raise LenetError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if size > MAX_FILE_BYTES:
        raise LenetError(f"{path}: {size:,} bytes, larger than any lenet checkpoint ({MAX_FILE_BYTES:,} at most)")
    if size >= 8 and header > MAX_HEADER_BYTES:
        raise LenetError(f"{path}: not a safetensors checkpoint (a header of {header:,} bytes, "
                         f"more than the {MAX_HEADER_BYTES:,} lenet allows)")


def verify_digest(tensors: dict[str, torch.Tensor], meta: dict[str, Any], path: Path) -> None:
    """Refuse tensors that differ from the SHA-256 saved with them; warn (one line) if there is none."""
    if HASH_KEY not in meta:
        print(f"lenet: warning: {path}: no tensor checksum (saved by an older lenet), its weights "
              "cannot be verified; re-save it to add one", file=sys.stderr)
    elif tensor_digest(tensors) != meta[HASH_KEY]:
        raise LenetError(f"{path}: its tensors do not match their checksum (the file is corrupt) — "
                         "download, copy or train it again")


def read_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors and metadata of a checkpoint file, verified, or a LenetError saying what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise LenetError(f"{path}: no such checkpoint file")
    check_file_size(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get(META_KEY)
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise LenetError(f"{path}: not a safetensors checkpoint ({exc})") from None
    if raw is None:
        raise LenetError(f"{path}: safetensors file without lenet metadata; it was not written by lenet")
    meta = parse_meta(raw, path)
    verify_digest(tensors, meta, path)
    return tensors, meta


def model_skeleton(name: str, args: dict[str, Any], path: Path) -> dict[str, torch.Tensor]:
    """The state_dict the model would have, on the meta device: names, shapes, dtypes, no memory."""
    try:
        with torch.device("meta"):
            expected = create_model(name, **args).state_dict()
    except (TypeError, ValueError, RuntimeError, OverflowError) as exc:
        raise LenetError(f"{path}: model arguments do not fit {name!r} ({' '.join(str(exc).split())[:200]})") from None
    n = sum(t.numel() for t in expected.values())
    if n > MAX_PARAMETERS:
        raise LenetError(f"{path}: model_args {args} give {n:,} parameters, more than the {MAX_PARAMETERS:,} lenet loads")
    return expected


def _kind(dtype: torch.dtype) -> str:
    return "float" if dtype.is_floating_point else "complex" if dtype.is_complex else \
        "bool" if dtype == torch.bool else "integer"


def weights_problem(state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], model: str) -> str | None:
    """What keeps `state` from being `model`'s weights (names, shapes, dtypes, values), or None."""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}" for k, v in expected.items()
             if k in state and state[k].shape != v.shape]
    if missing or unexpected or wrong:
        parts = [f"missing {missing[:3]}" if missing else "", f"unexpected {unexpected[:3]}" if unexpected else "",
                 f"shape {wrong[:3]}" if wrong else ""]
        return f"weights do not fit model {model!r}: " + "; ".join(p for p in parts if p)
    for k, v in expected.items():  # float16/64 for float32 is a harmless cast; int8 weights are not
        if _kind(state[k].dtype) != _kind(v.dtype):
            return f"weights {k} have dtype {str(state[k].dtype)[6:]}, model {model!r} needs {str(v.dtype)[6:]}"
        if state[k].is_floating_point() and not torch.isfinite(state[k]).all():
            return f"weights {k} hold non-finite values (NaN or Inf): a corrupt file or a diverged run"
        if k.endswith("running_var") and (state[k] < 0).any():
            return f"weights {k} hold a negative batch-norm running variance"
    return None


def build_model(tensors: dict[str, torch.Tensor], meta: dict[str, Any], path: Path) -> nn.Module:
    """Rebuild the model named in `meta` and load its weights, explaining any mismatch."""
    try:
        get_spec(meta["model"])
    except KeyError as exc:
        raise LenetError(f"{path}: {exc.args[0]}") from None
    args = meta.get("model_args", {})
    state = {k[len(MODEL_PREFIX):]: v for k, v in tensors.items() if k.startswith(MODEL_PREFIX)}
    problem = weights_problem(state, model_skeleton(meta["model"], args, path), meta["model"])
    if problem:
        raise LenetError(f"{path}: {problem}")
    try:
        model = create_model(meta["model"], **args)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise LenetError(f"{path}: model arguments do not fit {meta['model']!r} ({exc})") from None
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
    try:
        return tensors, meta, unflatten_state(meta["extra_state"], tensors)
    except ValueError as exc:
        raise LenetError(f"{path}: its training state is malformed: {exc}") from None
