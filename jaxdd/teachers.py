"""Networks trained on the real data and cached: SRe2L's squeeze step, MetaDD's auxiliary networks.

`load_or_train_teacher(arch, real, key, options)` returns `(model, variables, test_accuracy)`: the
cached network of (dataset, architecture) when one exists, else a network trained now with
`options.protocol` (SGD with momentum and weight decay, `training`'s protocol of `evaluation`) on the
whole real training set and cached for later runs (any method, any seed).

A cache entry is the folder `<options.directory>/<dataset>/<arch>/` holding `variables/` (Orbax: the
`params` and `batch_stats` collections) and `teacher.json` (architecture, dataset, test accuracy, the
training protocol). The entry is written into a temporary folder and renamed into place once complete,
so an interrupted training or save never leaves an entry that looks cached.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import orbax.checkpoint as ocp

from jaxdd import augment, evaluation, reporting, training
from jaxdd.data.real import RealData
from jaxdd.errors import UserError, is_int
from jaxdd.models import ConvNetSpec, get_model

META_FILE = "teacher.json"
VARIABLES_DIR = "variables"
Arch = str | ConvNetSpec


def default_config() -> ml_collections.ConfigDict:
    """The `config.teachers` defaults: where teachers are cached and how a missing one is trained."""
    return ml_collections.ConfigDict(
        {
            "dir": "~/.cache/jaxdd/teachers",  # <dir>/<dataset>/<arch>/
            "train": True,  # train (and cache) a missing teacher; False: a missing one is an error
            "epochs": 20,
            "batch_size": 256,
            "lr": 0.01,
            "momentum": 0.9,
            "weight_decay": 5e-4,
            "augment": "none",  # 'none', 'dsa' (the dataset's DSA strategy, per image) or a strategy
        }
    )


@dataclasses.dataclass(frozen=True)
class TeacherOptions:
    """Where teachers live, whether a missing one may be trained, and how (lr ×0.1 at half)."""

    directory: str
    train: bool = True
    protocol: evaluation.EvalProtocol = dataclasses.field(
        default_factory=lambda: evaluation.EvalProtocol(epochs=20)
    )


class Teacher(NamedTuple):
    """A trained network: its module, `{'params', 'batch_stats'?}` and its test accuracy in [0, 1]."""

    model: nn.Module
    variables: dict
    test_accuracy: float


def options_from_config(teachers: ml_collections.ConfigDict, dataset: str) -> TeacherOptions:
    """`TeacherOptions` from `config.teachers`; 'dsa' augmentation is the dataset's DSA strategy."""
    strategy = augment.default_strategy(dataset) if teachers.augment == "dsa" else teachers.augment
    protocol = evaluation.EvalProtocol(
        epochs=int(teachers.epochs),
        batch_size=int(teachers.batch_size),
        lr=float(teachers.lr),
        momentum=float(teachers.momentum),
        weight_decay=float(teachers.weight_decay),
        augment=strategy,
    )
    return TeacherOptions(directory=teachers.dir, train=bool(teachers.train), protocol=protocol)


def as_arch(spec) -> Arch:
    """A registry name as it is; a dict / ConfigDict of ConvNet fields as a `ConvNetSpec`."""
    if isinstance(spec, ConvNetSpec | str):
        return spec
    if hasattr(spec, "to_dict"):
        spec = spec.to_dict()
    return ConvNetSpec.from_dict(dict(spec)) if isinstance(spec, Mapping) else spec


def arch_folder_name(arch: Arch) -> str:
    """A file-system-safe name: the registry name, or 'ConvNet-w128-d3-relu-batchnorm-avgpool'."""
    if isinstance(arch, str):
        return arch
    return f"ConvNet-w{arch.width}-d{arch.depth}-{arch.act}-{arch.norm}-{arch.pool}"


def teacher_dir(directory: str, dataset: str, arch) -> Path:
    """`<directory>/<dataset>/<arch>` (`~` expanded, absolute)."""
    return Path(os.path.expanduser(directory)).absolute() / dataset / arch_folder_name(as_arch(arch))


def is_cached(directory: str, dataset: str, arch) -> bool:
    """Whether a complete cache entry exists (its `teacher.json` is written last)."""
    return (teacher_dir(directory, dataset, arch) / META_FILE).is_file()


def require_cached_or_trainable(options: TeacherOptions, dataset: str, arch, *, flag: str) -> None:
    """UserError when the teacher is not cached and training it is disabled; `flag` names the switch."""
    if not options.train and not is_cached(options.directory, dataset, arch):
        folder = teacher_dir(options.directory, dataset, arch)
        raise UserError(
            f"No cached teacher {arch_folder_name(as_arch(arch))} for {dataset!r} in {folder} (expected "
            f"{folder / META_FILE}) and training it is disabled: pass {flag}=True to train and cache it "
            "(or point --config.teachers.dir at a folder that holds it)."
        )


_train_epoch = jax.jit(evaluation.train_network_epoch, static_argnums=(0, 1))
_accuracy = jax.jit(evaluation.network_accuracy, static_argnums=(0, 1))


def train_teacher(
    model: nn.Module,
    protocol: evaluation.EvalProtocol,
    real: RealData,
    key: jax.Array,
    *,
    log: Callable[[str], None] = print,
    name: str = "",
) -> tuple[dict, float]:
    """(variables, test accuracy) of `model` trained from `key` on the whole real training set: the
    network `evaluation.train_network` trains, one compiled epoch at a time so that each epoch logs a
    progress line (an epoch of ResNet18 on a CPU takes half an hour)."""
    num_images = real.train_images.shape[0]
    state, train_key = evaluation.init_network(model, protocol, key, real.train_images)
    progress = reporting.Progress(total=protocol.epochs, unit="epoch")
    for index, epoch_key in enumerate(training.epoch_keys(train_key, protocol.epochs)):
        state, loss = _train_epoch(
            model, protocol, state, real.train_images, real.train_labels, epoch_key, index
        )
        log(f"Teacher {name}: " + progress.line(index + 1, {"loss": float(loss), "images": num_images}))
    accuracy = float(_accuracy(model, protocol, state, real.test_images, real.test_labels))
    variables = {"params": state.params, **({"batch_stats": state.batch_stats} if state.batch_stats else {})}
    return variables, accuracy


def _abstract_variables(model: nn.Module, image_shape) -> dict:
    x = jnp.zeros((1, *image_shape), jnp.float32)
    return jax.eval_shape(lambda k: dict(model.init(k, x, train=False)), jax.random.key(0))


def load_teacher(folder: Path, model: nn.Module, image_shape) -> tuple[dict, dict]:
    """(variables, metadata) of the cache entry `folder` for `model`."""
    meta = json.loads((folder / META_FILE).read_text())
    abstract = _abstract_variables(model, image_shape)
    with ocp.StandardCheckpointer() as checkpointer:
        variables = checkpointer.restore(folder / VARIABLES_DIR, abstract)
    return dict(variables), meta


def save_teacher(folder: Path, variables: dict, meta: dict) -> None:
    """Writes the entry into `<folder>.tmp-<pid>` and renames it to `folder` once complete; when another
    process finished the same entry first, theirs is kept."""
    tmp = folder.with_name(f"{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(tmp / VARIABLES_DIR, variables)
        checkpointer.wait_until_finished()
    (tmp / META_FILE).write_text(json.dumps(meta, indent=2))
    if folder.exists():  # an incomplete entry (no teacher.json) or a concurrent writer's
        if (folder / META_FILE).is_file():
            shutil.rmtree(tmp)
            return
        shutil.rmtree(folder)
    tmp.rename(folder)


def load_or_train_teacher(
    arch,
    real: RealData,
    key: jax.Array,
    options: TeacherOptions,
    *,
    log: Callable[[str], None] = print,
) -> Teacher:
    """The cached teacher of (real.name, arch), or one trained now from `key` and cached.

    arch: a registry name or a ConvNet spec (dict or `ConvNetSpec`). Raises UserError when it is not
    cached and `options.train` is False.
    """
    arch = as_arch(arch)
    model = get_model(arch, num_classes=real.num_classes, image_shape=real.image_shape)
    folder = teacher_dir(options.directory, real.name, arch)
    if is_cached(options.directory, real.name, arch):
        variables, meta = load_teacher(folder, model, real.image_shape)
        accuracy = float(meta["test_accuracy"])
        log(f"Loaded teacher {arch_folder_name(arch)} from {folder} (test accuracy {100 * accuracy:.1f}%)")
        return Teacher(model, variables, accuracy)
    require_cached_or_trainable(options, real.name, arch, flag="--config.teachers.train")
    protocol = options.protocol
    log(f"Training teacher {arch_folder_name(arch)} on {real.name} ({protocol.epochs} epochs) ...")
    variables, accuracy = train_teacher(model, protocol, real, key, log=log, name=arch_folder_name(arch))
    meta = {
        "arch": arch_folder_name(arch),
        "dataset": real.name,
        "test_accuracy": accuracy,
        "protocol": dataclasses.asdict(protocol),
    }
    save_teacher(folder, variables, meta)
    log(f"Teacher {arch_folder_name(arch)}: test accuracy {100 * accuracy:.1f}%, cached in {folder}")
    return Teacher(model, variables, accuracy)


def validate(teachers: ml_collections.ConfigDict) -> None:
    """UserError for a bad `teachers.*` value; cheap."""
    for name in ("epochs", "batch_size"):
        value = teachers[name]
        if not is_int(value) or value < 1:
            raise UserError(f"teachers.{name}={value!r} must be an integer ≥ 1.")
    if not teachers.lr > 0:
        raise UserError(f"teachers.lr={teachers.lr!r} must be > 0 (default 0.01).")
    if not 0 <= teachers.momentum < 1:
        raise UserError(f"teachers.momentum={teachers.momentum!r} must lie in [0, 1) (default 0.9).")
    if not teachers.weight_decay >= 0:
        raise UserError(f"teachers.weight_decay={teachers.weight_decay!r} must be ≥ 0 (default 5e-4).")
    if not isinstance(teachers.dir, str) or not teachers.dir:
        raise UserError(f"teachers.dir={teachers.dir!r} must be a folder path, e.g. ~/.cache/jaxdd/teachers.")
    if teachers.augment not in ("none", "dsa"):
        augment.parse_strategy(teachers.augment)
