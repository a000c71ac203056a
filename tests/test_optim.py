"""lenet.optim: the same updates and rates as torch.optim's classes, without importing torch._dynamo."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch
from torch import nn

from lenet.optim import Optimizer, Schedule


def two_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    return [{"params": [p for p in model.parameters() if p.dim() > 1], "weight_decay": weight_decay},
            {"params": [p for p in model.parameters() if p.dim() <= 1], "weight_decay": 0.0}]


def small_model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 6 * 6, 4))


def train_steps(model, opt, sched, steps=12):
    gen = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x, y = torch.randn(16, 1, 8, 8, generator=gen), torch.randint(0, 4, (16,), generator=gen)
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("kind", ["adamw", "adam", "sgd"])
def test_updates_equal_torch_optim_bit_for_bit_under_a_one_cycle_schedule(kind):
    steps, lr, momentum, wd = 12, 0.05, 0.9, 1e-2
    ours_model, theirs_model = small_model(0), small_model(0)
    ours = Optimizer(kind, two_groups(ours_model, wd), lr=lr, momentum=momentum)
    ours_sched = Schedule(ours, "onecycle", steps, lr, pct_start=0.25, cycle_momentum=kind == "sgd")
    groups = two_groups(theirs_model, wd)
    if kind == "sgd":
        theirs = torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=True)
    else:
        theirs = (torch.optim.AdamW if kind == "adamw" else torch.optim.Adam)(groups, lr=lr, betas=(momentum, 0.999))
    theirs_sched = torch.optim.lr_scheduler.OneCycleLR(theirs, max_lr=lr, total_steps=steps, pct_start=0.25,
                                                       cycle_momentum=kind == "sgd")
    a = train_steps(ours_model, ours, ours_sched, steps)
    b = train_steps(theirs_model, theirs, theirs_sched, steps)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert ours.param_groups[0]["lr"] == theirs.param_groups[0]["lr"]


def test_one_cycle_rates_are_torchs_exactly_and_the_other_schedules_closely():
    model = small_model(0)
    total, lr = 50, 8e-3
    for kind, theirs_class, kw in [("onecycle", torch.optim.lr_scheduler.OneCycleLR,
                                    {"max_lr": lr, "total_steps": total, "pct_start": 0.2, "cycle_momentum": False}),
                                   ("cosine", torch.optim.lr_scheduler.CosineAnnealingLR, {"T_max": total}),
                                   ("step", torch.optim.lr_scheduler.StepLR, {"step_size": 7, "gamma": 0.3})]:
        theirs_opt = torch.optim.SGD(model.parameters(), lr=lr)
        theirs = theirs_class(theirs_opt, **kw)
        ours = Optimizer("sgd", [{"params": list(model.parameters())}], lr=lr, momentum=0.0)
        sched = Schedule(ours, kind, total, lr, pct_start=0.2, step_size=7, gamma=0.3)
        for step in range(total):
            expected, got = theirs_opt.param_groups[0]["lr"], ours.param_groups[0]["lr"]
            if kind == "onecycle":
                assert got == expected, (kind, step)
            else:
                assert math.isclose(got, expected, rel_tol=1e-9, abs_tol=1e-15), (kind, step)
            theirs_opt.step()
            theirs.step()
            sched.step()
    assert ours.param_groups[0]["lr"] < lr  # the schedules did move


def test_state_dict_round_trip_continues_identically():
    """Save after 5 steps, load into a fresh optimiser and schedule: the next 7 steps match."""
    model, twin = small_model(0), small_model(0)
    opt = Optimizer("adamw", two_groups(model, 1e-2), lr=0.05, momentum=0.9)
    sched = Schedule(opt, "onecycle", 12, 0.05)
    train_steps(model, opt, sched, 5)
    saved_opt, saved_sched = opt.state_dict(), sched.state_dict()
    assert saved_sched == {"last_epoch": 5}
    assert set(saved_opt["state"]) == set(range(len(list(model.parameters()))))
    twin.load_state_dict(model.state_dict())
    opt2 = Optimizer("adamw", two_groups(twin, 1e-2), lr=0.05, momentum=0.9)
    sched2 = Schedule(opt2, "onecycle", 12, 0.05)
    opt2.load_state_dict(saved_opt)
    sched2.load_state_dict(saved_sched)
    assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]
    a, b = train_steps(model, opt, sched, 7), train_steps(twin, opt2, sched2, 7)
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_training_imports_no_torch_dynamo(tmp_path):
    """torch._dynamo costs seconds to import; a default `fit` (AdamW, one-cycle) must not pull it in."""
    code = f"""
import sys
from tests.test_train import config, quiet
from lenet.train import fit
from pathlib import Path
fit(config(Path({str(tmp_path)!r}), epochs=1), **quiet())
print(sorted(m for m in sys.modules if m.startswith("torch._dynamo"))[:3])
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"
