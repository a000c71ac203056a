"""Datasets in memory: the four verified IDX files as tensors, splits, a terminal view.

    lenet data show  [--dataset D] [--index I] [--grid N --out PNG]             # load_dataset, ascii_image
    lenet train / lenet eval                                                     # load_dataset, split_indices

`load_dataset` fetches missing files through lenet.sources (the source chain), then parses
them and checks every file against the SHA-256 of the official uncompressed IDX file
(lenet.datafiles holds the specs and the checks, under both).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

# DATASETS, DatasetSpec and default_root are used by callers as lenet.data.NAME too
from lenet.datafiles import (DATASETS, HEADER, MAGIC, ROLES, SIDE, DatasetSpec, check_file_bytes,  # noqa: F401
                             default_root, fetch_command, file_kind, get_dataset_spec, raw_dir, read_file_bytes)
from lenet.errors import LenetError
from lenet.sources import fetch


@dataclass
class Dataset:
    """A whole dataset in memory: uint8 images (N, 28, 28), int64 labels (N,)."""

    name: str
    class_names: list[str]
    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor


def _parse_idx(buf: bytearray, kind: str, path: Path, fix: str) -> torch.Tensor:
    n = check_file_bytes(buf, kind, None, path, fix)
    values = np.frombuffer(buf, dtype=np.uint8, offset=HEADER[kind])  # shares buf, no copy
    if kind == "images":
        return torch.from_numpy(values.reshape(n, SIDE, SIDE))  # (N, 28, 28) uint8
    return torch.from_numpy(values.astype(np.int64))  # (N,) int64, what cross_entropy wants


def read_idx(path: Path, kind: str) -> torch.Tensor:
    """An IDX file -> uint8 (N, 28, 28) images or int64 (N,) labels, or a LenetError."""
    if kind not in MAGIC:
        raise ValueError(f"kind must be 'images' or 'labels', not {kind!r}")
    path = Path(path)
    return _parse_idx(read_file_bytes(path), kind, path, "delete it and run `lenet data fetch` again")


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
    bufs = {role: read_file_bytes(raw / spec.files[role][0]) for role in ROLES}
    t = {role: _parse_idx(bufs[role], file_kind(role), raw / spec.files[role][0], fix) for role in ROLES}
    for split in ("train", "test"):
        images, labels = f"{split}_images", f"{split}_labels"
        if len(t[images]) != len(t[labels]):
            raise LenetError(f"{raw / spec.files[labels][0]}: {len(t[labels])} labels for "
                             f"{len(t[images])} images in {spec.files[images][0]} — "
                             f"delete both and run {fetch_command(name, root)} again")
    for role in ROLES:
        check_file_bytes(bufs[role], file_kind(role), spec.files[role][1], raw / spec.files[role][0], fix)
    return Dataset(name, list(spec.class_names), t["train_images"], t["train_labels"],
                   t["test_images"], t["test_labels"])


# --- small helpers for training and the terminal ------------------------------------------------

def split_indices(n: int, val_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train_idx, val_idx): a seeded permutation of range(n) cut in two, each sorted."""
    if not 0 <= val_size < n:
        raise LenetError(f"validation size {val_size}: must be between 0 and {n - 1} "
                         f"(the training set has {n} images) — choose a smaller --val-size")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[val_size:].sort().values, perm[:val_size].sort().values


SHADES = " .:-=+*#%@"  # dark to light, one character per tenth of 0..255


def ascii_image(image: torch.Tensor, style: str = "hex") -> str:
    """(H, W) uint8 (or float in [0, 1]) -> H lines: "shades" (two characters per pixel, from
    SHADES), "numbers" (0-255, 3 wide) or "hex" (two hex digits, 0 shown as ' .')."""
    if image.dim() == 3 and image.shape[0] == 1:
        image = image[0]  # (1, H, W) -> (H, W)
    if image.dim() != 2:
        raise ValueError(f"expected one (H, W) image, got shape {tuple(image.shape)}")
    if image.is_floating_point():
        image = (image.clamp(0, 1) * 255).round()
    rows = image.to(torch.uint8).tolist()
    if style == "shades":
        return "\n".join("".join(SHADES[v * len(SHADES) // 256] * 2 for v in row).rstrip() for row in rows)
    if style == "numbers":
        return "\n".join(" ".join(f"{v:3d}" for v in row) for row in rows)
    if style != "hex":
        raise ValueError(f"style must be shades, numbers or hex, not {style!r}")
    return "\n".join("".join(f"{v:02x}" if v else " ." for v in row) for row in rows)
