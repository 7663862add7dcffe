"""The synthetic set: an optimisable pytree of images and fixed labels, its initialisation and export.

Images live in the normalised space the networks see. Labels are class-major: the first `ipc` images
belong to class 0, the next `ipc` to class 1, and so on (the reference layout), so class c's images
are `images[c * ipc:(c + 1) * ipc]`.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from jaxdd.data.real import RealData, class_indices
from jaxdd.errors import UserError


@struct.dataclass
class SyntheticSet:
    """images [C*ipc, H, W, C_img] float32 (normalised) and labels [C*ipc] int32, class-major."""

    images: jax.Array
    labels: jax.Array

    @property
    def ipc(self) -> int:
        return self.images.shape[0] // self.num_classes

    @property
    def num_classes(self) -> int:
        return int(np.max(np.asarray(self.labels))) + 1

    def class_images(self, label: int) -> jax.Array:
        """The ipc images of class `label`: [ipc, H, W, C]."""
        ipc = self.ipc
        return self.images[label * ipc : (label + 1) * ipc]


def class_major_labels(num_classes: int, ipc: int) -> jax.Array:
    """[num_classes * ipc] int32: 0 repeated ipc times, then 1, ..."""
    return jnp.repeat(jnp.arange(num_classes, dtype=jnp.int32), ipc)


def init_real(real: RealData, ipc: int, key: jax.Array) -> SyntheticSet:
    """`ipc` distinct random real training images per class (also the random-real baseline)."""
    keys = jax.random.split(key, real.num_classes)
    rows = jnp.concatenate([class_indices(real, c, keys[c], ipc) for c in range(real.num_classes)])
    return SyntheticSet(images=real.train_images[rows], labels=class_major_labels(real.num_classes, ipc))


def init_noise(real: RealData, ipc: int, key: jax.Array) -> SyntheticSet:
    """Standard-normal images in the normalised space (the reference's `torch.randn` init)."""
    shape = (real.num_classes * ipc, *real.image_shape)
    return SyntheticSet(
        images=jax.random.normal(key, shape, jnp.float32), labels=class_major_labels(real.num_classes, ipc)
    )


INITS = {"real": init_real, "noise": init_noise}


def save_npz(path: str | Path, synset: SyntheticSet, *, mean, std, meta: dict | None = None) -> None:
    """Writes `images`, `labels`, `mean`, `std` (+ a JSON `meta` string) to an .npz file."""
    np.savez(
        path,
        images=np.asarray(synset.images, np.float32),
        labels=np.asarray(synset.labels, np.int32),
        mean=np.asarray(mean, np.float32),
        std=np.asarray(std, np.float32),
        meta=np.asarray(json.dumps(meta or {})),
    )


def load_npz(path: str | Path) -> tuple[SyntheticSet, dict]:
    """Reads a synthetic set written by `save_npz`; returns (set, {'mean', 'std', 'meta'})."""
    path = Path(path)
    if not path.is_file():
        raise UserError(
            f"No synthetic set at {str(path)!r}: point to a synset.npz written by a jaxdd run "
            "(runs/<name>/synset.npz), or run the distillation first."
        )
    with np.load(path) as f:
        missing = {"images", "labels"} - set(f.files)
        if missing:
            raise UserError(f"{str(path)!r} lacks {sorted(missing)}: it was not written by jaxdd's save_npz.")
        synset = SyntheticSet(images=jnp.asarray(f["images"]), labels=jnp.asarray(f["labels"], jnp.int32))
        extra = {
            "mean": tuple(f["mean"].tolist()) if "mean" in f.files else None,
            "std": tuple(f["std"].tolist()) if "std" in f.files else None,
            "meta": json.loads(str(f["meta"])) if "meta" in f.files else {},
        }
    return synset, extra
