"""CIFAR-10 and CIFAR-100 (Krizhevsky, 2009): the official binary archive, else tensorflow-datasets.

Lookup order: the official "binary version" archive in `data_dir` (`cifar-10-binary.tar.gz` /
`cifar-100-binary.tar.gz`, or the folder it extracts to), read with numpy – no TensorFlow, about a
second; then tfds (`tfds_sources.load_tfds`: an array_record preparation without TensorFlow, a tfrecord
one with it). tfds' own CIFAR builders read these same binary files, so both give the same images.

Binary format: records of `label_bytes` label bytes (CIFAR-10: the class; CIFAR-100: coarse, then fine
class) followed by 3,072 pixel bytes, the 1,024 red, then green, then blue values of a 32×32 image in
row-major order. Class names are one per line in the archive's meta file.
"""

from __future__ import annotations

import dataclasses
import pathlib
import tarfile

import numpy as np

from jaxdd.data import tfds_sources
from jaxdd.data.arrays import DatasetArrays
from jaxdd.errors import UserError

_PIXELS = 32 * 32 * 3


@dataclasses.dataclass(frozen=True)
class CifarArchive:
    """Layout of one official binary archive."""

    tfds_name: str
    archive: str  # file name of the .tar.gz
    folder: str  # the folder it extracts to
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    names_file: str
    label_bytes: int  # label bytes before each image; the class is the last one

    @property
    def url(self) -> str:
        return f"https://www.cs.toronto.edu/~kriz/{self.archive}"


CIFAR10 = CifarArchive(
    tfds_name="cifar10",
    archive="cifar-10-binary.tar.gz",
    folder="cifar-10-batches-bin",
    train_files=tuple(f"data_batch_{i}.bin" for i in range(1, 6)),
    test_files=("test_batch.bin",),
    names_file="batches.meta.txt",
    label_bytes=1,
)
CIFAR100 = CifarArchive(
    tfds_name="cifar100",
    archive="cifar-100-binary.tar.gz",
    folder="cifar-100-binary",
    train_files=("train.bin",),
    test_files=("test.bin",),
    names_file="fine_label_names.txt",
    label_bytes=2,
)


def decode_records(data: bytes, *, label_bytes: int, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Images [N, 32, 32, 3] uint8 and labels [N] uint8 from the bytes of one binary batch file."""
    record = label_bytes + _PIXELS
    if len(data) % record:
        raise UserError(f"{name} holds {len(data)} bytes, not a whole number of {record}-byte records.")
    rows = np.frombuffer(data, np.uint8).reshape(-1, record)
    images = rows[:, label_bytes:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), rows[:, label_bytes - 1].copy()


def _read_members(archive: CifarArchive, location: pathlib.Path) -> dict[str, bytes]:
    """The bytes of the archive's data and names files, keyed by file name, from a .tar.gz or a folder."""
    wanted = (*archive.train_files, *archive.test_files, archive.names_file)
    if location.is_dir():
        return {name: (location / name).read_bytes() for name in wanted}
    members = {}
    with tarfile.open(location, "r|gz") as tar:  # one sequential pass: seeking back re-decompresses
        for member in tar:
            folder, _, name = member.name.rpartition("/")
            if folder == archive.folder and name in wanted:
                members[name] = tar.extractfile(member).read()
    missing = [name for name in wanted if name not in members]
    if missing:
        raise KeyError(f"{archive.folder}/{missing[0]} not in the archive")
    return members


def find_archive(archive: CifarArchive, data_dir: str | None) -> pathlib.Path | None:
    """`data_dir/<folder>` (extracted) or `data_dir/<archive>.tar.gz`, whichever exists first."""
    if not data_dir:
        return None
    root = pathlib.Path(data_dir).expanduser()
    for candidate in (root / archive.folder, root / archive.archive):
        if candidate.exists():
            return candidate
    return None


def read_archive(archive: CifarArchive, location: pathlib.Path) -> DatasetArrays:
    """Both splits of an official binary archive (or its extracted folder): uint8 [N, 32, 32, 3]."""
    try:
        members = _read_members(archive, location)
    except (OSError, EOFError, KeyError, tarfile.TarError) as e:
        raise UserError(
            f"{location} is not a complete {archive.archive} ({type(e).__name__}: {e}). Download it again "
            f"from {archive.url}."
        ) from None
    splits = {}
    for split, files in (("train", archive.train_files), ("test", archive.test_files)):
        parts = [decode_records(members[f], label_bytes=archive.label_bytes, name=f) for f in files]
        splits[split] = (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
    names = tuple(line.strip() for line in members[archive.names_file].decode().splitlines() if line.strip())
    return DatasetArrays.from_splits(splits, names, str(location))


def load_cifar(
    archive: CifarArchive, *, data_dir: str | None = None, download: bool = False
) -> DatasetArrays:
    """CIFAR from its binary archive in `data_dir`, else from tfds (see the module docstring).

    Raises: `UserError` listing every way to get the data when no source has it.
    """
    location = find_archive(archive, data_dir)
    if location is not None:
        return read_archive(archive, location)
    try:
        return tfds_sources.load_tfds(archive.tfds_name, data_dir=data_dir, download=download)
    except tfds_sources.NotPrepared as e:
        searched = (
            f"{archive.folder}/ or {archive.archive} in {data_dir}" if data_dir else "no data_dir given"
        )
        raise UserError(
            f"Dataset '{archive.tfds_name}' not found: no binary archive ({searched}) and no tfds "
            f"preparation in {e.data_path}. Either, without TensorFlow: download {archive.url} (the binary "
            "version, read as it is) into a folder and pass --config.data_dir=FOLDER; or "
            f"{tfds_sources.how_to_prepare(archive.tfds_name, data_dir)}"
        ) from None


def load_cifar10(*, data_dir: str | None = None, download: bool = False) -> DatasetArrays:
    """CIFAR-10: 32×32 colour, 10 classes, 50,000 train (5,000 per class) / 10,000 test."""
    return load_cifar(CIFAR10, data_dir=data_dir, download=download)


def load_cifar100(*, data_dir: str | None = None, download: bool = False) -> DatasetArrays:
    """CIFAR-100 (fine labels): 32×32 colour, 100 classes, 50,000 train (500 per class) / 10,000 test."""
    return load_cifar(CIFAR100, data_dir=data_dir, download=download)
