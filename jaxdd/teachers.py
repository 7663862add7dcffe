"""Networks trained on the real data and cached: SRe2L's squeeze step, MetaDD's auxiliary networks.

`load_or_train_teacher(arch, real, options)` returns a `Teacher`: the cached network trained exactly as
`options` says, when one exists, else a network trained now (from `purpose_key(options.seed, 'teacher')`,
with `options.protocol`: SGD with momentum and weight decay, `evaluation`'s protocol) on the whole real
training set and cached for later runs (any method, any distillation seed).

A cache entry is keyed by everything that makes the network what it is (`cache_key`): dataset, split,
architecture, the model code's version (`MODEL_CODE_VERSION`) and parameter shapes, the training protocol
and the teacher seed. It is the folder `<options.directory>/<dataset>/<arch>/<hash of the key>/` holding
`variables/` (Orbax: the `params` and `batch_stats` collections) and `teacher.json` (the key itself, the
test accuracy). A teacher trained another way lives in another folder and is never reused in its place.
The entry is written into a temporary folder and renamed into place once complete, so an interrupted
training or save never leaves an entry that looks cached; an entry that cannot be read is named, set
aside as `<hash>.corrupt` and retrained (or refused with its path when training is off).
"""

from __future__ import annotations

import dataclasses
import hashlib
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

from jaxdd import augment, eval_settings, evaluation, reporting, training
from jaxdd.data.real import RealData
from jaxdd.errors import UserError, require, require_int
from jaxdd.models import ConvNetSpec, ConvOptions, get_model
from jaxdd.seeding import purpose_key
from jaxdd.settings import from_section, section_config

META_FILE = "teacher.json"
VARIABLES_DIR = "variables"
# Bump when a change to jaxdd.models or jaxdd.training alters what a network of the same name computes or
# how it is initialised or trained: cached teachers of earlier versions are then retrained, not reused.
MODEL_CODE_VERSION = 1
# The part of the real data a teacher is trained on by default: the whole training split (a validation
# hold-out leaves another, `RealData.split`).
TRAIN_SPLIT = "train"
Arch = str | ConvNetSpec


@dataclasses.dataclass(frozen=True)
class TeacherSettings:
    """`config.teachers` read once: where teachers are cached and how a missing one is trained (as
    `eval_settings.EvalProtocol`, lr ×0.1 at half, with its defaults but `epochs`)."""

    dir: str = "~/.cache/jaxdd/teachers"  # <dir>/<dataset>/<arch>/
    train: bool = True  # train (and cache) a missing teacher; False: a missing one is an error
    epochs: int = 20
    batch_size: int = eval_settings.EvalProtocol.batch_size
    lr: float = eval_settings.EvalProtocol.lr
    momentum: float = eval_settings.EvalProtocol.momentum
    weight_decay: float = eval_settings.EvalProtocol.weight_decay
    augment: str = "none"  # 'none', 'dsa' (the dataset's DSA strategy, per image) or a strategy
    # the teacher's training key is purpose_key(seed, 'teacher'): one teacher serves every distillation
    # seed, as in SRe2L and MetaDD
    seed: int = 0

    def __post_init__(self):
        eval_settings.check_training_keys(self, "teachers", source="default")
        require(
            isinstance(self.dir, str) and bool(self.dir),
            f"teachers.dir={self.dir!r} must be a folder path, e.g. ~/.cache/jaxdd/teachers.",
        )
        require_int("teachers.seed", self.seed, minimum=0, note="default 0")
        if self.augment not in ("none", "dsa"):
            augment.parse_strategy(self.augment)


def default_config() -> ml_collections.ConfigDict:
    """The `config.teachers` defaults: `TeacherSettings`'."""
    return section_config(TeacherSettings)


def options_from_section(section, dataset: str, *, conv: ConvOptions = ConvOptions()) -> TeacherOptions:
    """`config.teachers` (a `ConfigDict`, or a dict read back) read once, each key checked
    (`TeacherSettings`), as the `TeacherOptions` of `dataset` ('dsa' augmentation is its DSA strategy);
    `conv`: the run's `config.conv`, for the teachers it trains or loads."""
    settings = from_section(TeacherSettings, section)
    strategy = augment.resolve_strategy(settings.augment, dataset)
    protocol = from_section(eval_settings.EvalProtocol, dataclasses.asdict(settings), augment=strategy)
    return TeacherOptions(
        settings.dir, train=settings.train, protocol=protocol, seed=settings.seed, conv=conv
    )


@dataclasses.dataclass(frozen=True)
class TeacherOptions:
    """Where teachers live, whether a missing one may be trained, and how (lr ×0.1 at half, from
    `purpose_key(seed, 'teacher')`); `conv`: how the teachers' convolutions are computed (the run's
    `config.conv`), which decides the speed, not the network: it is not part of the cache key."""

    directory: str
    train: bool = True
    protocol: eval_settings.EvalProtocol = dataclasses.field(
        default_factory=lambda: eval_settings.EvalProtocol(epochs=TeacherSettings.epochs)
    )
    seed: int = 0
    conv: ConvOptions = ConvOptions()


class Teacher(NamedTuple):
    """A trained network: its module, `{'params', 'batch_stats'?}`, its test accuracy in [0, 1] and the
    record of how it was trained."""

    model: nn.Module
    variables: dict
    test_accuracy: float
    meta: dict  # the cache entry's teacher.json: its `key` (how it was trained) and test accuracy


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


def arch_dir(directory: str, dataset: str, arch) -> Path:
    """`<directory>/<dataset>/<arch>` (`~` expanded, absolute): the entries of every protocol."""
    return Path(os.path.expanduser(directory)).absolute() / dataset / arch_folder_name(as_arch(arch))


def cache_key(
    options: TeacherOptions, dataset: str, arch, image_shape, num_classes: int, split: str = TRAIN_SPLIT
) -> dict:
    """Everything that decides the trained network (JSON): two teachers with the same key are the same.

    The parameter shapes stand in for the architecture's code beside `MODEL_CODE_VERSION`; computing
    them traces the model abstractly (no data, no compilation).
    """
    arch = as_arch(arch)
    model = get_model(arch, num_classes=num_classes, image_shape=tuple(image_shape))
    shapes = jax.tree.map(lambda leaf: list(leaf.shape), _abstract_variables(model, tuple(image_shape)))
    return {
        "dataset": dataset,
        "split": split,
        "arch": arch_folder_name(arch),
        "model_code_version": MODEL_CODE_VERSION,
        "parameter_shapes_sha256": _sha256(shapes),
        "protocol": dataclasses.asdict(options.protocol),
        "seed": options.seed,
    }


def entry_dir(options: TeacherOptions, key: dict) -> Path:
    """The cache folder of the teacher `key` describes: `<dir>/<dataset>/<arch>/<12 hex digits>`."""
    return arch_dir(options.directory, key["dataset"], key["arch"]) / _sha256(key)[:12]


def _sha256(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def is_cached(folder: Path) -> bool:
    """Whether a complete cache entry exists in `folder` (its `teacher.json` is written last)."""
    return (folder / META_FILE).is_file()


def require_cached_or_trainable(
    options: TeacherOptions, info, arch, *, flag: str, split: str = TRAIN_SPLIT
) -> None:
    """UserError when the teacher is not cached and training it is disabled; `flag` names the switch.

    info: the dataset's `DatasetInfo` (name, image_shape, num_classes); split: the training data's
    `RealData.split` (what a validation hold-out leaves).
    """
    if options.train:
        return
    key = cache_key(options, info.name, arch, info.image_shape, info.num_classes, split)
    folder = entry_dir(options, key)
    if not is_cached(folder):
        raise UserError(
            f"No cached teacher {key['arch']} for {info.name!r} trained with this protocol in {folder} "
            f"(expected {folder / META_FILE}; {describe_key(key)}) and training it is disabled: pass "
            f"{flag}=True to train and cache it (or point --config.teachers.dir at a folder that holds it)."
        )


def describe_key(key: dict) -> str:
    """'20 epochs, lr 0.01, momentum 0.9, wd 0.0005, batch 256, augment none, seed 0': how it was trained."""
    p = key["protocol"]
    return (
        f"{p['epochs']} epochs, lr {p['lr']}, momentum {p['momentum']}, wd {p['weight_decay']}, batch "
        f"{p['batch_size']}, augment {p['augment']}, seed {key['seed']}"
    )


_train_epoch = jax.jit(evaluation.train_network_epoch, static_argnums=(0, 1))
_accuracy = jax.jit(evaluation.network_accuracy, static_argnums=(0, 1))


def train_teacher(
    model: nn.Module,
    protocol: eval_settings.EvalProtocol,
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


def load_teacher(folder: Path, model: nn.Module, image_shape, key: dict) -> tuple[dict, dict]:
    """(variables, metadata) of the cache entry `folder` for `model`.

    Raises ValueError when the entry is unreadable or describes another teacher than `key`.
    """
    try:
        meta = json.loads((folder / META_FILE).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{folder / META_FILE} is not readable JSON ({error})") from None
    if (
        not isinstance(meta, dict)
        or meta.get("key") != key
        or not isinstance(meta.get("test_accuracy"), float)
    ):
        raise ValueError(f"{folder / META_FILE} does not describe this teacher (or lacks its accuracy)")
    abstract = _abstract_variables(model, image_shape)
    try:
        with ocp.StandardCheckpointer() as checkpointer:
            variables = checkpointer.restore(folder / VARIABLES_DIR, abstract)
    except Exception as error:  # any Orbax / TensorStore failure of a damaged entry
        raise ValueError(f"{folder / VARIABLES_DIR} cannot be restored ({type(error).__name__})") from None
    if not all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in jax.tree.leaves(variables)):
        raise ValueError(f"{folder / VARIABLES_DIR} holds non-finite parameters")
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


def _set_aside(folder: Path) -> Path:
    """Renames a damaged entry to `<folder>.corrupt[-n]` (kept for inspection) and returns the new path."""
    target, n = folder.with_name(f"{folder.name}.corrupt"), 1
    while target.exists():
        n += 1
        target = folder.with_name(f"{folder.name}.corrupt-{n}")
    folder.rename(target)
    return target


def load_or_train_teacher(
    arch,
    real: RealData,
    options: TeacherOptions,
    *,
    log: Callable[[str], None] = print,
) -> Teacher:
    """The cached teacher of (real.name, arch) trained as `options` says, or one trained now and cached.

    arch: a registry name or a ConvNet spec (dict or `ConvNetSpec`). Raises UserError when it is not
    cached (or its entry is damaged) and `options.train` is False.
    """
    arch = as_arch(arch)
    name = arch_folder_name(arch)
    model = get_model(arch, num_classes=real.num_classes, image_shape=real.image_shape, conv=options.conv)
    key = cache_key(options, real.name, arch, real.image_shape, real.num_classes, real.split)
    folder = entry_dir(options, key)
    if is_cached(folder):
        try:
            variables, meta = load_teacher(folder, model, real.image_shape, key)
        except ValueError as error:
            if not options.train:
                raise UserError(
                    f"The cached teacher in {folder} is damaged ({error}) and training is disabled: delete "
                    "that folder and pass --config.teachers.train=True to retrain it."
                ) from None
            moved = _set_aside(folder)
            log(
                f"Warning: the cached teacher in {folder} is damaged ({error}); moved to {moved}, retraining."
            )
        else:
            accuracy = float(meta["test_accuracy"])
            how = describe_key(key)
            log(f"Loaded teacher {name} from {folder} (test accuracy {100 * accuracy:.1f}%; {how})")
            return Teacher(model, variables, accuracy, meta)
    if not options.train:
        require_cached_or_trainable(options, real, arch, flag="--config.teachers.train", split=real.split)
    protocol = options.protocol
    log(f"Training teacher {name} on {real.name} ({describe_key(key)}) ...")
    train_key = purpose_key(options.seed, "teacher")
    variables, accuracy = train_teacher(model, protocol, real, train_key, log=log, name=name)
    if not all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in jax.tree.leaves(variables)):
        raise UserError(
            f"Training teacher {name} on {real.name} diverged (non-finite parameters; {describe_key(key)}); "
            "nothing was cached. Lower --config.teachers.lr."
        )
    meta = {"key": key, "test_accuracy": accuracy, "train_images": int(real.train_images.shape[0])}
    save_teacher(folder, variables, meta)
    log(f"Teacher {name}: test accuracy {100 * accuracy:.1f}%, cached in {folder}")
    return Teacher(model, variables, accuracy, meta)


def records(options: TeacherOptions, real: RealData, archs) -> dict:
    """{arch name: {'folder', 'key', 'test_accuracy', ...}}: the cache entries of the teachers `archs`
    as a run used them, for the run folder (a teacher the run did not need to load is left out)."""
    out = {}
    for arch in archs:
        key = cache_key(options, real.name, arch, real.image_shape, real.num_classes, real.split)
        folder = entry_dir(options, key)
        if not is_cached(folder):
            continue
        meta = json.loads((folder / META_FILE).read_text())
        out[key["arch"]] = {"folder": str(folder), **meta}
    return out
