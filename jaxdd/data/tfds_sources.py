"""Datasets read through tensorflow-datasets (tfds), with or without TensorFlow.

What works without TensorFlow (tfds 4.9.10, checked in its source and here): a dataset prepared in a
random-access format (`array_record`) is read with `builder.as_data_source()`, and its `Image`
features decode with PIL (`Image.decode_example_np`); custom builders whose examples are already
encoded (PNG/JPEG bytes, or raw `Tensor` bytes) also *prepare* without TensorFlow. What needs
TensorFlow: reading the default `tfrecord` preparation (`tfds.load` / `as_dataset`), and preparing the
stock builders (their generators hand numpy images to `Image`, which encodes them with
`tf.image.encode_png`; CIFAR also reads its archive with `tf.io.gfile`).

So a source is read, in order: (1) an `array_record` preparation, without TensorFlow; (2) a `tfrecord`
preparation through `as_dataset`, when TensorFlow is importable; (3) with `download=True` and
TensorFlow, `download_and_prepare` in `array_record` format, after which (1) applies and TensorFlow is
no longer needed. Otherwise a `UserError` says exactly what to run.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import numpy as np

from jaxdd.data.arrays import DatasetArrays
from jaxdd.errors import UserError

_CHUNK = 4096  # examples decoded per `__getitems__` call: bounds the Python objects alive at once


class NotPrepared(UserError):
    """The dataset has no tfds preparation in `data_path` (other sources may still have it)."""

    def __init__(self, message: str, *, data_path: str):
        super().__init__(message)
        self.data_path = data_path


def import_tfds() -> Any:
    """Imports tensorflow_datasets, turning a missing package into a `UserError` with the fix."""
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:
        raise UserError(
            f"Reading this dataset needs tensorflow-datasets, which failed to import ({e}). Install "
            "it with `pip install tensorflow-datasets importlib_resources` (tfds 4.9.10 also needs "
            "importlib_resources)."
        ) from None
    return tfds


def tensorflow_available() -> bool:
    """Whether TensorFlow can be imported (checked without importing it: that takes seconds)."""
    return importlib.util.find_spec("tensorflow") is not None


def prepare_command(tfds_name: str, data_dir: str | None) -> str:
    """The one-line shell command that prepares `tfds_name` in array_record format (needs TensorFlow)."""
    dir_arg = f", data_dir={str(data_dir)!r}" if data_dir else ""
    return (
        'python -c "import tensorflow_datasets as tfds; '
        f"tfds.builder('{tfds_name}'{dir_arg}, file_format='array_record').download_and_prepare()\""
    )


def how_to_prepare(tfds_name: str, data_dir: str | None) -> str:
    """Instructions that make `tfds_name` readable by `load_tfds`, for error messages."""
    where = data_dir or "~/tensorflow_datasets (tfds' default; TFDS_DATA_DIR overrides it)"
    return (
        f"prepare it once with TensorFlow in tfds' array_record format (reading it afterwards needs "
        f"no TensorFlow): `pip install tensorflow-cpu` (the `jaxdd[tf]` extra), then "
        f"`{prepare_command(tfds_name, data_dir)}` (this downloads it; it lands in {where}), and pass "
        "the same directory as --config.data_dir if it is not tfds' default. With TensorFlow installed "
        "an existing tfrecord preparation is read as well."
    )


def is_prepared(builder: Any) -> bool:
    """Whether `builder` has a finished preparation on disk (without tfds' warning when there is none)."""
    return builder.data_path.exists() and builder.is_prepared()


def read_split(builder: Any, split: str, *, image_key: str, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    """Every example of `split` from an array_record preparation: images [N, H, W, C] uint8, labels [N]."""
    source = builder.as_data_source(split=split)
    shape = builder.info.features[image_key].shape
    images = np.empty((len(source), *shape), np.uint8)
    labels = np.empty((len(source),), np.int64)
    for start in range(0, len(source), _CHUNK):
        rows = list(range(start, min(start + _CHUNK, len(source))))
        for row, example in zip(rows, source.__getitems__(rows), strict=True):
            images[row] = example[image_key]
            labels[row] = example[label_key]
    return images, labels


def _read_split_with_tf(tfds: Any, builder: Any, split: str, *, image_key: str, label_key: str):
    """Every example of `split` from a tfrecord preparation, through tf.data (needs TensorFlow)."""
    batch = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1))
    return np.asarray(batch[image_key], np.uint8), np.asarray(batch[label_key], np.int64)


def _download_and_prepare(builder: Any) -> None:
    """`builder.download_and_prepare()`, a failed download reported as a `UserError`."""
    from tensorflow_datasets.core.download import download_manager, util

    try:
        builder.download_and_prepare()
    except (OSError, util.DownloadError, download_manager.NonMatchingChecksumError) as e:
        raise UserError(
            f"Downloading '{builder.name}' with tensorflow-datasets failed ({type(e).__name__}: {e}). Check "
            f"the network connection, or prepare it on a machine that has one and copy {builder.data_path}."
        ) from None


def load_tfds(
    tfds_name: str,
    *,
    data_dir: str | None = None,
    download: bool = False,
    image_key: str = "image",
    label_key: str = "label",
) -> DatasetArrays:
    """Reads the 'train' and 'test' splits of a tfds image-classification dataset.

    Args:
      tfds_name: tfds' name of the dataset ('cifar10', 'cifar100', 'mnist', 'fashion_mnist', ...).
      data_dir: tfds data directory (holding `<tfds_name>/<version>/`); None for tfds' default.
      download: when nothing is prepared, download and prepare it (needs TensorFlow and the network).
      image_key, label_key: feature names of the image ([H, W, C] uint8) and its class label.

    Returns: `DatasetArrays` with uint8 pixels (pixel_max 255) and the label feature's class names.
    Raises: `UserError` with the exact command to run, before any expensive work, when the data is
      not there in a form this environment can read.
    """
    tfds = import_tfds()
    builder = tfds.builder(tfds_name, data_dir=data_dir)
    if not is_prepared(builder):
        if not download:
            raise NotPrepared(
                f"Dataset '{tfds_name}' is not prepared in {builder.data_path} (no tfds preparation of "
                f"version {builder.version} there). To fix it, {how_to_prepare(tfds_name, data_dir)}",
                data_path=str(builder.data_path),
            )
        if not tensorflow_available():
            raise NotPrepared(
                f"Downloading '{tfds_name}' needs TensorFlow to prepare it (tfds encodes its images with "
                f"TensorFlow). To fix it, {how_to_prepare(tfds_name, data_dir)}",
                data_path=str(builder.data_path),
            )
        builder = tfds.builder(tfds_name, data_dir=data_dir, file_format="array_record")
        _download_and_prepare(builder)
    file_format = builder.info.file_format
    read_kwargs = dict(image_key=image_key, label_key=label_key)
    if file_format in tfds.core.FileFormat.with_random_access():
        splits = {split: read_split(builder, split, **read_kwargs) for split in ("train", "test")}
    elif tensorflow_available():
        splits = {
            split: _read_split_with_tf(tfds, builder, split, **read_kwargs) for split in ("train", "test")
        }
    else:
        raise UserError(
            f"Dataset '{tfds_name}' in {builder.data_path} is prepared in the {file_format.value} format, "
            "which only TensorFlow can read. Either `pip install tensorflow-cpu` (the `jaxdd[tf]` extra), "
            f"or move that directory away and prepare an array_record copy: "
            f"`{prepare_command(tfds_name, data_dir)}` (needs TensorFlow once; reading it does not)."
        )
    (train_images, train_labels), (test_images, test_labels) = splits["train"], splits["test"]
    return DatasetArrays(
        train_images=train_images,
        train_labels=train_labels,
        test_images=test_images,
        test_labels=test_labels,
        class_names=tuple(builder.info.features[label_key].names),
        pixel_max=255.0,
        source=str(builder.data_path),
    )
