"""Datasets: one registry (`DATASETS`) of real datasets, loaded as `RealData` grouped by class.

`dataset_info(name)` answers shape/class questions without reading anything; `load(name)` reads,
checks and normalises. Sources: scikit-learn's digits (offline default), MNIST/Fashion-MNIST IDX files,
CIFAR-10/100 through tensorflow-datasets, Tiny ImageNet from its official zip (a tfds builder).
"""

from jaxdd.data.real import (
    RealData,
    class_indices,
    from_arrays,
    hold_out,
    sample_class_batch,
    split_name,
    test_subset,
)
from jaxdd.data.registry import DATASETS, DatasetInfo, dataset_info, dataset_names, load

__all__ = [
    "DATASETS",
    "DatasetInfo",
    "RealData",
    "class_indices",
    "dataset_info",
    "dataset_names",
    "from_arrays",
    "hold_out",
    "load",
    "sample_class_batch",
    "split_name",
    "test_subset",
]
