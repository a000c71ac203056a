"""Data-parallel training on CPU with gloo: real torchrun processes on the synthetic dataset.

Each test starts Python processes (torchrun, `lenet train --nproc 2`); tests/distributed_site/
sitecustomize.py makes them accept the synthetic files that `synthetic_mnist_root` writes.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lenet.cli import main
from lenet.datafiles import DATASETS, ROLES
from lenet.distributed import World, process_group

SITE = Path(__file__).parent / "distributed_site"
RUN_FILES = {"config.json", "history.csv", "last.safetensors", "model.safetensors", "metrics.json", "curves.png"}


def train_args(root, out, epochs=2) -> list[str]:
    # 48 training images, global batch 16: 3 steps an epoch, 8 images per rank on 2 processes
    return ["train", "--data-root", str(root), "--model", "lenet5", "--optimizer", "sgd", "--lr", "0.05",
            "--epochs", str(epochs), "--batch-size", "16", "--val-size", "16", "--no-augment",
            "--threads", "1", "--no-progress", "--out", str(out)]


def child_env() -> dict[str, str]:
    files = {role: list(DATASETS["mnist"].files[role]) for role in ROLES}  # the fixture's synthetic files
    path = os.pathsep.join([str(SITE), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path, "LENET_TEST_MNIST_FILES": json.dumps(files), "LENET_OFFLINE": "1",
            "OMP_NUM_THREADS": "1"}


def torchrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", *args]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(cmd, cwd, timeout=120) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, cwd=cwd, env=child_env(), capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def weights(path) -> dict[str, torch.Tensor]:
    return {k: v for k, v in load_file(path).items() if k.startswith("model.")}


def assert_same_weights(a, b, atol=1e-5):
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys() and wa
    for k in wa:
        assert torch.allclose(wa[k], wb[k], atol=atol, rtol=1e-4), (k, (wa[k] - wb[k]).abs().max())


def test_two_processes_match_one_and_only_rank0_writes(synthetic_mnist_root, tmp_path, capsys):
    assert main(train_args(synthetic_mnist_root, tmp_path / "one")) == 0
    capsys.readouterr()
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    done = run(torchrun("--standalone", "--nproc-per-node", "2", "-m", "lenet",
                        *train_args(synthetic_mnist_root, "two"), "--json"), cwd)
    assert_same_weights(tmp_path / "one" / "last.safetensors", cwd / "two" / "last.safetensors")
    assert_same_weights(tmp_path / "one" / "model.safetensors", cwd / "two" / "model.safetensors")
    # rank 0 alone writes (nothing else appears under the working folder) and reports
    assert {str(p.relative_to(cwd)) for p in cwd.rglob("*") if p.is_file()} == {f"two/{f}" for f in RUN_FILES}
    assert done.stderr.count("epoch   2/2") == 1 and done.stderr.count("training lenet5") == 1
    printed = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert len(printed) == 1 and printed[0]["world_size"] == 2
    one = json.loads((tmp_path / "one" / "metrics.json").read_text())
    two = json.loads((cwd / "two" / "metrics.json").read_text())
    assert one["world_size"] == 1 and two["world_size"] == 2
    # validation and test counts summed exactly across ranks: the same accuracies as one process
    assert two["test_accuracy"] == pytest.approx(one["test_accuracy"])
    assert two["best_val_accuracy"] == pytest.approx(one["best_val_accuracy"])
    assert json.loads((cwd / "two" / "config.json").read_text())["nproc"] == 2


def test_nproc_flag_starts_torchrun(synthetic_mnist_root, tmp_path):
    done = run([sys.executable, "-m", "lenet", *train_args(synthetic_mnist_root, tmp_path / "run", epochs=1),
                "--nproc", "2"], tmp_path)
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["world_size"] == 2
    assert done.stdout.count("test accuracy") == 1


def test_two_nodes_on_localhost(synthetic_mnist_root, tmp_path):
    """Multi-machine use, as the README shows it: torchrun on each node, c10d rendezvous."""
    endpoint = f"127.0.0.1:{free_port()}"
    nodes, logs = [], [tmp_path / f"node{node}.log" for node in range(2)]
    for node in range(2):
        cmd = torchrun("--nnodes", "2", "--nproc-per-node", "1", "--rdzv-backend", "c10d",
                       "--rdzv-endpoint", endpoint, "--rdzv-id", "lenet-test",
                       "--rdzv-conf", f"is_host={'true' if node == 0 else 'false'}", "-m", "lenet",
                       *train_args(synthetic_mnist_root, tmp_path / "run", epochs=1))
        with logs[node].open("w") as log:  # files, not pipes: a node nobody reads from never blocks
            nodes.append(subprocess.Popen(cmd, cwd=tmp_path, env=child_env(), stdout=log, stderr=subprocess.STDOUT))
    deadline = time.monotonic() + 120
    while any(p.poll() is None for p in nodes) and time.monotonic() < deadline:
        time.sleep(0.2)
    for p in nodes:
        if p.poll() is None:
            p.kill()
            p.wait()
    said = [f"node {n} (exit {p.returncode}): {log.read_text()[-2000:]}" for n, (p, log) in enumerate(zip(nodes, logs))]
    assert [p.returncode for p in nodes] == [0, 0], said
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["world_size"] == 2


@pytest.mark.slow  # three torchrun launches: about 40 s on 2 busy cores
def test_killed_two_process_run_resumes_to_the_same_weights(synthetic_mnist_root, tmp_path):
    """SIGTERM to torchrun mid-run, then `--resume` on 2 processes: the uninterrupted run's weights
    (augmentation on, so each rank's random streams must come back too)."""
    epochs = 30

    def args(out):
        return [*train_args(synthetic_mnist_root, out, epochs), "--augment"]

    run(torchrun("--standalone", "--nproc-per-node", "2", "-m", "lenet", *args("whole")), tmp_path)
    history = tmp_path / "cut" / "history.csv"
    for attempt in range(3):
        proc = subprocess.Popen(torchrun("--standalone", "--nproc-per-node", "2", "-m", "lenet", *args("cut"),
                                         "--overwrite"), cwd=tmp_path, env=child_env(),
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            if history.exists() and len(history.read_text().splitlines()) >= 3:  # header + 2 epochs
                proc.send_signal(signal.SIGTERM)
                break
            time.sleep(0.005)
        _, err = proc.communicate(timeout=60)
        if proc.returncode != 0:
            break
        history.unlink()  # finished before the signal arrived: try again
    else:
        pytest.skip("the run finished each time before it could be interrupted")
    done_epochs = len(history.read_text().splitlines()) - 1
    assert 0 < done_epochs < epochs, err[-2000:]
    run(torchrun("--standalone", "--nproc-per-node", "2", "-m", "lenet", "train", "--data-root",
                 str(synthetic_mnist_root), "--resume", "cut/last.safetensors", "--no-progress"), tmp_path)
    assert_same_weights(tmp_path / "whole" / "last.safetensors", tmp_path / "cut" / "last.safetensors", atol=0)
    assert json.loads((tmp_path / "cut" / "metrics.json").read_text())["epochs"] == epochs


def test_resume_on_another_number_of_processes_warns(synthetic_mnist_root, tmp_path, capsys):
    assert main([*train_args(synthetic_mnist_root, tmp_path / "run", epochs=1)]) == 0
    saved = load_file(tmp_path / "run" / "last.safetensors")
    assert sum(k.startswith("state.") for k in saved)  # the RNG states travel with the weights
    # a 1-process run's file, resumed (nothing left to do) on 2 processes: one warning line
    done = run(torchrun("--standalone", "--nproc-per-node", "2", "-m", "lenet", "train", "--data-root",
                        str(synthetic_mnist_root), "--resume", "run/last.safetensors", "--no-progress"), tmp_path)
    warnings = [line for line in done.stderr.splitlines() if "process(es), resuming on 2" in line]
    assert len(warnings) == 1, done.stderr[-2000:]


@pytest.fixture
def recorded_group(monkeypatch) -> list[str]:
    """torch.distributed's group calls, recorded instead of made (no other process to meet)."""
    import torch.distributed as dist

    calls: list[str] = []
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda *a, **k: calls.append("init"))
    monkeypatch.setattr(dist, "barrier", lambda *a, **k: calls.append("barrier"))
    monkeypatch.setattr(dist, "destroy_process_group", lambda *a, **k: calls.append("destroy"))
    return calls


def test_ranks_meet_before_the_group_is_torn_down(recorded_group):
    """A rank that finished waits for the others (rank 0 writes files last) before it leaves:
    one that left early once made the other abort at exit on a busy machine."""
    with process_group(World(rank=1, size=2), torch.device("cpu")):
        recorded_group.append("work")
    assert recorded_group == ["init", "work", "barrier", "destroy"]


def test_a_failing_rank_leaves_without_waiting(recorded_group):
    """The others may be gone already: waiting for them would hang."""
    with pytest.raises(RuntimeError), process_group(World(rank=0, size=2), torch.device("cpu")):
        raise RuntimeError("broken")
    assert recorded_group == ["init", "destroy"]
