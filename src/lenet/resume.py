"""Checks of a run's resume state (last.safetensors), so that `lenet train --resume` either
continues exactly where the run stopped or refuses with one line, never a traceback.

    lenet train --resume runs/x/last.safetensors     # resume_config (CLI), check_state (Run.restore)

The state is compared with what a fresh run of the same config would hold: the epoch counters
and history, both RNG states (uint8, torch's length), the optimizer's parameter groups and
per-parameter tensors (the parameters' shapes, finite), and the scheduler (same fields, at
the step the epoch implies), and each rank's RNG states of a data-parallel run (one per process).
The saved config must be an object of known, valid fields.
The saved `data_root` is not used: data comes from `--data-root` or the default root (every
file is checked by SHA-256 either way), so a file cannot choose where `--resume` fetches to.
"""

from __future__ import annotations

import math
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any, Callable

import torch

from lenet.checkpoint import load_extra_state
from lenet.config import RETIRED_FIELDS, TrainConfig, check
from lenet.errors import LenetError

STATE_KEYS = ("epoch", "best", "best_epoch", "history", "optimizer", "scheduler", "torch_rng", "gen_rng")
# Written since data-parallel training (files without them are a one-process run's): the number of
# processes, and each rank's torch and augmentation generator states, in rank order.
RANK_KEYS = ("world_size", "rank_torch_rng", "rank_aug_rng")
MAX_WORLD_SIZE = 4096
RNG_BYTES = torch.get_rng_state().numel()  # 5056: a CPU generator's Mersenne Twister state + seed + offset
HISTORY_NUMBERS = ("train_loss", "train_accuracy", "seconds", "images_per_second")  # finish() sums these


def _print_to_stderr(message: str) -> None:
    print(message, file=sys.stderr)


def saved_config(meta: dict[str, Any], path: Path | str) -> dict[str, Any]:
    """The run's config stored in `meta`, checked: an object of known fields with valid values."""
    saved = meta.get("config")
    if not isinstance(saved, dict):
        raise LenetError(f"{path}: holds no run config (an object) to resume with — start a new run")
    saved = {k: v for k, v in saved.items() if k not in RETIRED_FIELDS}  # e.g. `compile`, in runs of old
    unknown = sorted(set(saved) - {f.name for f in fields(TrainConfig)})
    if unknown:
        raise LenetError(f"{path}: its saved config has unknown fields {', '.join(map(str, unknown))[:200]}")
    try:
        check(TrainConfig(**saved))
    except LenetError as exc:
        raise LenetError(f"{path}: its saved config is invalid ({exc})") from None
    return saved


def resume_config(path: Path | str, log: Callable[[str], None] = _print_to_stderr) -> dict[str, Any]:
    """The config `lenet train --resume PATH` starts from (flags given override it)."""
    _, meta, _ = load_extra_state(path)
    saved = saved_config(meta, path)
    if saved.get("data_root"):
        log(f"lenet: {path}: not using the run's saved data_root {saved['data_root']!r}; data comes from "
            "--data-root or the default root (checked by SHA-256 either way)")
    return {**saved, "data_root": "", "out": str(Path(path).parent)}


# --- the training state -------------------------------------------------------------------------

def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def structure_problem(fresh: Any, loaded: Any, where: str) -> str | None:
    """Where `loaded` differs from `fresh` in structure (keys, lengths, kinds of values), or None."""
    if isinstance(fresh, dict):
        if not isinstance(loaded, dict) or set(loaded) != set(fresh):
            return where
        return next((p for k in fresh if (p := structure_problem(fresh[k], loaded[k], f"{where}.{k}"))), None)
    if isinstance(fresh, (list, tuple)):
        if not isinstance(loaded, (list, tuple)) or len(loaded) != len(fresh):
            return where
        return next((p for i, (a, b) in enumerate(zip(fresh, loaded))
                     if (p := structure_problem(a, b, f"{where}.{i}"))), None)
    if _number(fresh):
        return None if _number(loaded) else where
    if isinstance(fresh, torch.Tensor):
        ok = isinstance(loaded, torch.Tensor) and loaded.shape == fresh.shape and loaded.dtype == fresh.dtype
        return None if ok else where
    return None if type(loaded) is type(fresh) else where  # bool, str, None


def _rng_problem(name: str, v: Any) -> str | None:
    if isinstance(v, torch.Tensor) and v.dtype == torch.uint8 and tuple(v.shape) == (RNG_BYTES,):
        return None
    return f"{name} must be {RNG_BYTES} bytes of generator state"


def _ranks_problem(state: dict[str, Any]) -> str | None:
    present = [k for k in RANK_KEYS if k in state]
    if not present:
        return None  # saved before data-parallel training: one process
    if len(present) != len(RANK_KEYS):
        return f"missing {', '.join(k for k in RANK_KEYS if k not in state)}"
    size = state["world_size"]
    if type(size) is not int or not 1 <= size <= MAX_WORLD_SIZE:
        return f"world_size {size!r} is not a whole number from 1 to {MAX_WORLD_SIZE}"
    for key in RANK_KEYS[1:]:
        if not isinstance(state[key], list) or len(state[key]) != size:
            return f"{key} must hold one generator state per process ({size})"
        if problem := next((p for i, v in enumerate(state[key]) if (p := _rng_problem(f"{key}.{i}", v))), None):
            return problem
    return None


def _counters_problem(state: dict[str, Any], epochs: int) -> str | None:
    epoch, best_epoch, best, history = state["epoch"], state["best_epoch"], state["best"], state["history"]
    if type(epoch) is not int or not 0 <= epoch <= epochs:
        return f"epoch {epoch!r} is not a whole number from 0 to {epochs}"
    if type(best_epoch) is not int or not 0 <= best_epoch <= epoch:
        return f"best_epoch {best_epoch!r} is not a whole number from 0 to the epoch {epoch}"
    if best is not None and not (_number(best) and -1 <= best <= 1):  # -1: no epoch yet; None: no validation
        return f"best {best!r} is not an accuracy"
    if not isinstance(history, list) or len(history) != epoch:
        return f"history must be a list of {epoch} epochs"
    for row in history:
        if not isinstance(row, dict) or not all(_number(row.get(k)) and row[k] >= 0 for k in HISTORY_NUMBERS):
            return "a history row lacks its figures"
    return None


def _optimizer_problem(opt: torch.optim.Optimizer, loaded: Any) -> str | None:
    fresh = opt.state_dict()
    if not isinstance(loaded, dict) or set(loaded) != set(fresh) or not isinstance(loaded["state"], dict):
        return "optimizer is not an optimizer state"
    if where := structure_problem(fresh["param_groups"], loaded["param_groups"], "optimizer.param_groups"):
        return f"{where} differs from this run's optimizer"
    params = [p for group in opt.param_groups for p in group["params"]]
    for index, values in loaded["state"].items():
        if type(index) is not int or not 0 <= index < len(params) or not isinstance(values, dict):
            return f"optimizer state for parameter {index!r}, which this model does not have"
        for name, v in values.items():
            if v is None:
                continue
            if not isinstance(v, torch.Tensor) or not v.is_floating_point() or not torch.isfinite(v).all() \
                    or v.shape not in (torch.Size([]), params[index].shape):
                return f"optimizer {name} of parameter {index} is not a finite tensor of its shape"
    return None


def _scheduler_problem(sched: Any, loaded: Any, step: int) -> str | None:
    if where := structure_problem(sched.state_dict(), loaded, "scheduler"):
        return f"{where} differs from this run's schedule"
    if loaded["last_epoch"] != step:
        return f"scheduler is at step {loaded['last_epoch']}, its epoch ends at step {step}"
    return None


def check_state(state: Any, run: Any, path: Path | str) -> None:
    """Refuse, in one line, a training state `run` (a fresh lenet.train.Run) could not resume from."""
    if not isinstance(state, dict):
        problem = "it is not an object"
    elif missing := [k for k in STATE_KEYS if k not in state]:
        problem = f"missing {', '.join(missing)}"
    else:
        problem = (_counters_problem(state, run.cfg.epochs) or _rng_problem("torch_rng", state["torch_rng"])
                   or _rng_problem("gen_rng", state["gen_rng"]) or _ranks_problem(state)
                   or _optimizer_problem(run.opt, state["optimizer"])
                   or _scheduler_problem(run.sched, state["scheduler"], state["epoch"] * run.steps_per_epoch))
    if problem:
        raise LenetError(f"{path}: its training state is malformed ({problem}) — resume from an intact "
                         "last.safetensors, or start a new run")
