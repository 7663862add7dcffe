"""`RealData`: a real dataset held on device, its training images grouped by class.

Training images are sorted by label, so class c occupies rows `class_start[c] : class_start[c] +
class_count[c]` of `train_images`. Drawing a class batch is a pure function of a PRNG key
(`sample_class_batch`), which keeps a resumed run's real batches identical to an uninterrupted one's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from jaxdd.errors import UserError

if TYPE_CHECKING:
    from jaxdd.data.zca import Whitening


@struct.dataclass
class RealData:
    """A normalised real dataset.

    Attributes:
      train_images: [N, H, W, C] float32, normalised with `mean`/`std`, sorted by label.
      train_labels: [N] int32, non-decreasing.
      class_start: [num_classes] int32, first row of each class in `train_images`.
      class_count: [num_classes] int32, number of training images of each class.
      test_images: [M, H, W, C] float32, normalised the same way.
      test_labels: [M] int32.
      name: registry name of the dataset.
      mean, std: per-channel normalisation constants (pixel values in [0, 1] before it; 0 and 1 when
        the images are ZCA-whitened instead).
      class_names: one name per class.
      split: which part of the dataset's training split `train_images` is and how it is preprocessed
        ('train': all of it, normalised; see `hold_out` and `zca.whiten_real`); teachers, experts and
        evaluation caches key on it.
      whitening: the ZCA transform the images went through (`jaxdd.data.zca`); None: mean/std only.
    """

    train_images: jax.Array
    train_labels: jax.Array
    class_start: jax.Array
    class_count: jax.Array
    test_images: jax.Array
    test_labels: jax.Array
    name: str = struct.field(pytree_node=False)
    mean: tuple[float, ...] = struct.field(pytree_node=False)
    std: tuple[float, ...] = struct.field(pytree_node=False)
    class_names: tuple[str, ...] = struct.field(pytree_node=False)
    max_class_count: int = struct.field(pytree_node=False)
    split: str = struct.field(pytree_node=False, default="train")
    whitening: Whitening | None = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.train_images.shape[1:])

    @property
    def min_class_count(self) -> int:
        return int(np.min(np.asarray(self.class_count)))


def from_arrays(
    *,
    name: str,
    train_images: np.ndarray,
    train_labels: np.ndarray,
    test_images: np.ndarray,
    test_labels: np.ndarray,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    class_names: tuple[str, ...],
    pixel_max: float = 1.0,
) -> RealData:
    """Builds `RealData` from pixel arrays in [0, 1] ([N, H, W, C] float) and integer labels.

    Normalises with `mean`/`std`, sorts the training set by label (stable, so the order within a class
    is kept) and puts everything on the default device. Integer pixels (e.g. uint8 in [0, 255]) may be
    passed as they are with `pixel_max` (255): they are scaled by 1/pixel_max while normalising, on the
    device, so a large uint8 set never exists as float32 on the host.
    """
    num_classes = len(class_names)
    mean_arr = np.asarray(mean, np.float32)
    std_arr = np.asarray(std, np.float32)
    order = np.argsort(train_labels, kind="stable")
    train_labels = np.asarray(train_labels, np.int32)[order]
    counts = np.bincount(train_labels, minlength=num_classes).astype(np.int32)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int32)
    return RealData(
        train_images=_normalise(train_images, mean_arr, std_arr, pixel_max, order),
        train_labels=jnp.asarray(train_labels),
        class_start=jnp.asarray(starts),
        class_count=jnp.asarray(counts),
        test_images=_normalise(test_images, mean_arr, std_arr, pixel_max),
        test_labels=jnp.asarray(np.asarray(test_labels, np.int32)),
        name=name,
        mean=tuple(float(m) for m in mean_arr),
        std=tuple(float(s) for s in std_arr),
        class_names=tuple(class_names),
        max_class_count=int(counts.max()),
    )


@jax.jit
def _normalise_on_device(
    images: jax.Array, mean: jax.Array, std: jax.Array, pixel_max: jax.Array
) -> jax.Array:
    return ((images.astype(jnp.float32) / pixel_max - mean) / std).astype(jnp.float32)


def _normalise(
    images: np.ndarray, mean: np.ndarray, std: np.ndarray, pixel_max: float, rows: np.ndarray | None = None
) -> jax.Array:
    """`(images[rows] / pixel_max - mean) / std` as float32 [len(rows), H, W, C] on the default device.

    The pixels travel in their own dtype (uint8: a quarter of float32) and are converted there in one
    fused pass, so the host never holds a float32 copy of a large dataset.
    """
    images = np.asarray(images)
    if rows is not None:
        images = images[rows]
    return _normalise_on_device(jnp.asarray(images), mean, std, np.float32(pixel_max))


def class_indices(real: RealData, label: jax.Array, key: jax.Array, batch_size: int) -> jax.Array:
    """Row indices of `batch_size` distinct training images of class `label`, drawn with `key`.

    Sampling without replacement under `jit`: every row of the largest class gets a uniform score,
    rows past this class's count get +inf, and the `batch_size` smallest scores win. `batch_size`
    must not exceed the class's count (validated from the config before this runs).

    Returns: [batch_size] int32.
    """
    max_count = real.max_class_count
    scores = jax.random.uniform(key, (max_count,))
    scores = jnp.where(jnp.arange(max_count) < real.class_count[label], scores, jnp.inf)
    _, offsets = jax.lax.top_k(-scores, batch_size)
    return real.class_start[label] + offsets


def sample_class_batch(real: RealData, label: jax.Array, key: jax.Array, batch_size: int) -> jax.Array:
    """`batch_size` distinct real images of class `label`: [batch_size, H, W, C], a pure function of `key`."""
    return real.train_images[class_indices(real, label, key, batch_size)]


def test_subset(real: RealData, size: int) -> RealData:
    """`real` with a fixed stratified subset of `size` test images (a reduced protocol for quick looks).

    Each class keeps ⌊size/C⌋ images, the first `size mod C` classes one more, chosen by a fixed
    generator (seed 0) independent of every run seed, so all runs and variants see the same subset.
    Raises UserError when a class has fewer test images than it must keep.
    """
    labels = np.asarray(real.test_labels)
    rng = np.random.default_rng(0)
    rows = []
    for c in range(real.num_classes):
        keep = size // real.num_classes + (1 if c < size % real.num_classes else 0)
        members = np.flatnonzero(labels == c)
        if keep > members.size:
            raise UserError(
                f"eval.test_size={size} needs {keep} test images of class {c} but {real.name!r} has "
                f"{members.size}: choose eval.test_size ≤ {members.size * real.num_classes} (0 = all)."
            )
        rows.append(np.sort(rng.choice(members, keep, replace=False)))
    rows = np.concatenate(rows)
    return real.replace(test_images=real.test_images[rows], test_labels=real.test_labels[rows])


def split_name(per_class: int, seed: int) -> str:
    """The name of the training data left after `hold_out(real, per_class, seed)` ('train' for none)."""
    return "train" if per_class == 0 else f"train-minus-val{per_class}-seed{seed}"


def hold_out(real: RealData, per_class: int, seed: int) -> tuple[RealData, jax.Array, jax.Array]:
    """(the rest, validation images [C·per_class, H, W, C], labels [C·per_class]): `per_class` training
    images of every class, drawn by numpy's generator of `seed`, held out of the training set (stratified,
    fixed by the seed, never touching the test set). The rest keeps the class-sorted layout and is named
    `split_name(per_class, seed)`."""
    labels = np.asarray(real.train_labels)
    rng = np.random.default_rng(seed)
    held = np.concatenate(
        [
            np.sort(rng.choice(np.flatnonzero(labels == c), per_class, replace=False))
            for c in range(real.num_classes)
        ]
    )
    kept = np.setdiff1d(np.arange(labels.size), held)
    counts = np.bincount(labels[kept], minlength=real.num_classes).astype(np.int32)
    rest = real.replace(
        train_images=real.train_images[kept],
        train_labels=real.train_labels[kept],
        class_start=jnp.asarray(np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int32)),
        class_count=jnp.asarray(counts),
        max_class_count=int(counts.max()),
        split=split_name(per_class, seed),
    )
    return rest, real.train_images[held], real.train_labels[held]
