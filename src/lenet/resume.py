"""Checks of a run's resume state (last.safetensors), so that `lenet train --resume` either
continues exactly where the run stopped or refuses with one line, never a traceback.

    lenet train --resume runs/x/last.safetensors     # read_resume (once), check_state (Run.restore)

The state is compared with what a fresh run of the same config would hold: the epoch counters
and history, both RNG states (uint8, torch's length), the optimizer's parameter groups (as many
parameters) and per-parameter tensors (the parameters' shapes, finite), the schedule's step (the
one the epoch implies), the weights' average (with --ema), and each rank's RNG states of a
data-parallel run (one per process).
The saved config must be an object of known, valid fields.
The saved `data_root` is not used: data comes from `--data-root` or the default root (every
file is checked by SHA-256 either way), so a file cannot choose where `--resume` fetches to.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable

import torch

from lenet.checkpoint import load_extra_state
from lenet.config import RETIRED_FIELDS, TrainConfig, check
from lenet.errors import LenetError
from lenet.optim import Optimizer

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


@dataclass
class Resumed:
    """A run's last.safetensors, read once: what `fit` restores and the config it resumes with."""

    path: Path
    tensors: dict[str, torch.Tensor]  # the weights of the last completed epoch
    meta: dict[str, Any]
    state: Any  # the training state, checked against the run by check_state
    config: dict[str, Any]  # the saved config, with data_root "" and out the file's folder


def read_resume(path: Path | str, log: Callable[[str], None] = _print_to_stderr) -> Resumed:
    """Read `lenet train --resume PATH`'s file; its config is what the run starts from (flags given
    override it). The saved data_root is not used (the flag or the default root is)."""
    tensors, meta, state = load_extra_state(path)
    saved = saved_config(meta, path)
    if saved.get("data_root"):
        log(f"lenet: {path}: not using the run's saved data_root {saved['data_root']!r}; data comes from "
            "--data-root or the default root (checked by SHA-256 either way)")
    config = {**saved, "data_root": "", "out": str(Path(path).parent)}
    return Resumed(Path(path), tensors, meta, state, config)


# --- the training state -------------------------------------------------------------------------

def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


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


def _optimizer_problem(opt: Optimizer, loaded: Any) -> str | None:
    """The groups must hold as many parameters as this run's; each parameter's state must be finite
    tensors of its shape (or a scalar step). Other fields (a group's rate, or what torch.optim's own
    classes stored in files of older versions) are not used: the schedule sets the rates."""
    fresh = opt.state_dict()["param_groups"]
    if not isinstance(loaded, dict) or not isinstance(loaded.get("state"), dict) \
            or not isinstance(loaded.get("param_groups"), list):
        return "optimizer is not an optimizer state"
    sizes = [len(g["params"]) if isinstance(g, dict) and isinstance(g.get("params"), list) else None
             for g in loaded["param_groups"]]
    if sizes != [len(g["params"]) for g in fresh]:
        return "optimizer.param_groups differs from this run's optimizer"
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


def _scheduler_problem(loaded: Any, step: int) -> str | None:
    """The schedule's only state is its step (torch.optim.lr_scheduler's files hold more: unused)."""
    if not isinstance(loaded, dict) or type(loaded.get("last_epoch")) is not int:
        return "scheduler has no step count"
    if loaded["last_epoch"] != step:
        return f"scheduler is at step {loaded['last_epoch']}, its epoch ends at step {step}"
    return None


def _ema_problem(ema: torch.nn.Module, loaded: Any) -> str | None:
    """With --ema: the average's tensors, each of this model's names, shapes and kinds, finite."""
    fresh = ema.state_dict()
    if not isinstance(loaded, dict) or set(loaded) != set(fresh):
        return "ema does not hold this model's averaged weights"
    for name, v in fresh.items():
        got = loaded[name]
        if not isinstance(got, torch.Tensor) or got.shape != v.shape or got.dtype != v.dtype \
                or (got.is_floating_point() and not torch.isfinite(got).all()):
            return f"ema.{name} is not a finite tensor of its shape"
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
                   or _scheduler_problem(state["scheduler"], state["epoch"] * run.steps_per_epoch)
                   or (_ema_problem(run.ema, state.get("ema")) if run.ema is not None else None))
    if problem:
        raise LenetError(f"{path}: its training state is malformed ({problem}) — resume from an intact "
                         "last.safetensors, or start a new run")
