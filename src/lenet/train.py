"""Training and evaluation: the whole dataset in memory, batches by index, augmentation on
whole batches, honest validation (held out of the training set), resumable runs.

    lenet train --preset quick                       # 99%+ MNIST in seconds
    lenet train --model lenet5 --epochs 20 --out runs/paper
    lenet train --resume runs/paper/last.safetensors  # continue an interrupted run
    lenet eval --checkpoint runs/paper/model.safetensors --out runs/paper/eval

Python: `metrics = fit(TrainConfig(...))`, `evaluate(model, spec, images, labels) -> dict`.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import signal
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from lenet import __version__
from lenet.augment import AugmentConfig, augment_batch
from lenet.checkpoint import build_model, save_checkpoint
from lenet.config import TrainConfig, check, check_resumable, to_dict
from lenet.data import Dataset, load_dataset, split_indices
from lenet.distributed import (World, all_sum, all_sum_tensor, broadcast_module, cpu_cores, env_world,
                               gather_states, local_slice, process_group, under_launcher)
from lenet.errors import Interrupted, LenetError
from lenet.fileio import write_json, write_text
from lenet.models import ModelSpec, count_parameters, create_model, prepare_input
from lenet.optim import Optimizer, Schedule
from lenet.resume import Resumed, check_state, read_resume

HISTORY_FIELDS = ("epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr",
                  "seconds", "images_per_second")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        return torch.device("mps" if mps is not None and mps.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise LenetError("--device cuda: no CUDA device is available here (use --device cpu)")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise LenetError("--device mps: no Apple GPU is available here (use --device cpu)")
    return torch.device(name)


def evaluate(model: nn.Module, spec: ModelSpec, images: torch.Tensor, labels: torch.Tensor,
             batch_size: int = TrainConfig.eval_batch_size, num_classes: int | None = None,
             world: World | None = None) -> dict[str, Any]:
    """Accuracy, mean loss, per-class accuracy, confusion matrix (rows: true, cols: predicted),
    and the predicted label of every image. images: (N, 28, 28) uint8; labels: (N,).

    With a `world` of several processes each rank evaluates its own share and the confusion
    matrix and loss are summed across ranks (every image counted once); `predictions` then
    holds this rank's share only."""
    model.eval()
    device = next(model.parameters()).device
    world = world or World()
    k = num_classes or int(labels.max().item()) + 1
    n_all = len(labels)
    if world.distributed:
        images, labels = local_slice(images, world), local_slice(labels, world)
    preds, loss_sum = [], 0.0
    with torch.inference_mode():  # no autograd graph, no version counters
        for start in range(0, len(images), batch_size):
            x = prepare_input(images[start:start + batch_size], spec).to(device, memory_format=torch.channels_last)  # (b, 1, S, S)
            y = labels[start:start + batch_size].to(device)
            logits = model(x)
            loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
            preds.append(logits.argmax(1).cpu())
    pred = torch.cat(preds) if preds else torch.empty(0, dtype=torch.long)
    confusion = torch.bincount(labels * k + pred, minlength=k * k).view(k, k)
    if world.distributed:  # exact: integer counts and a float64 loss sum, no padded duplicates
        confusion = all_sum_tensor(confusion.to(device), world).cpu()
        loss_sum = all_sum([loss_sum], device, world)[0]
    per_class = confusion.diag().float() / confusion.sum(1).clamp_min(1).float()
    n = max(n_all, 1)
    correct = confusion.diag().sum().item() if world.distributed else (pred == labels).float().sum().item()
    return {"accuracy": correct / n, "loss": loss_sum / n,
            "per_class_accuracy": per_class.tolist(), "confusion_matrix": confusion.tolist(),
            "predictions": pred}


def make_optimizer(cfg: TrainConfig, model: nn.Module) -> Optimizer:
    # No weight decay on biases and norm parameters (1-D tensors): decaying them only hurts.
    decay = [p for p in model.parameters() if p.dim() > 1]
    rest = [p for p in model.parameters() if p.dim() <= 1]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": rest, "weight_decay": 0.0}]
    return Optimizer(cfg.optimizer, groups, lr=cfg.lr, momentum=cfg.momentum)


def make_scheduler(cfg: TrainConfig, opt: Optimizer, steps_per_epoch: int) -> Schedule:
    """A per-step schedule (stepped after every batch)."""
    total = cfg.epochs * steps_per_epoch
    kind = cfg.schedule
    if kind == "onecycle" and total < 4:  # fewer steps leave one-cycle a phase of length 0
        kind = "none"
    warmup = min(0.5, max(0.2, 2 / total))  # one-cycle: 20% warm-up, but at least two steps
    return Schedule(opt, kind, total, cfg.lr, pct_start=warmup, step_size=cfg.step_epochs * steps_per_epoch,
                    gamma=cfg.step_gamma, cycle_momentum=cfg.optimizer == "sgd")


@contextmanager
def sigterm_as_interrupt():
    """Let `kill` (SIGTERM) stop a run the way Ctrl-C does: cleanly, with last.safetensors kept."""
    def handler(signum, frame):
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class Run:
    """One training run's state: model, optimiser, schedule, RNG, history; saves and resumes."""

    def __init__(self, cfg: TrainConfig, data: Dataset, device: torch.device, world: World | None = None):
        self.cfg, self.data, self.device = cfg, data, device
        self.world = world = world or World()
        torch.manual_seed(cfg.seed)
        self.gen = torch.Generator().manual_seed(cfg.seed)  # shuffling + augmentation
        n_train = len(data.train_images)
        if cfg.val_size >= n_train:
            raise LenetError(f"--val-size {cfg.val_size} leaves no training images (the set has {n_train})")
        self.train_idx, self.val_idx = split_indices(n_train, cfg.val_size, cfg.seed)
        args = {"num_classes": len(data.class_names), **cfg.model_args}
        try:
            # channels-last: oneDNN's preferred layout for CPU convolutions
            self.model = create_model(cfg.model, **args).to(device, memory_format=torch.channels_last)
            self.spec = self.model.input_spec  # the input contract travels with the model
        except TypeError as exc:
            raise LenetError(f"--model-args do not fit {cfg.model}: {exc}") from None
        self.model_args = args
        self.steps_per_epoch = math.ceil(len(self.train_idx) / cfg.batch_size)
        self.net: nn.Module = self.model  # what the training step calls: the model, or its DDP wrapper
        self.aug_gen = self.gen  # one process: one stream for shuffling and augmentation, as always
        if world.distributed:
            last = len(self.train_idx) % cfg.batch_size or cfg.batch_size
            if min(cfg.batch_size, last) < world.size:
                raise LenetError(f"--batch-size {cfg.batch_size}: a step of {min(cfg.batch_size, last)} images cannot be "
                                 f"split over {world.size} processes (change --batch-size or --val-size)")
            # The shuffling (self.gen) is the same on every rank; augmentation and dropout are per rank.
            self.aug_gen = torch.Generator().manual_seed(rank_seed(cfg.seed, world.rank, 1))
            torch.manual_seed(rank_seed(cfg.seed, world.rank, 2))
            from torch.nn.parallel import DistributedDataParallel

            self.net = DistributedDataParallel(self.model, device_ids=[device.index] if device.type == "cuda" else None)
        self.opt = make_optimizer(cfg, self.model)
        self.ema = None  # with --ema: the weights' moving average (parameters and BN statistics)
        if cfg.ema:
            from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

            self.ema = AveragedModel(self.model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema), use_buffers=True)
        self.sched = make_scheduler(cfg, self.opt, self.steps_per_epoch)
        self.epoch, self.best, self.best_epoch, self.history = 0, -1.0, 0, []
        self.out = Path(cfg.out)

    @property
    def evaluated(self) -> nn.Module:
        """The model that validation selects and model.safetensors holds: the average, with --ema."""
        return self.ema.module if self.ema is not None else self.model

    # -- checkpoints ------------------------------------------------------------------
    def meta(self, metrics: dict[str, Any] | None = None) -> dict[str, Any]:
        return {"model": self.cfg.model, "model_args": self.model_args, "dataset": self.data.name,
                "class_names": list(self.data.class_names), "metrics": metrics or {},
                "lenet_version": __version__, "config": to_dict(self.cfg),
                "command": " ".join(["lenet", *sys.argv[sys.argv.index("train"):]]) if "train" in sys.argv else ""}

    def save_last(self) -> None:
        # Every rank's RNG state (a collective: all ranks call this), so that --resume on as many
        # processes continues each rank's streams; the shuffling generator is the same on all.
        rank_torch = gather_states(torch.get_rng_state(), self.world)
        rank_aug = gather_states(self.aug_gen.get_state(), self.world)
        if not self.world.main:
            return
        state = {"epoch": self.epoch, "best": self.best, "best_epoch": self.best_epoch,
                 "history": self.history, "optimizer": self.opt.state_dict(),
                 "scheduler": self.sched.state_dict(), "torch_rng": torch.get_rng_state(),
                 "gen_rng": self.gen.get_state(), "world_size": self.world.size,
                 "rank_torch_rng": rank_torch, "rank_aug_rng": rank_aug}
        if self.ema is not None:
            state["ema"] = self.ema.state_dict()
        save_checkpoint(self.out / "last.safetensors", self.model, self.meta(), extra_state=state)

    def restore(self, resumed: Resumed, log: Callable[[str], None] = lambda s: print(s, file=sys.stderr)) -> None:
        path, tensors, meta, state = resumed.path, resumed.tensors, resumed.meta, resumed.state
        if meta.get("model") != self.cfg.model or meta.get("dataset") != self.data.name:
            raise LenetError(f"{path}: was trained as {meta.get('model')} on {meta.get('dataset')}, "
                             f"not {self.cfg.model} on {self.data.name}")
        check_resumable(resumed.config, self.cfg, path)
        check_state(state, self, path)  # everything below then loads without surprises
        self.model.load_state_dict(build_model(tensors, meta, path).state_dict())
        self.opt.load_state_dict(state["optimizer"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        self.sched.load_state_dict(state["scheduler"])
        self.gen.set_state(state["gen_rng"])
        self.epoch, self.best, self.best_epoch = state["epoch"], state["best"], state["best_epoch"]
        saved_world, rank = state.get("world_size", 1), self.world.rank
        if saved_world == self.world.size:
            if self.world.distributed:
                torch.set_rng_state(state["rank_torch_rng"][rank])
                self.aug_gen.set_state(state["rank_aug_rng"][rank])
            else:
                torch.set_rng_state(state["torch_rng"])
        else:  # the shuffling continues; each rank's augmentation and dropout streams start afresh
            log(f"lenet: warning: {path}: the run used {saved_world} process(es), resuming on {self.world.size}: "
                "augmentation and dropout get new random streams, so the result differs from an uninterrupted run")
            torch.manual_seed(rank_seed(self.cfg.seed, rank, 2, self.epoch))
            if self.aug_gen is not self.gen:
                self.aug_gen.manual_seed(rank_seed(self.cfg.seed, rank, 1, self.epoch))
        self.history = state["history"]

    # -- one epoch --------------------------------------------------------------------
    def train_epoch(self, step: Callable, progress: bool) -> dict[str, float]:
        self.model.train()
        aug = AugmentConfig(self.cfg.rotate, self.cfg.scale, self.cfg.shear, self.cfg.shift,
                            self.cfg.elastic_alpha, self.cfg.elastic_sigma, self.cfg.thickness, self.cfg.flip)
        order = self.train_idx[torch.randperm(len(self.train_idx), generator=self.gen)]
        images, labels = self.data.train_images, self.data.train_labels
        loss_sum, correct, seen, start = 0.0, 0, 0, time.perf_counter()
        bar = tqdm(total=len(order), unit="img", leave=False, disable=not progress,
                   desc=f"epoch {self.epoch + 1}/{self.cfg.epochs}", file=sys.stderr)
        seen_here = 0  # this rank's images (all of them with one process)
        for i in range(0, len(order), self.cfg.batch_size):
            idx = order[i:i + self.cfg.batch_size]  # the global batch
            mine = local_slice(idx, self.world)  # (B / world size,): this rank's share
            x = images[mine].unsqueeze(1).float().div_(255)  # (b, 1, 28, 28) in [0, 1]
            if self.cfg.augment:
                x = augment_batch(x, aug, self.aug_gen)
            x = prepare_input(x, self.spec).to(self.device, memory_format=torch.channels_last)
            y = labels[mine].to(self.device)
            loss, n_correct = step(x, y, len(idx))
            loss_sum += loss * len(mine)
            correct += n_correct
            seen_here += len(mine)
            seen += len(idx)
            bar.update(len(idx))
            if bar.n % (self.cfg.batch_size * 20) < self.cfg.batch_size:
                rate = seen / (time.perf_counter() - start)
                bar.set_postfix(loss=f"{loss_sum / seen:.4f}", acc=f"{correct / seen:.4f}", img_s=f"{rate:.0f}")
        bar.close()
        if self.world.distributed:
            loss_sum, correct, seen_here = all_sum([loss_sum, correct, seen_here], self.device, self.world)
        seconds = time.perf_counter() - start
        return {"train_loss": loss_sum / seen_here, "train_accuracy": correct / seen_here, "seconds": seconds,
                "images_per_second": seen / seconds}

    def make_step(self) -> Callable:
        """The optimisation step: forward, loss, backward, optimiser and schedule; (loss, correct)."""
        world = self.world

        def step(x: torch.Tensor, y: torch.Tensor, n_global: int | None = None) -> tuple[float, int]:
            logits = self.net(x)
            loss = F.cross_entropy(logits, y, label_smoothing=self.cfg.label_smoothing)
            self.opt.zero_grad(set_to_none=True)
            if world.distributed:  # DDP averages over ranks: weigh each rank's mean by its share of the batch
                (loss * (len(y) * world.size / (n_global or len(y) * world.size))).backward()
            else:
                loss.backward()
            self.opt.step()
            self.sched.step()
            if self.ema is not None:
                self.ema.update_parameters(self.model)
            return loss.item(), (logits.argmax(1) == y).sum().item()

        return step


def rank_seed(seed: int, rank: int, stream: int, epoch: int = 0) -> int:
    """A seed of its own for each (run seed, rank, stream, epoch): reproducible, never shared."""
    return (seed * 1_000_003 + rank * 10_007 + stream * 101 + epoch * 7_919 + 1) % 2**63


def write_history(path: Path, history: list[dict[str, float]]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=HISTORY_FIELDS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(history)
    write_text(path, buf.getvalue())


def stderr_is_terminal() -> bool:
    isatty = getattr(sys.stderr, "isatty", None)  # sys.stderr may be None (pythonw) or a bare stream
    return bool(isatty and isatty())


def fit(cfg: TrainConfig, resume: str | Path | Resumed | None = None, data: Dataset | None = None,
        progress: bool = True, log: Callable[[str], None] = lambda s: print(s, file=sys.stderr),
        overwrite: bool = False) -> dict[str, Any]:
    """Train as `cfg` says; write the run folder; return metrics.json's content.

    A folder that already holds a run is refused unless `overwrite` (or `resume`): a second
    `lenet train` must not silently replace the first one's model.

    On Ctrl-C or SIGTERM the last completed epoch is already in last.safetensors; a
    LenetError tells the user how to resume. The progress bar (`progress`) is drawn only when
    stderr is a terminal: a script's log gets the one line per epoch that `log` writes.

    Started by torchrun (`lenet train --nproc N`), every process calls fit(): data parallel
    over the process group, and only rank 0 logs, shows progress and writes files.
    """
    check(cfg)
    world = env_world()
    if world.distributed or under_launcher():
        cfg = dataclasses.replace(cfg, nproc=world.size)  # config.json and --resume record what ran
    elif cfg.nproc > 1:
        raise LenetError(f"--nproc {cfg.nproc}: start it with `lenet train --nproc {cfg.nproc}` or torchrun; "
                         "fit() alone trains in this one process")
    if not world.main:
        progress, log = False, (lambda s: None)
    progress = progress and stderr_is_terminal()
    if cfg.threads:  # a config (or a resumed run's) may ask for more threads than this machine has
        torch.set_num_threads(min(cfg.threads, cpu_cores()))
        if cfg.threads > cpu_cores():
            log(f"--threads {cfg.threads}: this machine has {cpu_cores()} cores, using {cpu_cores()} threads")
    elif world.distributed:  # the cores are shared by this machine's processes
        torch.set_num_threads(max(1, cpu_cores() // world.local_size))
    device = resolve_device(cfg.device)
    if device.type == "cuda" and world.distributed:
        device = torch.device("cuda", world.local_rank % torch.cuda.device_count())
    data = data or load_dataset(cfg.dataset, Path(cfg.data_root) if cfg.data_root else None)
    with process_group(world, device):
        return _fit(cfg, resume, data, progress, log, overwrite, world, device)


def _fit(cfg: TrainConfig, resume: str | Path | Resumed | None, data: Dataset, progress: bool, log: Callable[[str], None],
         overwrite: bool, world: World, device: torch.device) -> dict[str, Any]:
    run = Run(cfg, data, device, world)
    if resume:
        resumed = resume if isinstance(resume, Resumed) else read_resume(resume, log)
        run.restore(resumed, log)
        log(f"resuming {resumed.path} after epoch {run.epoch}/{cfg.epochs}")
    elif not overwrite and all_sum([world.main and any((run.out / f).exists() for f in (  # rank 0's folder
            "model.safetensors", "last.safetensors"))], device, world)[0]:  # every rank refuses alike
        raise LenetError(f"{run.out} already holds a run: --resume it, pick another --out, or pass --overwrite")
    if world.main:
        run.out.mkdir(parents=True, exist_ok=True)
        write_json(run.out / "config.json", to_dict(cfg))
    n_params = count_parameters(run.model)
    procs = f"{world.size} processes x " if world.distributed else ""
    log(f"training {cfg.model} ({n_params:,} parameters) on {data.name}: {len(run.train_idx):,} train / "
        f"{len(run.val_idx):,} validation images, {cfg.epochs} epochs, device {device}, "
        f"{procs}{torch.get_num_threads()} threads -> {run.out}")
    val_images, val_labels = data.train_images[run.val_idx], data.train_labels[run.val_idx]
    select_images, select_labels = (data.test_images, data.test_labels) if cfg.select_on_test else (val_images, val_labels)
    step = run.make_step()
    tb = None
    if cfg.tensorboard and world.main:  # TensorBoard event files in the run folder (lenet.tblog)
        from lenet.tblog import TensorBoardLogger

        tb, step = TensorBoardLogger.start(run, step)
    total_start = time.perf_counter()
    if run.epoch == 0:
        run.save_last()  # so that even an interrupt during epoch 1 leaves a resumable file
    try:
        with sigterm_as_interrupt():
            while run.epoch < cfg.epochs:
                row = run.train_epoch(step, progress)
                run.epoch += 1
                val = evaluate(run.evaluated, run.spec, select_images, select_labels, cfg.eval_batch_size,
                               len(data.class_names), world) if len(select_labels) else None
                row = {"epoch": run.epoch, **row, "val_loss": val["loss"] if val else None,
                       "val_accuracy": val["accuracy"] if val else None,
                       "lr": run.opt.param_groups[0]["lr"]}
                run.history.append(row)
                if tb is not None:
                    tb.epoch(row)
                if val is None or val["accuracy"] > run.best:  # no validation: keep the last epoch
                    run.best, run.best_epoch = (val["accuracy"] if val else None), run.epoch
                    if world.main:
                        save_checkpoint(run.out / "model.safetensors", run.evaluated,
                                        run.meta({"best_val_accuracy": run.best, "epoch": run.epoch}))
                run.save_last()
                if world.main:
                    write_history(run.out / "history.csv", run.history)
                val_text = f"{row['val_accuracy']:.4f}" if val else "-"
                log(f"epoch {run.epoch:>3}/{cfg.epochs}  loss {row['train_loss']:.4f}  "
                    f"train {row['train_accuracy']:.4f}  val {val_text}  "
                    f"{row['images_per_second']:,.0f} img/s  {row['seconds']:.1f}s")
    except KeyboardInterrupt:
        raise Interrupted(f"interrupted after epoch {run.epoch}/{cfg.epochs}; continue with "
                         f"`lenet train --resume {run.out / 'last.safetensors'}`") from None
    finally:
        if tb is not None:
            tb.close()
    return finish(run, time.perf_counter() - total_start, n_params)


def finish(run: Run, seconds: float, n_params: int) -> dict[str, Any]:
    """Evaluate the best checkpoint on the test set once; write metrics.json and curves.png."""
    from lenet.checkpoint import load_checkpoint
    from lenet.report import plot_curves

    world = run.world
    if world.main:
        best_model, best_meta = load_checkpoint(run.out / "model.safetensors")
    else:  # rank 0 holds the file (other machines may not see it): it sends the weights
        best_model, best_meta = create_model(run.cfg.model, **run.model_args), {}
    best_model.to(run.device)
    broadcast_module(best_model, world)
    test = evaluate(best_model, run.spec, run.data.test_images, run.data.test_labels,
                    run.cfg.eval_batch_size, len(run.data.class_names), world)
    rates = [h["images_per_second"] for h in run.history]
    metrics = {"model": run.cfg.model, "dataset": run.data.name, "parameters": n_params,
               "test_accuracy": test["accuracy"], "test_loss": test["loss"],
               "best_val_accuracy": run.best, "best_epoch": run.best_epoch,
               "selected_on": ("test (leak, asked for)" if run.cfg.select_on_test else
                               "validation" if len(run.val_idx) else "last epoch (no validation split)"),
               "epochs": run.epoch, "seconds": round(sum(h["seconds"] for h in run.history), 2),
               "wall_seconds_this_session": round(seconds, 2),
               "train_images_per_second": round(sorted(rates)[len(rates) // 2], 1) if rates else 0.0,
               "seed": run.cfg.seed, "world_size": world.size}
    if not world.main:
        return metrics
    save_checkpoint(run.out / "model.safetensors", best_model,
                    {**{k: v for k, v in best_meta.items() if k != "path"}, "metrics": metrics})
    write_json(run.out / "metrics.json", metrics)
    plot_curves(run.history, run.out / "curves.png", selected_epoch=run.best_epoch,
                title=f"{run.cfg.model} on {run.data.name}: training curves; test accuracy {test['accuracy']:.2%} "
                      f"(model of epoch {run.best_epoch}, selected on {metrics['selected_on']})")
    return metrics
