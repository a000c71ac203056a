"""Data-parallel training with torch.distributed: process-group setup and teardown, the rank's
share of a batch, sums across ranks, and `lenet train --nproc N` through torchrun's launcher.

    torchrun --standalone --nproc-per-node 2 -m lenet train --preset quick
    lenet train --preset quick --nproc 2          # the same, started through torch.distributed.run

torchrun sets RANK, WORLD_SIZE, LOCAL_RANK and LOCAL_WORLD_SIZE; without them a run is one
process (world size 1) and nothing here touches torch.distributed. Gloo on CPU, NCCL on CUDA.
"""

from __future__ import annotations

import logging
import os
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch

from lenet.errors import Interrupted, LenetError



def cpu_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1

@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1

    @property
    def main(self) -> bool:
        """Rank 0: the one process that prints, shows progress and writes files."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def env_world() -> World:
    """The world torchrun describes in the environment; one process when it says nothing."""
    if not under_launcher():
        return World()
    try:
        size = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        local_size = int(os.environ.get("LOCAL_WORLD_SIZE", str(size)))
    except ValueError:
        raise LenetError("RANK / WORLD_SIZE / LOCAL_RANK in the environment are not whole numbers") from None
    if size < 1 or not 0 <= rank < size:
        raise LenetError(f"RANK {rank} / WORLD_SIZE {size} in the environment make no sense")
    return World(rank, size, local_rank, max(local_size, 1))


def under_launcher() -> bool:
    """Started by torchrun (or `lenet train --nproc`): the launcher set the rendezvous variables."""
    return "WORLD_SIZE" in os.environ and "MASTER_ADDR" in os.environ


@contextmanager
def process_group(world: World, device: torch.device) -> Iterator[None]:
    """Join the process group (gloo on CPU, NCCL on CUDA) for the block; leave it after."""
    import torch.distributed as dist

    if not world.distributed or (dist.is_available() and dist.is_initialized()):
        yield  # one process, or a caller that set the group up itself
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend, rank=world.rank, world_size=world.size)
    try:
        yield
    except BaseException:
        dist.destroy_process_group()  # this rank failed: the others may be gone, wait for none
        raise
    try:
        # Every rank waits here until all are done (rank 0 writes its files last): a rank that
        # tore its connections down while another still used them could abort the latter
        # ("terminate called without an active exception", seen once in CI).
        dist.barrier()
    finally:
        dist.destroy_process_group()


def local_slice(idx: torch.Tensor, world: World) -> torch.Tensor:
    """This rank's contiguous share of a global batch (sizes differ by at most one)."""
    if not world.distributed:
        return idx
    return torch.tensor_split(idx, world.size)[world.rank]


def all_sum(values: Sequence[float], device: torch.device, world: World) -> list[float]:
    """Element-wise sum over the ranks (float64, so counts stay exact)."""
    if not world.distributed:
        return list(values)
    import torch.distributed as dist

    t = torch.tensor(list(values), dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def all_sum_tensor(t: torch.Tensor, world: World) -> torch.Tensor:
    if world.distributed:
        import torch.distributed as dist

        dist.all_reduce(t)
    return t


def gather_states(state: torch.Tensor, world: World) -> list[torch.Tensor]:
    """Every rank's copy of `state` (same shape and dtype on every rank), in rank order."""
    if not world.distributed:
        return [state]
    import torch.distributed as dist

    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    local = state.to(device)
    out = [torch.empty_like(local) for _ in range(world.size)]
    dist.all_gather(out, local)
    return [t.cpu() for t in out]


def broadcast_module(module: torch.nn.Module, world: World) -> None:
    """Copy rank 0's parameters and buffers to every rank."""
    if not world.distributed:
        return
    import torch.distributed as dist

    with torch.no_grad():
        for t in module.state_dict().values():
            dist.broadcast(t, src=0)


def launch(argv: Sequence[str], nproc: int) -> int:
    """Run `python -m lenet ARGV` on `nproc` processes of this machine through torchrun's own
    launcher (torch.distributed.run: c10d rendezvous on a free local port). Each child sees
    WORLD_SIZE and trains; this process only waits. Returns the exit code."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    # torchrun would set 1 thread per process, with a warning; fit() gives each cores / N anyway.
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, cpu_cores() // nproc)))
    # The children say what went wrong in one line each; the launcher's own log would repeat it.
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    args = parse_args(["--standalone", "--nproc-per-node", str(nproc), "--module", "lenet"])
    # lenet's own arguments are set after parsing: torchrun's parser would read `--nproc` as an
    # abbreviation of its `--nproc-per-node`. The children keep `--nproc N` and ignore it (they
    # take N from WORLD_SIZE).
    args.training_script_args = list(argv)
    try:
        run(args)
    except ChildFailedError as exc:  # the failing rank has printed its one line already
        codes = [f.exitcode for f in exc.failures.values() if f.exitcode and f.exitcode > 0]
        return codes[0] if codes else 1
    except KeyboardInterrupt:
        raise Interrupted("interrupted; the processes saved what they had") from None
    except Exception as exc:  # the launcher's own failures (rendezvous, signals): one line
        print(f"lenet: error: torchrun launcher: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 130 if type(exc).__name__ == "SignalException" else 1
    return 0
