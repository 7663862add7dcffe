"""`DatasetArrays`: what every dataset source returns before normalisation.

A source (IDX files, scikit-learn, tensorflow-datasets) only has to produce raw pixels and labels; the
registry checks them against the dataset's `DatasetInfo` and normalises them into `RealData`.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class DatasetArrays(NamedTuple):
    """Raw pixels and labels of one dataset, as read from its source.

    Attributes:
      train_images: [N, H, W, C] uint8, pixels in [0, pixel_max].
      train_labels: [N] integer labels in [0, len(class_names)).
      test_images: [M, H, W, C] uint8, pixels in [0, pixel_max].
      test_labels: [M] integer labels.
      class_names: one name per class, in label order.
      pixel_max: the value of a white pixel (255 for 8-bit images, 16 for scikit-learn's digits).
      source: where the data was read from (a path or a tfds directory), named in error messages.
    """

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    class_names: tuple[str, ...]
    pixel_max: float
    source: str

    @classmethod
    def from_splits(
        cls, splits: dict[str, tuple[np.ndarray, np.ndarray]], class_names: tuple[str, ...], source: str
    ) -> DatasetArrays:
        """8-bit arrays from `{'train': (images, labels), 'test': (images, labels)}`."""
        (train_images, train_labels), (test_images, test_labels) = splits["train"], splits["test"]
        return cls(train_images, train_labels, test_images, test_labels, class_names, 255.0, source)
