"""The optimiser and learning-rate schedule `fit` steps, without importing torch._dynamo.

torch.optim's optimiser classes import torch._dynamo (torch.compile's front end) the first time
one is built or stepped: about 2.5 s on this project's 2-core machine, a quarter of
`lenet train --preset quick`. `Optimizer` here keeps the parameter groups and the per-parameter
state and calls torch.optim's own functional update rules (`torch.optim.adam.adam`,
`torch.optim.sgd.sgd`), which import nothing: the arithmetic is PyTorch's, and AdamW, Adam and
SGD give the same weights as torch.optim's classes bit for bit (tests/test_optim.py checks it).
`Schedule` is the closed form of torch.optim.lr_scheduler's OneCycleLR (cosine annealing, the same
float operations, so the same rates), CosineAnnealingLR and StepLR, as a function of the step.

    opt = Optimizer("adamw", [{"params": decay, "weight_decay": 5e-4}, {"params": rest, "weight_decay": 0.0}],
                    lr=3e-3, momentum=0.9)
    sched = Schedule(opt, "onecycle", total_steps=430, max_lr=3e-3)
    loss.backward(); opt.step(); sched.step()

Both have `state_dict()` / `load_state_dict()` in torch.optim's layout ({"state": {index: {...}},
"param_groups": [...]}, {"last_epoch": step}), so `last.safetensors` files written with
torch.optim's classes still resume.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch.optim.adam import adam
from torch.optim.sgd import sgd

KINDS = ("sgd", "adam", "adamw")
BETA2, EPS = 0.999, 1e-8  # Adam's defaults
# torch.optim.lr_scheduler.OneCycleLR's defaults: start at max_lr / 25, end at start / 1e4; with SGD
# the momentum cycles the other way, 0.95 -> 0.85 -> 0.95.
DIV_FACTOR, FINAL_DIV_FACTOR = 25.0, 1e4
MAX_MOMENTUM, BASE_MOMENTUM = 0.95, 0.85


class Optimizer:
    """SGD (Nesterov where momentum > 0), Adam or AdamW over parameter groups, each a dict with
    "params" and "weight_decay"; `lr` and `momentum` (Adam's beta1) are shared and the schedule
    sets them per group."""

    def __init__(self, kind: str, groups: list[dict[str, Any]], lr: float, momentum: float):
        if kind not in KINDS:
            raise ValueError(f"unknown optimiser {kind!r}")
        self.kind, self.nesterov = kind, momentum > 0  # SGD: Nesterov momentum unless there is none
        self.param_groups = [{"params": list(g["params"]), "weight_decay": g.get("weight_decay", 0.0),
                              "lr": lr, "momentum": momentum} for g in groups]
        self.state: dict[torch.Tensor, dict[str, Any]] = {}

    def _params(self) -> list[torch.Tensor]:
        return [p for group in self.param_groups for p in group["params"]]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self._params():
            if p.grad is not None:
                if set_to_none:
                    p.grad = None
                else:
                    p.grad.zero_()

    @torch.no_grad()
    def step(self) -> None:
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            grads = [p.grad for p in params]
            if self.kind == "sgd":
                buffers = [self.state.get(p, {}).get("momentum_buffer") for p in params]
                sgd(params, grads, buffers, weight_decay=group["weight_decay"], momentum=group["momentum"],
                    lr=group["lr"], dampening=0.0, nesterov=self.nesterov, maximize=False)
                for p, buffer in zip(params, buffers):  # sgd() fills in the buffers it creates
                    self.state[p] = {"momentum_buffer": buffer}
                continue
            for p in params:  # as torch.optim.Adam's first step: a float32 step count, zero moments
                if p not in self.state:
                    self.state[p] = {"step": torch.tensor(0.0, dtype=torch.float32),
                                     "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
                                     "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format)}
            states = [self.state[p] for p in params]
            adam(params, grads, [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states], [],
                 [s["step"] for s in states], decoupled_weight_decay=self.kind == "adamw", amsgrad=False,
                 beta1=group["momentum"], beta2=BETA2, lr=group["lr"], weight_decay=group["weight_decay"],
                 eps=EPS, maximize=False)

    def state_dict(self) -> dict[str, Any]:
        """torch.optim's layout: per-parameter state by index, groups with their parameters' indices."""
        index = {p: i for i, p in enumerate(self._params())}
        groups, start = [], 0
        for group in self.param_groups:
            groups.append({**{k: v for k, v in group.items() if k != "params"},
                           "params": list(range(start, start + len(group["params"])))})
            start += len(group["params"])
        return {"state": {index[p]: dict(s) for p, s in self.state.items()}, "param_groups": groups}

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        """Per-parameter state from `saved` (checked by lenet.resume first). Its groups' rates are
        not taken: the schedule sets them from the step."""
        params = self._params()
        self.state = {}
        for i, values in saved["state"].items():
            p = params[int(i)]
            self.state[p] = {k: None if v is None else v.clone() if k == "step" else v.to(p.device, p.dtype, copy=True)
                             for k, v in values.items() if k in ("step", "exp_avg", "exp_avg_sq", "momentum_buffer")}


def annealed(start: float, end: float, pct: float) -> float:
    """Cosine from `start` (pct 0) to `end` (pct 1), as OneCycleLR computes it."""
    return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)


class Schedule:
    """The learning rate of every group (and, for one-cycle with SGD, its momentum) at each step.

    kinds: "onecycle" (warm-up over `pct_start` of the steps from max_lr / 25 to max_lr, then
    cosine down to max_lr / 25e4), "cosine" (to 0), "step" (x gamma every `step_size` steps),
    "none". `step()` after each optimiser step, as torch.optim.lr_scheduler's."""

    def __init__(self, opt: Optimizer, kind: str, total_steps: int, max_lr: float, pct_start: float = 0.3,
                 step_size: int = 1, gamma: float = 1.0, cycle_momentum: bool = False):
        self.opt, self.kind, self.total_steps = opt, kind, total_steps
        self.max_lr, self.pct_start, self.step_size, self.gamma = max_lr, pct_start, step_size, gamma
        self.cycle_momentum = cycle_momentum
        self.last_epoch = 0
        self._apply()

    def rates(self, step: int) -> tuple[float, float | None]:
        """(learning rate, momentum or None: unchanged) at `step`."""
        if self.kind == "onecycle":
            initial = self.max_lr / DIV_FACTOR
            warm_end, end = float(self.pct_start * self.total_steps) - 1, self.total_steps - 1
            if step <= warm_end:
                pct = (step - 0.0) / (warm_end - 0.0)
                lr, momentum = annealed(initial, self.max_lr, pct), annealed(MAX_MOMENTUM, BASE_MOMENTUM, pct)
            else:
                pct = (step - warm_end) / (end - warm_end)
                lr = annealed(self.max_lr, initial / FINAL_DIV_FACTOR, pct)
                momentum = annealed(BASE_MOMENTUM, MAX_MOMENTUM, pct)
            return lr, momentum if self.cycle_momentum else None
        if self.kind == "cosine":
            return self.max_lr * (1 + math.cos(math.pi * step / self.total_steps)) / 2, None
        if self.kind == "step":
            return self.max_lr * self.gamma ** (step // self.step_size), None
        return self.max_lr, None

    def _apply(self) -> None:
        lr, momentum = self.rates(self.last_epoch)
        for group in self.opt.param_groups:
            group["lr"] = lr
            if momentum is not None:
                group["momentum"] = momentum

    def step(self) -> None:
        self.last_epoch += 1
        self._apply()

    def state_dict(self) -> dict[str, Any]:
        return {"last_epoch": self.last_epoch}

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        self.last_epoch = saved["last_epoch"]
        self._apply()
