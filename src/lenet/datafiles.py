"""Dataset files: which they are (names, SHA-256), where they live, and checks of their bytes.

Files live in torchvision's layout, ROOT/<folder>/raw/<name>-ubyte, ROOT = default_root().
Every file is checked against the SHA-256 of the official uncompressed IDX file, after its
structure (a truncated or gzip-compressed file says so rather than "checksum mismatch").
Standard library only: the fetch chain (lenet.sources) and the loader (lenet.data) build on it.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from lenet.errors import LenetError

ROLES = ("train_images", "train_labels", "test_images", "test_labels")
SIDE = 28
MAGIC = {"images": 0x00000803, "labels": 0x00000801}  # IDX: ubyte data, 3 or 1 dimensions
HEADER = {"images": 16, "labels": 8}  # magic + one big-endian uint32 per dimension
ITEM_BYTES = {"images": SIDE * SIDE, "labels": 1}
MAX_ITEMS = 60_000  # the largest official split: a file declaring more is not an official file
MAX_FILE_BYTES = HEADER["images"] + MAX_ITEMS * ITEM_BYTES["images"]  # 47,040,016: MNIST's train images


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
    where = f" --data-root {root}" if root is not None and Path(root) != default_root() else ""
    return f"`lenet data fetch --dataset {name}{where}{extra}`"


def file_kind(role: str) -> str:
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


def declared_bytes(header: bytes, kind: str) -> int:
    """The file size an IDX header (its first HEADER[kind] bytes) declares, capped at the largest
    official file of that kind: where a copy or a decompression stops at the latest."""
    count = min(int.from_bytes(header[4:8], "big"), MAX_ITEMS)
    return HEADER[kind] + count * ITEM_BYTES[kind]


def refuse_file(path: Path | str, problem: str, fix: str) -> LenetError:
    return LenetError(f"{path}: {problem}" + (f" — {fix}" if fix else ""))


def check_file_bytes(buf: bytes | bytearray, kind: str, sha: str | None, path: Path | str, fix: str) -> int:
    """Structure first (a truncated file says so), then the checksum; return the item count."""
    n, problem = idx_problem(bytes(buf[:16]), len(buf), kind)
    if problem:
        raise refuse_file(path, problem, fix)
    if sha is not None and hashlib.sha256(buf).hexdigest() != sha:
        raise refuse_file(path, "checksum mismatch, not the official file", fix)
    return n


def read_file_bytes(path: Path) -> bytearray:
    """Whole file into a writable buffer (so numpy/torch can share it without a copy); a file
    larger than any dataset file is refused before anything is allocated."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size > MAX_FILE_BYTES:
                raise LenetError(f"{path}: {size:,} bytes, larger than any MNIST or Fashion-MNIST file "
                                 f"({MAX_FILE_BYTES:,} bytes at most) — delete it and run `lenet data fetch`")
            buf = bytearray(size)
            del buf[f.readinto(buf):]
    except OSError as exc:
        raise LenetError(f"{path}: cannot read ({exc.strerror}) — run `lenet data fetch`") from None
    return buf
