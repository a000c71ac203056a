"""Files -> model inputs on every core: decoding and preprocessing for `lenet predict`.

Reading a photo and finding the digit in it (lenet.imagefile, lenet.preprocess) is most of the
time `lenet predict` spends on a folder, and it is Python and numpy code that holds the GIL much
of the time, so it runs in worker processes, one per core (forked, on Linux: nothing to import
again; elsewhere, and for fewer than MIN_FILES files, in the main process);
the model then runs in the main process on whole batches. Results come back in input order,
and a file that fails gives its one error line and nothing else; a worker that dies (a decoder
crash) makes the remaining files run in the main process, as they did before.

    with Preparer(n_files) as prepare:
        for item, (seen, error) in prepare(items, "digits"):   # items: (shown, file, root, error)
            ...
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import sys
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch

from lenet.distributed import cpu_cores
from lenet.errors import LenetError
from lenet.imagefile import open_image
from lenet.preprocess import MODES, Preprocessed, preprocess

WINDOW = 512  # files handed to the workers ahead of the one whose result is awaited
TASK = 8  # files per task sent to a worker
MIN_FILES = 8  # fewer files are prepared in the main process (starting workers costs more)


@contextlib.contextmanager
def c_stderr_off():
    """libtiff prints what it finds wrong in a file straight to file descriptor 2, beside our
    one line per file: silence the descriptor while a file decodes (one thread per process)."""
    try:
        saved, null = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    except OSError:  # no stderr to silence
        yield
        return
    try:
        os.dup2(null, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)


def prepare_file(file: Path, shown: str, mode: str) -> tuple[Preprocessed | None, str | None]:
    """Decode and preprocess one file: (what the model will see, None) or (None, its error line).
    The image travels as a numpy array (a tensor would go through shared memory, one file
    descriptor each)."""
    try:
        with c_stderr_off():
            img = open_image(file, shown)
        seen = preprocess(img, MODES[mode])
    except Exception as exc:  # noqa: BLE001 - a bug met on one file must not sink the others
        return None, error_line(shown, exc)
    if seen.image is not None:
        seen.image = seen.image.numpy()
    return seen, None


def prepare_files(jobs: list[tuple[Path, str]], mode: str) -> list[tuple[Preprocessed | None, str | None]]:
    """prepare_file for each (file, shown name): one task for a worker."""
    return [prepare_file(file, shown, mode) for file, shown in jobs]


def error_line(shown: str, exc: Exception) -> str:
    """The one stderr line for a file that failed: a LenetError's own words, anything else as a bug."""
    if isinstance(exc, LenetError):
        return f"lenet: error: {exc}"
    why = " ".join(str(exc).split())[:160]
    return (f"lenet: error: {shown}: could not be processed ({type(exc).__name__}: {why}); "
            "this is a bug in lenet, please report it")


def _received(seen: Preprocessed | None) -> Preprocessed | None:
    if seen is not None and isinstance(seen.image, np.ndarray):
        seen.image = torch.from_numpy(seen.image)
    return seen


def _quiet_worker() -> None:
    """Ctrl-C is the main process's to handle; and no inherited, unflushed output is ever written twice."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sys.stdout = sys.stderr = open(os.devnull, "w")


class Preparer:
    """prepare(items, mode) -> (item, (Preprocessed | None, error line | None)) in input order; items
    are find_images' (shown, file, root, error) tuples, mode a preprocessing Mode's name. Uses worker
    processes where there are several cores and at least MIN_FILES files (`workers` sets their
    number instead: 1 = the main process only)."""

    def __init__(self, n_files: int, workers: int | None = None):
        n = min(workers or cpu_cores(), n_files)
        self.pool = None
        if n > 1 and (workers or n_files >= MIN_FILES) and sys.platform.startswith("linux"):  # fork: Linux only
            with contextlib.suppress(OSError, ValueError):  # a closed or broken stdout: nothing to copy either
                for stream in (sys.stdout, sys.stderr):  # the workers are forked now: nothing left to copy
                    stream.flush()
            try:
                self.pool = ProcessPoolExecutor(n, mp_context=multiprocessing.get_context("fork"),
                                                initializer=_quiet_worker)
                self.pool.submit(int).result()  # start them all now, before the model loads
            except (OSError, AssertionError, BrokenProcessPool):  # no fork here (limits, a daemon process)
                if self.pool is not None:
                    self.pool.shutdown(wait=False, cancel_futures=True)
                self.pool = None

    def __enter__(self) -> "Preparer":
        return self

    def __exit__(self, *exc) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)

    def __call__(self, items: Iterable[tuple], mode: str) -> Iterator[tuple[tuple, tuple[Preprocessed | None, str | None]]]:
        self.mode = mode
        pending: deque = deque()  # (items, their results or a worker's future of them), in input order
        group: list[tuple] = []

        def send() -> None:  # the group to a worker, TASK files at a time: fewer round trips
            if group:
                jobs = [(file, shown) for shown, file, *_ in group]
                pending.append((list(group), self.pool.submit(prepare_files, jobs, mode) if self.pool else
                                prepare_files(jobs, mode)))
                group.clear()

        for item in items:
            if item[3]:  # find_images' error: no file to read
                send()
                pending.append(([item], [(None, f"lenet: error: {item[3]}")]))
            else:
                group.append(item)
                if len(group) == TASK or self.pool is None:
                    send()
            while pending and (self.pool is None or len(pending) * TASK > WINDOW):
                yield from self._results(*pending.popleft())
        send()
        while pending:
            yield from self._results(*pending.popleft())

    def _results(self, items: list[tuple], job) -> Iterator[tuple[tuple, tuple[Preprocessed | None, str | None]]]:
        if not isinstance(job, list):
            try:
                job = job.result()
            except BrokenProcessPool:  # a worker died (a decoder crashed): the rest runs here, as before
                if self.pool is not None:
                    self.pool.shutdown(wait=False, cancel_futures=True)
                    self.pool = None
                job = prepare_files([(file, shown) for shown, file, *_ in items], self.mode)
        for item, (seen, error) in zip(items, job):
            yield item, (_received(seen), error)
