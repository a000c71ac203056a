"""A checkpoint's lenet metadata: one JSON object, bounded and validated before anything uses it.

The metadata comes from a file anyone may have written, so `parse_meta` checks it in three
steps, each failing with one LenetError line: its size and nesting depth before `json.loads`
(a 5,000-deep object would otherwise end in Python's RecursionError), then the JSON itself
(no NaN or Infinity: `predict --json` and the server print metrics and names), then every
known field's type, length and range (`check_meta`). Keys this version does not know (added
by newer code, e.g. a "trust" object) load if they are well-formed JSON of bounded size.

    {"format": 1, "model": "lenet5", "model_args": {"num_classes": 10}, "dataset": "mnist",
     "class_names": [...], "metrics": {...}, "lenet_version": "...", "config": {...},
     "command": "...", "extra_state": ..., "tensor_sha256": "..."}
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, Callable

from lenet.errors import LenetError

FORMAT_VERSION = 1
HASH_KEY = "tensor_sha256"  # SHA-256 of the tensors (lenet.checkpoint.tensor_digest)
DEFAULT_NUM_CLASSES = 10  # every registered model's default

# Bounds. A last.safetensors holds about 4 KB of metadata + 250 bytes per epoch, 14 levels deep.
MAX_META_BYTES = 1 << 20
MAX_DEPTH = 64
MAX_EXTRA_BYTES = 64 << 10  # one key this version does not know, as JSON
MAX_KEY = 64  # characters of a key, a class name, a model argument's name
MAX_TEXT = 256  # characters of a model/dataset name, a version, a metric's text
MAX_COMMAND = 65536  # the `lenet train ...` command line a run was started with
MAX_CLASSES = 1000
MAX_ENTRIES = 64  # model arguments, metrics
MAX_INT = 2 ** 31 - 1  # model arguments (sizes are checked on the meta device later)

_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.S)  # a JSON string: brackets inside do not nest
_BRACKET = re.compile(r"[\[\]{}]")
_SHA256 = re.compile(r"[0-9a-f]{64}")


def nesting_depth(text: str, limit: int = MAX_DEPTH) -> int:
    """How deep JSON `text` nests, counted without parsing it (stops once past `limit`)."""
    depth = deepest = 0
    for bracket in _BRACKET.findall(_STRING.sub("", text)):
        depth += 1 if bracket in "[{" else -1
        deepest = max(deepest, depth)
        if deepest > limit:
            break
    return deepest


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not a number JSON allows")


def parse_meta(raw: str, where: Any) -> dict[str, Any]:
    """The metadata string of a checkpoint -> a checked dict, or one LenetError line."""
    size = len(raw.encode("utf-8", "surrogatepass"))
    if size > MAX_META_BYTES:
        raise LenetError(f"{where}: its lenet metadata is {size:,} bytes, more than the {MAX_META_BYTES:,} "
                         "bytes a lenet checkpoint holds")
    if nesting_depth(raw) > MAX_DEPTH:
        raise LenetError(f"{where}: its lenet metadata is nested more than {MAX_DEPTH} levels deep")
    try:
        meta = json.loads(raw, parse_constant=_refuse_constant)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, NaN, a 5,000-digit number
        raise LenetError(f"{where}: its lenet metadata is not valid JSON ({_short(exc)})") from None
    check_meta(meta, where)
    return meta


def check_meta(meta: Any, where: Any) -> None:
    """Every field's type, length and range; one LenetError line naming the first bad one."""
    if not isinstance(meta, dict) or type(meta.get("format")) is not int or meta["format"] != FORMAT_VERSION:
        raise LenetError(f"{where}: unsupported checkpoint format")
    if not isinstance(meta.get("model"), str) or not isinstance(meta.get("model_args", {}), dict):
        raise LenetError(f"{where}: its metadata does not name a model and its arguments")
    for key, value in meta.items():
        problem = FIELDS[key](value, meta) if key in FIELDS else _unknown(key, value)
        if problem:
            raise LenetError(f"{where}: metadata {key} {problem}")


# --- one check per field: None if fine, else what is wrong --------------------------------------

def _short(value: Any, limit: int = 60) -> str:
    text = " ".join(str(value).split())
    return text if len(text) <= limit else text[:limit] + "..."


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _text(limit: int, printable: bool = True) -> Callable[[Any, dict], str | None]:
    def check(v: Any, meta: dict) -> str | None:
        if not isinstance(v, str) or len(v) > limit or (printable and not v.isprintable()):
            return f"must be {'printable ' if printable else ''}text of at most {limit} characters, not {_short(repr(v))}"
        return None
    return check


def _model_args(args: dict, meta: dict) -> str | None:
    if len(args) > MAX_ENTRIES:
        return f"has {len(args)} entries, more than {MAX_ENTRIES}"
    for name, v in args.items():
        if not (name.isidentifier() and len(name) <= MAX_KEY):
            return f"has a bad argument name {_short(repr(name))}"
        if isinstance(v, str) and len(v) <= MAX_KEY and v.isprintable():
            continue
        if not (isinstance(v, bool) or (_is_number(v) and abs(v) <= MAX_INT)):
            return f"{name} must be a number, true/false or short text, not {_short(repr(v))}"
    classes = args.get("num_classes", DEFAULT_NUM_CLASSES)
    if type(classes) is not int or not 1 <= classes <= MAX_CLASSES:
        return f"num_classes must be a whole number from 1 to {MAX_CLASSES}, not {_short(repr(classes))}"
    return None


def _class_names(names: Any, meta: dict) -> str | None:
    args = meta.get("model_args", {})
    n = args.get("num_classes", DEFAULT_NUM_CLASSES) if isinstance(args, dict) else DEFAULT_NUM_CLASSES
    if not isinstance(names, list) or len(names) != n:
        return f"must be a list of {n} names (num_classes), not {_short(repr(names))}"
    bad = [x for x in names if not isinstance(x, str) or not 0 < len(x) <= MAX_KEY or not x.isprintable()]
    return f"must hold printable names of 1 to {MAX_KEY} characters, not {_short(repr(bad[0]))}" if bad else None


# Metric name endings and the range their values must be in (None is always allowed: no figure).
METRIC_RANGES = (("accuracy", 0.0, 1.0), ("loss", 0.0, math.inf), ("seconds", 0.0, math.inf),
                 ("per_second", 0.0, math.inf), ("epoch", 0, math.inf), ("epochs", 0, math.inf),
                 ("parameters", 0, math.inf), ("world_size", 1, math.inf))


def _metric(name: str, v: Any) -> str | None:
    if v is None or isinstance(v, bool) or (isinstance(v, str) and len(v) <= MAX_TEXT and v.isprintable()):
        return None
    values = v if isinstance(v, list) and len(v) <= MAX_CLASSES else [v]
    for low, high in [(lo, hi) for end, lo, hi in METRIC_RANGES if name.endswith(end)] or [(-math.inf, math.inf)]:
        whole = isinstance(low, int)  # epochs and counts are whole numbers
        if not all(_is_number(x) and low <= x <= high and (not whole or x == int(x)) for x in values):
            return f"{name} must be {'a whole number' if whole else 'a number'} from {low} to {high}, not {_short(repr(v))}"
    return None


def _metrics(metrics: Any, meta: dict) -> str | None:
    if not isinstance(metrics, dict) or len(metrics) > MAX_ENTRIES:
        return f"must be an object of at most {MAX_ENTRIES} figures, not {_short(repr(metrics))}"
    for name, v in metrics.items():
        if len(name) > MAX_KEY:
            return f"has a metric name longer than {MAX_KEY} characters"
        if problem := _metric(name, v):
            return problem
    return None


def _object(v: Any, meta: dict) -> str | None:
    return None if isinstance(v, dict) else f"must be an object, not {_short(repr(v))}"


def _state(v: Any, meta: dict) -> str | None:  # checked in full by lenet.resume
    return None if isinstance(v, (dict, list)) else f"must be an object, not {_short(repr(v))}"


def _digest(v: Any, meta: dict) -> str | None:
    return None if isinstance(v, str) and _SHA256.fullmatch(v) else "must be 64 lowercase hex digits"


def _unknown(key: str, value: Any) -> str | None:
    """A key this version does not use: kept if it is a short name with bounded JSON."""
    if len(key) > MAX_KEY or not key.isprintable():
        return f"is not a usable key name (at most {MAX_KEY} printable characters)"
    size = len(json.dumps(value))
    return f"takes {size:,} bytes, more than the {MAX_EXTRA_BYTES:,} allowed" if size > MAX_EXTRA_BYTES else None


FIELDS: dict[str, Callable[[Any, dict], str | None]] = {
    "format": lambda v, meta: None,  # checked first, in check_meta
    "model": _text(MAX_TEXT), "model_args": _model_args, "dataset": _text(MAX_TEXT),
    "class_names": _class_names, "metrics": _metrics, "lenet_version": _text(MAX_TEXT),
    "config": _object, "command": _text(MAX_COMMAND, printable=False), "extra_state": _state,
    HASH_KEY: _digest,
}
