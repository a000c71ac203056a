"""TensorBoard event files for `lenet train --tensorboard` (the `tensorboard` extra).

    lenet train --preset quick --tensorboard     # event files in runs/quick/
    tensorboard --logdir runs                    # every run side by side

Written by rank 0 only, in the run folder: per step `step/loss`, `step/accuracy`, `step/lr`;
per epoch `epoch/train_loss`, `epoch/train_accuracy`, `epoch/val_loss`, `epoch/val_accuracy`,
`epoch/lr`, the C1 kernels as an image, a histogram of every weight and of its gradient
(those of the epoch's last step); once, the model graph. train.py calls it from three places:
`TensorBoardLogger.start` (wraps the training step), `epoch` and `close`.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lenet.errors import LenetError


class TensorBoardLogger:
    def __init__(self, out: Path, model: nn.Module, example: torch.Tensor | None = None, first_step: int = 0):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise LenetError("--tensorboard needs TensorBoard: pip install 'lenet[tensorboard]'") from None
        self.writer = SummaryWriter(log_dir=str(out))
        self.model, self.global_step = model, first_step
        if example is not None:
            self._graph(example)

    @classmethod
    def start(cls, run, step: Callable) -> tuple[TensorBoardLogger, Callable]:
        """A logger for `run` (lenet.train.Run) and its training step, wrapped to log each step."""
        size = run.spec.input_size
        example = torch.zeros(1, 1, size, size, device=next(run.model.parameters()).device)
        logger = cls(run.out, run.model, example, first_step=run.epoch * run.steps_per_epoch)

        def logged_step(x: torch.Tensor, y: torch.Tensor, *rest: Any) -> tuple[float, int]:
            loss, correct = step(x, y, *rest)
            logger.step(loss, correct / max(len(y), 1), run.opt.param_groups[0]["lr"])
            return loss, correct

        return logger, logged_step

    def _graph(self, example: torch.Tensor) -> None:
        was_training = self.model.training
        self.model.eval()  # traced without touching batch-norm statistics
        try:
            with warnings.catch_warnings():  # torch.jit.trace's deprecation notice: nothing for the user to do
                warnings.simplefilter("ignore", FutureWarning)
                self.writer.add_graph(self.model, example)
        except Exception as exc:  # noqa: BLE001 - a graph is a nicety; the run goes on without it
            self.writer.add_text("graph", f"model graph not written: {exc}")
        finally:
            self.model.train(was_training)

    def step(self, loss: float, accuracy: float, lr: float) -> None:
        self.global_step += 1
        for name, value in (("loss", loss), ("accuracy", accuracy), ("lr", lr)):
            self.writer.add_scalar(f"step/{name}", value, self.global_step)

    def epoch(self, row: dict[str, Any]) -> None:
        """One history row (lenet.train: epoch, train_loss, val_accuracy, lr, ...)."""
        epoch = int(row["epoch"])
        for key in ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr"):
            if row.get(key) is not None:
                self.writer.add_scalar(f"epoch/{key}", row[key], epoch)
        first = next((m for m in self.model.modules() if isinstance(m, nn.Conv2d)), None)
        if first is not None:
            w = first.weight.detach().float().cpu()  # (C1, 1, k, k)
            lo, hi = w.amin(dim=(1, 2, 3), keepdim=True), w.amax(dim=(1, 2, 3), keepdim=True)
            from torchvision.utils import make_grid

            grid = make_grid((w - lo) / (hi - lo).clamp_min(1e-12), nrow=len(w), padding=1, pad_value=0.5)
            self.writer.add_image("C1 kernels", torch.nn.functional.interpolate(grid[None], scale_factor=8)[0], epoch)
        for name, p in self.model.named_parameters():
            self.writer.add_histogram(f"weights/{name}", p.detach().float().cpu(), epoch)
            if p.grad is not None:
                self.writer.add_histogram(f"gradients/{name}", p.grad.detach().float().cpu(), epoch)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
