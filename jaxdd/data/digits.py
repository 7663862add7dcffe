"""scikit-learn's bundled 8×8 digits (UCI optdigits, 1,797 images): the offline default dataset.

The split is fixed and needs no random numbers: within each class, in the file's order, every fifth
image (positions 4, 9, 14, ...) is a test image and the others are training images. That gives
1,442 training images (per class 143 146 142 147 145 146 145 144 140 144) and 355 test images
(35 36 35 36 36 36 36 35 34 36). Pixels are integers 0..16 (pixel_max 16); the training set's mean
and std after dividing by 16 are 0.3051 and 0.3762 (`DIGITS_MEAN`, `DIGITS_STD`).
"""

from __future__ import annotations

import numpy as np

from jaxdd.data.arrays import DatasetArrays

DIGITS_MEAN = (0.3051,)
DIGITS_STD = (0.3762,)
TEST_EVERY = 5  # every fifth image of a class is a test image: an 80/20 stratified split
MIN_TRAIN_PER_CLASS = 140  # class 8: 174 images, 34 of them test


def held_out_mask(labels: np.ndarray) -> np.ndarray:
    """[N] bool: True for test images, every `TEST_EVERY`-th image of each class in the given order."""
    rank = np.empty(len(labels), np.int64)
    for label in np.unique(labels):
        rows = np.flatnonzero(labels == label)
        rank[rows] = np.arange(len(rows))
    return rank % TEST_EVERY == TEST_EVERY - 1


def load_digits(*, data_dir: str | None = None, download: bool = False) -> DatasetArrays:
    """The fixed train/test split of the digits: images [N, 8, 8, 1] uint8 in 0..16, labels [N] int64.

    `data_dir` and `download` are accepted for a uniform loader signature and ignored: the data ships
    with scikit-learn.
    """
    del data_dir, download
    from sklearn.datasets import load_digits as sklearn_digits  # imports in ~1 s: only when used

    bunch = sklearn_digits()
    images = bunch.images.astype(np.uint8)[..., None]
    labels = bunch.target.astype(np.int64)
    test = held_out_mask(labels)
    return DatasetArrays(
        train_images=images[~test],
        train_labels=labels[~test],
        test_images=images[test],
        test_labels=labels[test],
        class_names=tuple(str(name) for name in bunch.target_names),
        pixel_max=16.0,
        source="sklearn.datasets.load_digits",
    )
