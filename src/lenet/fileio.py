"""Writing files so that nobody ever sees half of one: temp file, fsync, rename.

The bottom floor for everything that writes (checkpoints, dataset files, pictures, run
folders, ONNX files, predict's copies); standard library only, so any module may use it.

    atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))
    write_json(run / "metrics.json", metrics)
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Any, Callable

from lenet.errors import LenetError


def atomic_write(path: Path | str, write: Callable[[str], Any]) -> None:
    """Call write(tmp_path), flush it to disk, then rename over `path`: readers (and a crash)
    never see a half-written file. An OS error becomes one LenetError line naming the file."""
    path = Path(path)
    tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))  # mode 0666 minus umask
        mode = tmp.stat().st_mode
        write(str(tmp))
        os.chmod(tmp, mode)  # some writers (safetensors) recreate the file as 0600
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as exc:
        raise LenetError(f"{path}: cannot write ({exc.strerror or exc})") from None
    finally:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass  # never created (a name too long, a folder we cannot write): the error above says so


def write_text(path: Path | str, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def write_json(path: Path | str, value: Any) -> None:
    """`value` as indented JSON plus a newline, atomically."""
    write_text(path, json.dumps(value, indent=2) + "\n")
