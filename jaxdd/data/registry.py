"""The dataset registry: `DATASETS`, a plain dict of `DatasetInfo`, and `load`.

`dataset_info(name)` is cheap (nothing is read or imported), so config validation can check the IPC
against the smallest class and the architecture against the image shape before any work. `load` reads
the data through the entry's loader, checks it against the entry, and normalises it into `RealData`.
Normalisation constants are the reference implementations' (DC/DSA/DM); digits' are computed on its
own training split.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable

import numpy as np

from jaxdd.data import cifar, digits, mnist
from jaxdd.data.arrays import DatasetArrays
from jaxdd.data.real import RealData, from_arrays
from jaxdd.errors import UserError

Loader = Callable[..., DatasetArrays]  # loader(*, data_dir: str | None, download: bool)


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What is known about a dataset without reading it.

    Attributes:
      name: registry name.
      image_shape: (H, W, C) of every image.
      num_classes: number of classes; labels are 0..num_classes-1.
      mean, std: per-channel normalisation constants for pixels in [0, 1] (C entries each).
      min_class_count: training images in the smallest class: the largest possible IPC, and the
        largest real batch per class that can be drawn without replacement.
      loader: `loader(*, data_dir, download) -> DatasetArrays`.
    """

    name: str
    image_shape: tuple[int, int, int]
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    min_class_count: int
    loader: Loader = dataclasses.field(repr=False, compare=False)


def _lazy(module: str, function: str) -> Loader:
    """A loader that imports `jaxdd.data.<module>` on first call (keeps `import jaxdd.data` light)."""

    def loader(**kwargs) -> DatasetArrays:
        return getattr(importlib.import_module(f"jaxdd.data.{module}"), function)(**kwargs)

    loader.__name__ = function
    return loader


_IMAGENET_MEAN, _IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

DATASETS: dict[str, DatasetInfo] = {
    info.name: info
    for info in (
        DatasetInfo(
            name="digits",
            image_shape=(8, 8, 1),
            num_classes=10,
            mean=digits.DIGITS_MEAN,
            std=digits.DIGITS_STD,
            min_class_count=digits.MIN_TRAIN_PER_CLASS,
            loader=digits.load_digits,
        ),
        DatasetInfo(
            name="mnist",
            image_shape=(28, 28, 1),
            num_classes=10,
            mean=(0.1307,),
            std=(0.3081,),
            min_class_count=5421,  # class 5
            loader=mnist.load_mnist,
        ),
        DatasetInfo(
            name="fashion_mnist",
            image_shape=(28, 28, 1),
            num_classes=10,
            mean=(0.2861,),
            std=(0.3530,),
            min_class_count=6000,
            loader=mnist.load_fashion_mnist,
        ),
        DatasetInfo(
            name="cifar10",
            image_shape=(32, 32, 3),
            num_classes=10,
            mean=(0.4914, 0.4822, 0.4465),
            std=(0.2023, 0.1994, 0.2010),
            min_class_count=5000,
            loader=cifar.load_cifar10,
        ),
        DatasetInfo(
            name="cifar100",
            image_shape=(32, 32, 3),
            num_classes=100,
            mean=(0.5071, 0.4866, 0.4409),
            std=(0.2673, 0.2564, 0.2762),
            min_class_count=500,
            loader=cifar.load_cifar100,
        ),
        DatasetInfo(
            name="tiny_imagenet",
            image_shape=(64, 64, 3),
            num_classes=200,
            mean=_IMAGENET_MEAN,
            std=_IMAGENET_STD,
            min_class_count=500,
            loader=_lazy("tiny_imagenet", "load_tiny_imagenet"),  # imports tfds: only when used
        ),
    )
}


def dataset_names() -> list[str]:
    """Registered dataset names, sorted."""
    return sorted(DATASETS)


def dataset_info(name: str) -> DatasetInfo:
    """The registry entry of `name`; `UserError` listing the valid names for an unknown one. Cheap."""
    if name not in DATASETS:
        raise UserError(
            f"Unknown dataset {name!r}. Valid names: {', '.join(dataset_names())} (set --config.dataset)."
        )
    return DATASETS[name]


def check_arrays(info: DatasetInfo, arrays: DatasetArrays) -> None:
    """Raises `UserError` if the data read disagrees with what `info` promised the config validation."""
    where = f"Dataset '{info.name}' read from {arrays.source}"
    for split, images, labels in (
        ("train", arrays.train_images, arrays.train_labels),
        ("test", arrays.test_images, arrays.test_labels),
    ):
        if tuple(images.shape[1:]) != info.image_shape:
            raise UserError(f"{where}: {split} images are {images.shape[1:]}, expected {info.image_shape}.")
        if len(images) != len(labels):
            raise UserError(f"{where}: {len(images)} {split} images but {len(labels)} labels.")
        if len(labels) and (labels.min() < 0 or labels.max() >= info.num_classes):
            span = f"{labels.min()}..{labels.max()}"
            raise UserError(f"{where}: {split} labels span {span}, expected 0..{info.num_classes - 1}.")
    if len(arrays.class_names) != info.num_classes:
        raise UserError(f"{where}: {len(arrays.class_names)} class names, expected {info.num_classes}.")
    counts = np.bincount(np.asarray(arrays.train_labels, np.int64), minlength=info.num_classes)
    if counts.min() < info.min_class_count:
        raise UserError(
            f"{where}: class {int(counts.argmin())} has {int(counts.min())} training images, fewer than the "
            f"{info.min_class_count} the registry promises (IPC and batch sizes were checked against it). "
            "The files are incomplete: replace them with the full dataset."
        )


def load_info(info: DatasetInfo, *, data_dir: str | None = None, download: bool = False) -> RealData:
    """Reads, checks and normalises the dataset described by `info` (see `load`)."""
    arrays = info.loader(data_dir=data_dir, download=download)
    check_arrays(info, arrays)
    return from_arrays(
        name=info.name,
        train_images=arrays.train_images,
        train_labels=arrays.train_labels,
        test_images=arrays.test_images,
        test_labels=arrays.test_labels,
        mean=info.mean,
        std=info.std,
        class_names=arrays.class_names,
        pixel_max=arrays.pixel_max,
    )


def load(name: str, *, data_dir: str | None = None, download: bool = False) -> RealData:
    """Loads dataset `name` as `RealData`: normalised float32 images [N, H, W, C], sorted by class.

    Args:
      name: a registry name (`dataset_names()`).
      data_dir: where to look first (IDX files, a tfds data directory, Tiny ImageNet's manual zip);
        None searches the standard places (Debian's dataset folders, tfds' default directory).
      download: allow tensorflow-datasets to download and prepare a missing dataset (needs TensorFlow
        and the network; off by default, so a missing dataset fails fast with the way to get it).

    Raises: `UserError` for an unknown name, missing or corrupt data (naming the fix).
    """
    return load_info(dataset_info(name), data_dir=data_dir, download=download)
