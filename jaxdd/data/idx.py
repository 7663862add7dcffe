"""Reader for the IDX format of MNIST and Fashion-MNIST (plain or gzip-compressed).

An IDX file is a 4-byte magic number (two zero bytes, a type code – 0x08 for unsigned bytes – and the
number of dimensions), then one big-endian uint32 per dimension, then the data in C order. Images
files have magic 0x00000803 ([N, rows, cols]), label files 0x00000801 ([N]).
Format: http://yann.lecun.com/exdb/mnist/ (bottom of the page).
"""

from __future__ import annotations

import gzip
import pathlib
import zlib

import numpy as np

from jaxdd.errors import UserError

IMAGES_MAGIC = 0x00000803
LABELS_MAGIC = 0x00000801
_UBYTE = 0x08

# File stems of the two splits, as published (each may end in .gz).
SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def find_file(directory: pathlib.Path, stem: str) -> pathlib.Path | None:
    """`directory/stem.gz` or `directory/stem`, whichever exists (gzip first), else None."""
    for candidate in (directory / f"{stem}.gz", directory / stem):
        if candidate.is_file():
            return candidate
    return None


def has_idx_files(directory: pathlib.Path) -> bool:
    """Whether `directory` holds all four files of an MNIST-style dataset."""
    return all(find_file(directory, stem) for stems in SPLIT_FILES.values() for stem in stems)


def read_idx(path: pathlib.Path, *, magic: int) -> np.ndarray:
    """Reads one IDX file of unsigned bytes: [N, rows, cols] for images, [N] for labels, uint8.

    Raises `UserError` naming the file when it is not a valid IDX file with this `magic` (corrupt,
    truncated, or another kind of file).
    """
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b" or path.suffix == ".gz":  # the gzip magic, whatever the file's name
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise UserError(f"{path} is not a valid gzip file ({e}): it is corrupt or truncated.") from None
    ndim = magic & 0xFF
    header_size = 4 + 4 * ndim
    if len(raw) < header_size:
        raise UserError(f"{path} is too short ({len(raw)} bytes) to be an IDX file: it is truncated.")
    found = int.from_bytes(raw[:4], "big")
    if found != magic:
        raise UserError(
            f"{path} has IDX magic number 0x{found:08x}, expected 0x{magic:08x} "
            f"({'images' if magic == IMAGES_MAGIC else 'labels'} of unsigned bytes): it is corrupt or "
            "not the file its name says."
        )
    dims = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    expected = header_size + int(np.prod(dims))
    if len(raw) != expected:
        raise UserError(
            f"{path} declares dimensions {dims} ({expected} bytes with the header) but holds "
            f"{len(raw)} bytes: it is truncated or corrupt."
        )
    return np.frombuffer(raw, np.uint8, offset=header_size).reshape(dims)


def read_split(directory: pathlib.Path, split: str, *, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Images [N, rows, cols, 1] uint8 and labels [N] uint8 of `split` ('train' or 't10k' files).

    Checks that images and labels agree in number and that every label is below `num_classes`.
    """
    image_stem, label_stem = SPLIT_FILES[split]
    image_path, label_path = find_file(directory, image_stem), find_file(directory, label_stem)
    if image_path is None or label_path is None:
        raise UserError(f"{directory} lacks {image_stem}[.gz] or {label_stem}[.gz].")
    images = read_idx(image_path, magic=IMAGES_MAGIC)
    labels = read_idx(label_path, magic=LABELS_MAGIC)
    if len(images) != len(labels):
        raise UserError(f"{image_path} holds {len(images)} images but {label_path} {len(labels)} labels.")
    if labels.size and labels.max() >= num_classes:
        raise UserError(f"{label_path} holds label {labels.max()}, expected labels below {num_classes}.")
    return images[..., None], labels
