"""The synthetic set: an optimisable pytree of images and fixed labels, its initialisation and export.

Images live in the normalised space the networks see. Labels are class-major: the first `ipc` images
belong to class 0, the next `ipc` to class 1, and so on (the reference layout), so class c's images
are `images[c * ipc:(c + 1) * ipc]`.
"""

from __future__ import annotations

import json
import zipfile
import zlib
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


def load_npz(path: str | Path, *, info=None, ipc: int | None = None) -> tuple[SyntheticSet, dict]:
    """Reads a synthetic set written by `save_npz`; returns (set, {'mean', 'std', 'meta'}).

    Never unpickles (`allow_pickle=False`: a file could otherwise run code). The arrays are checked by
    `check_arrays` (against `info`, the dataset's `DatasetInfo`, and `ipc` where given) and a stored
    mean/std against the dataset's, before anything else uses them, so every way a file can be wrong
    is one UserError naming the file and the fix. Labels are put in class-major order (stable sort; a
    no-op for files jaxdd wrote).
    """
    path = Path(path)
    where = repr(str(path))
    if not path.is_file():
        kind = "a folder, not a file" if path.is_dir() else "not there"
        raise UserError(
            f"No synthetic set at {where} ({kind}): point to a synset.npz written by a jaxdd run "
            "(runs/<name>/synset.npz), or run the distillation first."
        )
    arrays = _read_npz(path, where)
    missing = {"images", "labels"} - set(arrays)
    if missing:
        raise UserError(f"{where} lacks {sorted(missing)}: it was not written by jaxdd's save_npz.")
    images, labels = arrays["images"], arrays["labels"]
    check_arrays(images, labels, where=where, info=info, ipc=ipc)
    extra = {
        "mean": _constants(arrays, "mean", where),
        "std": _constants(arrays, "std", where),
        "meta": _meta(arrays, where),
    }
    if info is not None:
        _check_normalisation(extra, info, where)
    order = np.argsort(labels, kind="stable")
    synset = SyntheticSet(
        images=jnp.asarray(images[order], jnp.float32), labels=jnp.asarray(labels[order], jnp.int32)
    )
    return synset, extra


_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")  # a zip with members / an empty zip


def _read_npz(path: Path, where: str) -> dict[str, np.ndarray]:
    """Every array of the .npz at `path`, read with allow_pickle=False; UserError for a file that is not
    an .npz, is damaged or holds object arrays."""
    try:
        with open(path, "rb") as file:
            magic = file.read(4)
    except OSError as error:
        raise UserError(f"{where} cannot be read ({error.strerror}): check its permissions.") from None
    if magic not in _ZIP_MAGIC:
        raise UserError(
            f"{where} is not an .npz file (a zip of .npy arrays; it starts with {magic!r}): point to a "
            "synset.npz written by jaxdd, or save the arrays with np.savez(path, images=..., labels=...)."
        )
    arrays, pickled = {}, []
    try:
        with np.load(path, allow_pickle=False) as npz:
            for name in npz.files:
                try:
                    arrays[name] = npz[name]
                except ValueError as error:
                    if "allow_pickle" not in str(error):
                        raise
                    pickled.append(name)
    except (zipfile.BadZipFile, zlib.error, EOFError, ValueError, OSError) as error:
        raise UserError(
            f"{where} is damaged ({type(error).__name__}: {error}); it may have been cut short by an "
            "interrupted write or copy: copy it again, or rerun the run that wrote it (it re-exports "
            "synset.npz)."
        ) from None
    not_arrays = [name for name, value in arrays.items() if not isinstance(value, np.ndarray)]
    if not_arrays:  # numpy hands back a member without the .npy header as raw bytes
        raise UserError(
            f"{where} is damaged: its member(s) {', '.join(not_arrays)} are not .npy arrays; copy it again, "
            "or rerun the run that wrote it (it re-exports synset.npz)."
        )
    if pickled:
        raise UserError(
            f"{where} holds object arrays ({', '.join(pickled)}), which only unpickling could read; jaxdd "
            "loads .npz files with allow_pickle=False because unpickling can run arbitrary code. Save "
            "plain numeric arrays: np.savez(path, images=np.asarray(x, np.float32), "
            "labels=np.asarray(y, np.int32))."
        )
    return arrays


def check_arrays(images: np.ndarray, labels: np.ndarray, *, where: str, info=None, ipc=None) -> None:
    """UserError unless `images` [N, H, W, C] (floating, finite) and `labels` [N] (integer) form a
    synthetic set; with `info` (a `DatasetInfo`) also of that dataset's image shape, with labels
    0..num_classes-1 covering every class equally often, and with `ipc` that many images per class.
    `where` names the set in the message."""
    named = f"{info.name!r}" if info is not None else "the dataset"
    if images.ndim != 4 or (info is not None and tuple(images.shape[1:]) != tuple(info.image_shape)):
        expected = f"[N, {', '.join(map(str, info.image_shape))}]" if info is not None else "[N, H, W, C]"
        raise UserError(
            f"{where}: images have shape {list(images.shape)}, but a set of {named} has {expected}: pass the "
            "--config.dataset the set was distilled on."
        )
    if not np.issubdtype(images.dtype, np.floating):
        raise UserError(
            f"{where}: images are {images.dtype}, not floating point: a synthetic set holds float32 images "
            "in the normalised space the networks see ((pixel in [0, 1] - mean) / std); convert them."
        )
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise UserError(
            f"{where}: labels are {labels.dtype} of shape {list(labels.shape)}; they must be one integer "
            "class index per image, [N] int32."
        )
    if not len(images):
        raise UserError(f"{where} holds no images: export a set from a run, or save at least one per class.")
    if len(images) != len(labels):
        raise UserError(f"{where}: {len(images)} images but {len(labels)} labels: give one label per image.")
    finite = np.isfinite(images).reshape(len(images), -1).all(axis=1)  # per image
    if not finite.all():
        nan, inf = int(np.isnan(images).sum()), int(np.isinf(images).sum())
        raise UserError(
            f"{where}: {nan} NaN and {inf} infinite of {images.size} pixel values (first in image "
            f"{int(np.argmin(finite))}): the distillation diverged or the file is damaged; export the set "
            "from a run that stayed finite."
        )
    if info is None:
        return
    num_classes = info.num_classes
    if labels.min() < 0 or labels.max() >= num_classes:
        raise UserError(
            f"{where}: labels span {labels.min()}..{labels.max()}, but {named} has {num_classes} classes "
            f"(labels 0..{num_classes - 1}): pass the --config.dataset the set was made for."
        )
    counts = np.bincount(labels, minlength=num_classes)
    absent = np.flatnonzero(counts == 0)
    if absent.size:
        raise UserError(
            f"{where}: no image of class {', '.join(map(str, absent))} of {named} ({num_classes} classes): "
            "a synthetic set holds images of every class."
        )
    if counts.min() != counts.max():
        raise UserError(
            f"{where}: classes hold between {counts.min()} and {counts.max()} images (class "
            f"{int(counts.argmin())}: {counts.min()}); a synthetic set holds the same number (ipc) of each."
        )
    if ipc is not None and counts[0] != ipc:
        raise UserError(
            f"{where}: {counts[0]} images per class, but ipc={ipc}: pass --config.ipc={counts[0]} (the "
            "table and the random-real baseline use it)."
        )


def _constants(arrays: dict, name: str, where: str) -> tuple[float, ...] | None:
    """The stored per-channel `mean` or `std` as floats (None when the file has none)."""
    if name not in arrays:
        return None
    value = arrays[name]
    if not (np.issubdtype(value.dtype, np.number) and value.ndim <= 1 and np.isfinite(value).all()):
        raise UserError(
            f"{where}: its {name} is {value!r}, not per-channel finite numbers: rewrite the file with the "
            f"dataset's {name} (or without it)."
        )
    return tuple(float(v) for v in np.ravel(value))


def _meta(arrays: dict, where: str) -> dict:
    if "meta" not in arrays:
        return {}
    try:
        meta = json.loads(str(arrays["meta"]))
    except ValueError as error:
        raise UserError(
            f"{where}: its meta entry is not JSON ({error}): rewrite the file with meta=json.dumps(dict) "
            "or without meta."
        ) from None
    if not isinstance(meta, dict):
        raise UserError(f"{where}: its meta entry is {meta!r}, not a JSON object: rewrite or drop it.")
    return meta


def _check_normalisation(extra: dict, info, where: str) -> None:
    """UserError if a stored mean/std is not the dataset's: the images live in another space. ZCA-whitened
    images (meta 'zca_eps', `jaxdd.data.zca`) store 0 and 1, which the whitening replaced them with."""
    whitened = extra["meta"].get("zca_eps") is not None
    for name, identity in (("mean", 0.0), ("std", 1.0)):
        stored, expected = extra[name], tuple(getattr(info, name))
        if whitened:
            expected = (identity,) * len(expected)
        if stored is None:
            continue
        if len(stored) != len(expected) or not np.allclose(stored, expected, rtol=1e-5, atol=1e-6):
            raise UserError(
                f"{where} was normalised with {name} {_shown(stored)}, but {info.name!r} uses {name} "
                f"{_shown(expected)}: it belongs to another dataset (pass that --config.dataset) or another "
                "normalisation."
            )


def _shown(values) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"
