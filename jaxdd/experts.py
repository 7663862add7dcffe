"""Expert trajectories for trajectory matching (MTT: Cazenavette et al., "Dataset Distillation by Matching
Training Trajectories", CVPR 2022): networks trained on the real data with every epoch's parameters kept.

The protocol is the reference's `buffer.py` (GeorgeCazenavette/mtt-distillation): a fresh network trained
with SGD (lr 0.01, momentum 0, weight decay 0; PyTorch semantics: coupled decay) in shuffled batches of
256 for 50 epochs, each batch under per-image DSA (one op per batch, the DSA strategy of the dataset),
optionally lr ×0.1 after epoch ⌊epochs/2⌋ + 1 (its `--decay`, off by default); its parameters at epochs
0 (the initialisation), 1, ..., T are the expert's trajectory. Expert i trains from
`fold_in(fold_in(PRNGKey(seed), EXPERT_STREAM), i)`, so one cache entry serves any number of experts: a
run asking for more trains only the missing ones.

Cache (the rule of `jaxdd.teachers`): the entry `<dir>/<dataset>/<arch>/<hash of cache_key>/` is keyed by
everything that makes the trajectories what they are (dataset, split, architecture, the model code's
version and parameter shapes, the protocol, the seed) and holds `key.json` and one `expert_<i>/` folder
per expert. While an expert trains, each finished epoch's whole `TrainState` is saved with Orbax as
`epoch_<e>/` (written to a temporary folder, renamed once complete), so a killed training continues
from its last complete epoch with the same epoch keys and ends with exactly the parameters of an
uninterrupted run. Once all T epochs are done they become one Orbax item `trajectory/` (the params
stacked [T+1, ...]), `expert.json` is written (last: the expert is complete) and the epoch folders go.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp

from jaxdd import augment, reporting, teachers, training
from jaxdd.data.real import RealData
from jaxdd.errors import (
    UserError,
    require,
    require_in_interval,
    require_int,
    require_non_negative,
    require_positive,
)
from jaxdd.eval_settings import EvalProtocol
from jaxdd.models import ConvOptions, get_model
from jaxdd.teachers import TRAIN_SPLIT, arch_folder_name, as_arch

EXPERT_STREAM = 0x65787074  # 'expt': the experts' PRNG stream beside jaxdd.seeding's purposes
KEY_FILE = "key.json"
META_FILE = "expert.json"
TRAJECTORY_DIR = "trajectory"
_TEST_BATCH = EvalProtocol.test_batch_size


@dataclasses.dataclass(frozen=True)
class ExpertProtocol:
    """How an expert trains (hashable: a `jit` static argument; `asdict` is part of the cache key).

    `augment`: a resolved DSA strategy applied per image, or 'none'. `lr_decay`: lr ×0.1 from epoch
    ⌊epochs/2⌋ + 2 on (the reference decays after epoch ⌊epochs/2⌋ + 1, counted from 0).
    """

    epochs: int = 50
    batch_size: int = 256
    lr: float = 0.01
    momentum: float = 0.0
    weight_decay: float = 0.0
    lr_decay: bool = False
    augment: str = "none"

    def __post_init__(self):
        require_int("mtt.expert_train_epochs", self.epochs, minimum=1, note="the reference: 50")
        require_int("mtt.expert_batch_size", self.batch_size, minimum=1, note="the reference: 256")
        require_positive("mtt.expert_lr", self.lr, note="the reference: 0.01")
        require_in_interval("mtt.expert_momentum", self.momentum, "[0, 1)", note="the reference: 0")
        require_non_negative("mtt.expert_weight_decay", self.weight_decay, note="the reference: 0")
        require(
            isinstance(self.lr_decay, bool),
            f"mtt.expert_lr_decay={self.lr_decay!r} must be true or false (the reference: false).",
        )
        augment.parse_strategy(self.augment)

    def optimizer(self, num_images: int) -> optax.GradientTransformation:
        """SGD with coupled weight decay over `num_images` training images, lr ×0.1 where `lr_decay`."""
        decay_epoch = self.epochs // 2 + 2 if self.lr_decay else self.epochs
        decay_step = decay_epoch * training.steps_per_epoch(num_images, self.batch_size)
        schedule = optax.piecewise_constant_schedule(self.lr, {decay_step: 0.1})
        return optax.chain(
            optax.add_decayed_weights(self.weight_decay), optax.sgd(schedule, momentum=self.momentum or None)
        )

    def augment_fn(self) -> training.AugmentFn:
        """Per-image DSA of every batch (the reference's `DiffAugment(seed=-1)`); None for 'none'."""
        if not augment.parse_strategy(self.augment):
            return None
        return functools.partial(augment.augment, strategy=self.augment, siamese=False)


@dataclasses.dataclass(frozen=True)
class ExpertOptions:
    """Where experts are cached, whether missing ones may be trained, how, and from which seed; `conv`
    decides how convolutions are computed (speed, not the network): not part of the cache key."""

    directory: str
    train: bool = True
    protocol: ExpertProtocol = ExpertProtocol()
    seed: int = 0
    conv: ConvOptions = ConvOptions()


class Experts(NamedTuple):
    """`num_experts` trajectories of one architecture: its module, the params stacked [E, K, ...] (epochs
    0..K-1 of every expert) and each expert's expert.json."""

    model: nn.Module
    params: dict
    records: list


def expert_key(seed: int, index: int) -> jax.Array:
    """The key expert `index` trains from (split into its initialisation and its epochs)."""
    return jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(seed), EXPERT_STREAM), index)


def _abstract_params(model: nn.Module, image_shape) -> dict:
    x = jnp.zeros((1, *image_shape), jnp.float32)
    return jax.eval_shape(lambda k: model.init(k, x, train=False)["params"], jax.random.PRNGKey(0))


def cache_key(options: ExpertOptions, dataset: str, arch, image_shape, num_classes: int, split=TRAIN_SPLIT):
    """Everything that decides the trajectories (JSON): `teachers.cache_key`'s fields (the same rule:
    dataset, split, architecture and its parameter shapes, protocol, seed) marked as experts'."""
    return {
        "kind": "mtt_experts",
        **teachers.cache_key(options, dataset, arch, image_shape, num_classes, split),
    }


def entry_dir(options: ExpertOptions, key: dict) -> Path:
    """`<dir>/<dataset>/<arch>/<12 hex digits of the key>`: the experts of one protocol."""
    return teachers.entry_dir(options, key)


def expert_dir(entry: Path, index: int) -> Path:
    return entry / f"expert_{index:04d}"


def _epoch_dir(folder: Path, epoch: int) -> Path:
    return folder / f"epoch_{epoch:04d}"


def is_complete(folder: Path) -> bool:
    """Whether expert `folder` is complete (its expert.json is written last)."""
    return (folder / META_FILE).is_file()


def describe(key: dict) -> str:
    """'50 epochs, lr 0.01, momentum 0.0, wd 0.0, batch 256, decay off, augment ..., seed 0'."""
    p = key["protocol"]
    decay = "on" if p["lr_decay"] else "off"
    return (
        f"{p['epochs']} epochs, lr {p['lr']}, momentum {p['momentum']}, wd {p['weight_decay']}, batch "
        f"{p['batch_size']}, decay {decay}, augment {p['augment']}, seed {key['seed']}"
    )


def require_available(options: ExpertOptions, info, arch, num_experts: int, *, flag: str, split=TRAIN_SPLIT):
    """UserError when any of experts 0..num_experts-1 is not cached and training is off (info: the
    dataset's `DatasetInfo`); file system and abstract shapes only, no compilation."""
    if options.train:
        return
    key = cache_key(options, info.name, arch, info.image_shape, info.num_classes, split)
    entry = entry_dir(options, key)
    missing = [i for i in range(num_experts) if not is_complete(expert_dir(entry, i))]
    if missing:
        raise UserError(
            f"{len(missing)} of the {num_experts} {key['arch']} experts for {info.name!r} ({describe(key)}) "
            f"are not cached in {entry} (first missing: {expert_dir(entry, missing[0]).name}) and training "
            f"them is disabled: pass {flag}=True to train them (buffer.py's step), or point "
            "--config.mtt.experts_dir at a folder that holds them."
        )


def train_expert_epoch(model, protocol: ExpertProtocol, state, images, labels, epoch_key, epoch_index):
    """(state, mean loss) after one shuffled epoch over (images [N,H,W,C], labels [N])."""
    return training.train_one_epoch(
        model, protocol.optimizer(images.shape[0]), state, images, labels, epoch_key, epoch_index,
        batch_size=protocol.batch_size, augment=protocol.augment_fn(),
    )  # fmt: skip


_train_epoch = jax.jit(train_expert_epoch, static_argnums=(0, 1))


def _save(checkpointer: ocp.StandardCheckpointer, folder: Path, tree) -> None:
    """Saves `tree` into `<folder>.tmp-<pid>` and renames it to `folder` once complete."""
    tmp = folder.with_name(f"{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    checkpointer.save(tmp, tree)
    checkpointer.wait_until_finished()
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)


def _resume_point(checkpointer, folder: Path, abstract, log) -> tuple[int, dict] | None:
    """(epoch, {'state', 'loss'}) of the newest readable epoch folder; an unreadable one is set aside."""
    epochs = sorted(int(p.name[6:]) for p in folder.glob("epoch_*") if p.name[6:].isdigit())
    for epoch in reversed(epochs):
        try:
            return epoch, checkpointer.restore(_epoch_dir(folder, epoch), abstract)
        except Exception as error:  # any Orbax / TensorStore failure of a damaged folder
            moved = _epoch_dir(folder, epoch).with_name(f"epoch_{epoch:04d}.unreadable-{os.getpid()}")
            _epoch_dir(folder, epoch).rename(moved)
            log(f"Warning: {moved.name} of {folder} cannot be read ({type(error).__name__}); set aside.")
    return None


def train_expert(
    model: nn.Module,
    protocol: ExpertProtocol,
    real: RealData,
    key: jax.Array,
    folder: Path,
    *,
    log: Callable[[str], None] = print,
    name: str = "",
) -> dict:
    """Trains the expert of `key` into `folder` (one process per folder), continuing from its last
    complete epoch; returns its expert.json ({'epochs', 'losses' [T], 'test_accuracy'}); the trajectory
    is then `load_trajectory(folder, ...)`. Each epoch folder holds {'state': TrainState, 'loss'}."""
    init_key, train_key = jax.random.split(key)
    tx = protocol.optimizer(real.train_images.shape[0])
    first = lambda: {
        "state": training.init_train_state(model, init_key, real.image_shape, tx),
        "loss": jnp.float32(jnp.nan),  # epoch 0 is the initialisation: no training loss
    }
    abstract = jax.eval_shape(first)
    folder.mkdir(parents=True, exist_ok=True)
    for leftover in folder.glob("*.tmp-*"):  # a save cut short
        shutil.rmtree(leftover, ignore_errors=True)
    images = real.train_images.shape[0]
    with ocp.StandardCheckpointer() as checkpointer:
        resumed = _resume_point(checkpointer, folder, abstract, log)
        start, item = resumed if resumed else (0, first())
        if resumed is None:
            _save(checkpointer, _epoch_dir(folder, 0), item)
        elif start:
            log(f"Expert {name}: continuing from epoch {start} of {protocol.epochs} ({folder}).")
        state, progress = item["state"], reporting.Progress(total=protocol.epochs, unit="epoch")
        keys = training.epoch_keys(train_key, protocol.epochs)
        for epoch in range(start, protocol.epochs):
            state, loss = _train_epoch(
                model, protocol, state, real.train_images, real.train_labels, keys[epoch], epoch
            )
            if not np.isfinite(float(loss)):
                raise UserError(
                    f"Expert {name} diverged in epoch {epoch + 1} (non-finite loss; its epochs up to {epoch} "
                    f"are kept in {folder}): lower --config.mtt.expert_lr, or delete that folder."
                )
            _save(checkpointer, _epoch_dir(folder, epoch + 1), {"state": state, "loss": loss})
            log(f"Expert {name}: " + progress.line(epoch + 1, {"loss": float(loss), "images": images}))
        saved = [checkpointer.restore(_epoch_dir(folder, e), abstract) for e in range(protocol.epochs + 1)]
        stacked = jax.tree.map(lambda *leaves: jnp.stack(leaves), *(s["state"].params for s in saved))
        _save(checkpointer, folder / TRAJECTORY_DIR, stacked)
    correct = training.predict_correct(
        model, state.params, state.batch_stats, real.test_images, real.test_labels, batch_size=_TEST_BATCH
    )
    meta = {
        "epochs": protocol.epochs,
        "losses": [float(s["loss"]) for s in saved[1:]],
        "test_accuracy": float(correct) / int(real.test_labels.shape[0]),
    }
    (folder / META_FILE).write_text(json.dumps(meta, indent=2))
    for path in folder.glob("epoch_*"):  # the trajectory holds their params now
        shutil.rmtree(path, ignore_errors=True)
    return meta


def load_trajectory(folder: Path, abstract_params: dict, num_epochs: int) -> dict:
    """The params of expert `folder` at epochs 0..num_epochs, stacked: each leaf [num_epochs + 1, ...].

    abstract_params: one epoch's structure (`jax.ShapeDtypeStruct`s). ValueError for an unreadable one.
    """
    abstract = jax.tree.map(
        lambda leaf: jax.ShapeDtypeStruct((num_epochs + 1, *leaf.shape), leaf.dtype), abstract_params
    )
    try:
        with ocp.StandardCheckpointer() as checkpointer:
            stacked = checkpointer.restore(folder / TRAJECTORY_DIR, abstract)
    except Exception as error:
        raise ValueError(f"{folder / TRAJECTORY_DIR} cannot be restored ({type(error).__name__})") from None
    if not all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in jax.tree.leaves(stacked)):
        raise ValueError(f"{folder / TRAJECTORY_DIR} holds non-finite parameters")
    return stacked


def load_or_train_experts(
    arch,
    real: RealData,
    options: ExpertOptions,
    num_experts: int,
    *,
    epochs: int | None = None,
    log: Callable[[str], None] = print,
) -> Experts:
    """Experts 0..num_experts-1 of (real.name, arch) trained as `options` says: loaded where cached,
    trained (or continued) now otherwise; their params at epochs 0..epochs-1 (None: all T+1), stacked
    [num_experts, epochs, ...]. UserError when one is missing (or damaged) and `options.train` is off."""
    arch = as_arch(arch)
    name = arch_folder_name(arch)
    model = get_model(arch, num_classes=real.num_classes, image_shape=real.image_shape, conv=options.conv)
    key = cache_key(options, real.name, arch, real.image_shape, real.num_classes, real.split)
    entry = entry_dir(options, key)
    require_available(options, real, arch, num_experts, flag="--config.mtt.train_experts", split=real.split)
    if not (entry / KEY_FILE).is_file():
        entry.mkdir(parents=True, exist_ok=True)
        (entry / KEY_FILE).write_text(json.dumps(key, indent=2))
    abstract = _abstract_params(model, real.image_shape)
    total = options.protocol.epochs

    def train(index: int, folder: Path) -> None:
        log(f"Training expert {index + 1}/{num_experts} {name} on {real.name} ({describe(key)}) ...")
        expert = expert_key(options.seed, index)
        train_expert(model, options.protocol, real, expert, folder, log=log, name=name)

    trajectories, records = [], []
    for index in range(num_experts):
        folder = expert_dir(entry, index)
        if not is_complete(folder):
            train(index, folder)
        try:
            stacked = load_trajectory(folder, abstract, total)
        except ValueError as error:
            if not options.train:
                raise UserError(
                    f"The cached expert {folder} is damaged ({error}) and training is disabled: delete that "
                    "folder and pass --config.mtt.train_experts=True to retrain it."
                ) from None
            log(f"Warning: the cached expert {folder} is damaged ({error}); retraining it.")
            shutil.rmtree(folder)
            train(index, folder)
            stacked = load_trajectory(folder, abstract, total)
        trajectories.append(jax.tree.map(lambda leaf: np.asarray(leaf[: epochs or total + 1]), stacked))
        records.append(json.loads((folder / META_FILE).read_text()))
    log(f"Loaded {num_experts} {name} experts from {entry} ({describe(key)}).")
    params = jax.tree.map(lambda *leaves: jnp.asarray(np.stack(leaves)), *trajectories)
    return Experts(model, params, records)
