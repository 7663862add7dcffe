"""The evaluation protocol of DC/DSA/DM (DESIGN §5), the one student trainer and the per-architecture loop.

A fresh network per (architecture, seed) is trained only on the given set with SGD (lr 0.01, momentum
0.9, weight decay 5e-4, batch 256), 300 epochs (1000 with DSA), lr ×0.1 at half; its accuracy on the
full test set after the last epoch is the result. N networks of an architecture give mean ± std.

Plain, KD (`jaxdd.kd`) and soft-label (`jaxdd.relabel`) students differ only in their `Student`: the loss
and the optimiser; `train_students` trains and tests any of them, `for_each_arch` runs it per architecture.
How many networks an evaluation trains, where and with which convolutions is one `Networks`.
`config.eval` is read once, at the edge, as `eval_settings.EvalSettings` and its `EvalProtocol`.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import numpy as np
import optax

from jaxdd import eval_cache, sharding, training
from jaxdd.data.real import RealData
from jaxdd.errors import UserError, require_int
from jaxdd.eval_settings import MODES, EvalProtocol
from jaxdd.models import ConvOptions, get_model

# How N networks of one architecture are trained, per backend. Measured by benchmarks/bench_eval.py:
# on the 2-core CPU a Python loop over one compiled network beats vmap (batched convolutions lower
# poorly there); accelerators are fed better by one vmapped program.
DEFAULT_PARALLELISM = {"cpu": "loop", "gpu": "vmap", "tpu": "vmap"}


def protocol_optimizer(protocol: EvalProtocol, num_images: int) -> optax.GradientTransformation:
    """SGD with momentum and coupled weight decay (PyTorch semantics), lr ×0.1 from epoch ⌊epochs·decay⌋."""
    decay_step = int(protocol.epochs * protocol.lr_decay_at) * training.steps_per_epoch(
        num_images, protocol.batch_size
    )
    schedule = optax.piecewise_constant_schedule(protocol.lr, {decay_step: 0.1})
    return optax.chain(
        optax.add_decayed_weights(protocol.weight_decay), optax.sgd(schedule, momentum=protocol.momentum)
    )


def cross_entropy_loss(loss_args, logits, labels, seen, epoch) -> jax.Array:
    """The plain student's `StudentLoss`: cross-entropy with the hard labels."""
    return training.cross_entropy(logits, labels)


# (loss_args pytree, logits [B,K], labels [B], images [B,H,W,C] as the student saw them, epoch) -> scalar
StudentLoss = Callable[[Any, jax.Array, jax.Array, jax.Array, jax.Array], jax.Array]


@dataclasses.dataclass(frozen=True)
class Student:
    """One kind of student network, hashable (a `jit` static argument), so equal students share programs.

    `protocol` gives `epochs`, `batch_size`, `test_batch_size` and `augment_fn()` (`EvalProtocol`,
    `relabel.RelabelProtocol`); `loss` (a `StudentLoss`) and `optimizer(protocol, num_images)` are
    module-level functions or frozen dataclasses; the loss's arrays come traced, as `loss_args`.
    """

    model: nn.Module
    protocol: Any
    loss: StudentLoss = cross_entropy_loss
    optimizer: Callable[[Any, int], optax.GradientTransformation] = protocol_optimizer


@dataclasses.dataclass(frozen=True)
class Networks:
    """How an evaluation's networks are run, the same for its plain, KD and soft-label students (hashable);
    a run builds it once from its config (`jaxdd.run_eval`)."""

    num_nets: int
    """Networks per architecture, each from its own key: the summary is mean ± std over them."""
    parallel: str = "loop"
    """How a device trains its networks, 'loop' or 'vmap' (`train_students`)."""
    devices: int = 1
    """Devices the networks are split over (0: all visible; `sharding.resolve_net_devices`)."""
    conv: ConvOptions = ConvOptions()
    """How every network's convolutions are computed (a run's `config.conv`)."""

    def __post_init__(self):
        require_int("num_nets", self.num_nets, minimum=1, note="networks per architecture")


def init_student(
    student: Student, key: jax.Array, images: jax.Array
) -> tuple[training.TrainState, jax.Array]:
    """(fresh state, training key) of `train_student(key)`: its first step, for callers that run the
    epochs one by one (`train_network_epoch`)."""
    init_key, train_key = jax.random.split(key)
    tx = student.optimizer(student.protocol, images.shape[0])
    return training.init_train_state(student.model, init_key, images.shape[1:], tx), train_key


def train_student(
    student: Student, key: jax.Array, images: jax.Array, labels: jax.Array, loss_args=()
) -> training.TrainState:
    """One fresh network trained on (images [N,H,W,C], labels [N]) for the protocol's epochs."""
    state, train_key = init_student(student, key, images)
    loss = lambda logits, labels, seen, epoch: student.loss(loss_args, logits, labels, seen, epoch)
    state, _ = training.train_epochs(
        student.model, student.optimizer(student.protocol, images.shape[0]), state, images, labels,
        train_key, epochs=student.protocol.epochs, batch_size=student.protocol.batch_size,
        augment=student.protocol.augment_fn(), loss=loss,
    )  # fmt: skip
    return state


def network_accuracy(
    model: nn.Module, protocol, state: training.TrainState, test_images, test_labels
) -> jax.Array:
    """Accuracy (scalar in [0, 1]) of a trained network on (test_images [M,H,W,C], test_labels [M]),
    in batches of `protocol.test_batch_size`."""
    correct = training.predict_correct(
        model, state.params, state.batch_stats, test_images, test_labels, batch_size=protocol.test_batch_size
    )
    return correct / test_labels.shape[0]


def student_accuracy(student: Student, key: jax.Array, loss_args, images, labels, test_images, test_labels):
    """`train_student`, then its accuracy (scalar) on (test_images [M,H,W,C], test_labels [M])."""
    state = train_student(student, key, images, labels, loss_args)
    return network_accuracy(student.model, student.protocol, state, test_images, test_labels)


def train_network(
    model: nn.Module, protocol: EvalProtocol, key: jax.Array, images: jax.Array, labels: jax.Array
) -> training.TrainState:
    """The plain student: one fresh network trained on (images [N,H,W,C], labels [N]) with the protocol."""
    return train_student(Student(model, protocol), key, images, labels)


def init_network(
    model: nn.Module, protocol: EvalProtocol, key: jax.Array, images: jax.Array
) -> tuple[training.TrainState, jax.Array]:
    """(fresh state, training key) of `train_network(key)` (`init_student` of the plain student)."""
    return init_student(Student(model, protocol), key, images)


def train_network_epoch(
    model: nn.Module,
    protocol: EvalProtocol,
    state: training.TrainState,
    images: jax.Array,
    labels: jax.Array,
    epoch_key: jax.Array,
    epoch_index: jax.Array | int,
) -> tuple[training.TrainState, jax.Array]:
    """(state, mean loss) after epoch `epoch_index` of `train_network`; looping it over
    `training.epoch_keys(train_key, protocol.epochs)` trains the same network, one program per epoch."""
    return training.train_one_epoch(
        model,
        protocol_optimizer(protocol, images.shape[0]),
        state,
        images,
        labels,
        epoch_key,
        epoch_index,
        batch_size=protocol.batch_size,
        augment=protocol.augment_fn(),
    )


def backend_parallelism(backend: str) -> str:
    """The measured way of training N networks on `backend` (`DEFAULT_PARALLELISM`; another: 'vmap'),
    what `jaxdd.config` puts for eval.parallel='auto'."""
    return DEFAULT_PARALLELISM.get(backend, "vmap")


def network_block(one: Callable, mode: str, devices: int) -> Callable:
    """(keys [n, 2], *shared) -> [n]: `one(key, *shared)` (a scalar) for every key, the keys split over
    `devices` devices (`sharding.over_net_shards`). Per device, 'vmap' trains its block as one batched
    computation; 'loop' takes exactly one key per device and call (`train_students` calls it in rounds)."""
    if mode == "vmap":
        per_device = lambda keys, *shared: jax.vmap(lambda key: one(key, *shared))(keys)
    else:
        per_device = lambda keys, *shared: one(keys[0], *shared)[None]
    return sharding.over_net_shards(per_device, devices)


# Compiled once per (student, mode, devices, data shapes) for the whole process: the random-real baseline,
# a second evaluation of the same shapes and every τ of a KD search reuse the programs.
@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _accuracy_block(student, mode, devices, keys, *shared):
    """shared: (loss_args, images, labels, test_images, test_labels)."""
    return network_block(functools.partial(student_accuracy, student), mode, devices)(keys, *shared)


def train_students(
    student: Student,
    keys: jax.Array,
    images: jax.Array,
    labels: jax.Array,
    *,
    test: tuple[jax.Array, jax.Array],
    loss_args=(),
    parallel: str = "loop",
    devices: int = 1,
) -> np.ndarray:
    """Test accuracies [N] of N fresh students, one per key in `keys` [N, 2], trained on (images
    [N,H,W,C], labels [N]) and tested on `test` (images [M,H,W,C], labels [M]), on `devices` devices (0:
    all visible; `sharding.resolve_net_devices`). The one trainer of plain, KD and soft-label students.

    `parallel` 'vmap' trains a device's networks as one batched computation, 'loop' (the CPU's measured
    choice, `backend_parallelism`) one network per device at a time; each compiles one program. The keys
    are padded to a multiple of the device count (`sharding.pad_rows`; the padding's results are
    dropped), so network i is always trained from keys[i]: results agree up to float reassociation and do
    not depend on the device count.
    """
    if parallel not in MODES:
        raise UserError(
            f"parallel={parallel!r} must be one of {', '.join(MODES)} (eval.parallel='auto' is the backend's "
            "choice, which jaxdd.config.validate fills in)."
        )
    devices = sharding.resolve_net_devices(devices)
    padded = sharding.pad_rows(keys, devices)
    size = devices if parallel == "loop" else padded.shape[0]
    shared = (loss_args, images, labels, *test)
    blocks = [
        _accuracy_block(student, parallel, devices, padded[start : start + size], *shared)
        for start in range(0, padded.shape[0], size)
    ]
    return np.concatenate([np.asarray(b) for b in blocks])[: keys.shape[0]]


def evaluate_model(
    model: nn.Module,
    protocol: EvalProtocol,
    keys: jax.Array,
    images: jax.Array,
    labels: jax.Array,
    test_images: jax.Array,
    test_labels: jax.Array,
    *,
    parallel: str = "loop",
    devices: int = 1,
) -> np.ndarray:
    """Test accuracies [N] of N plain networks (cross-entropy, the protocol's SGD), one per key in `keys`
    [N, 2] (`train_students`)."""
    return train_students(
        Student(model, protocol), keys, images, labels, test=(test_images, test_labels),
        parallel=parallel, devices=devices,
    )  # fmt: skip


def summarize(accs: Sequence[float], **extra) -> dict:
    """{'mean', 'std', 'accs'} of accuracies in [0, 1] (population std, as the reference's np.std)."""
    accs = np.asarray(accs, np.float64)
    return {"mean": float(accs.mean()), "std": float(accs.std()), "accs": [float(a) for a in accs], **extra}


def evaluate_archs(
    archs: Sequence[str],
    real: RealData,
    images: jax.Array,
    labels: jax.Array,
    key: jax.Array,
    *,
    protocol: EvalProtocol,
    networks: Networks,
    cache: tuple[Path, dict, bool] | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, dict]:
    """The protocol for every architecture in `archs`: {arch: {'mean', 'std', 'accs', 'seconds'}}, its
    `networks.num_nets` networks trained as `networks` says (`evaluate_model`); `cache` as in
    `for_each_arch`.

    Each architecture gets its networks' keys from `fold_in(key, index)`, so adding an architecture to
    the list does not change the others' results, and two sets evaluated with the same key see the same
    network initialisations (paired comparison).
    """

    def accuracies(model, arch_key):
        accs = evaluate_model(
            model, protocol, jax.random.split(arch_key, networks.num_nets), images, labels, real.test_images,
            real.test_labels, parallel=networks.parallel, devices=networks.devices,
        )  # fmt: skip
        return accs, {}

    return for_each_arch(
        archs,
        real,
        key,
        accuracies,
        note=lambda summary: f"{networks.num_nets} nets, {summary['seconds']:.1f} s",
        conv=networks.conv,
        cache=cache,
        log=log,
    )


def for_each_arch(
    archs: Sequence[str],
    real: RealData,
    key: jax.Array,
    accuracies: Callable[[nn.Module, jax.Array], tuple[np.ndarray, dict]],
    *,
    note: Callable[[dict], str],
    label: Callable[[str], str] = str,
    conv: ConvOptions = ConvOptions(),
    cache: tuple[Path, dict, bool] | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, dict]:
    """{arch: `summarize(accs, seconds, **extra)`} where `accuracies(model, fold_in(key, index))` returns
    (accs [num_nets], extra) for architecture `archs[index]`, its model's convolutions computed as `conv`
    says (a run's `config.conv`); logs one line per architecture, its
    `label(arch)`, the cell and `note(summary)`. The one loop behind plain, KD and soft-label students, so
    all three draw their networks from the same per-architecture keys.

    cache: (folder, tag, store) to read each architecture's summary from `jaxdd.eval_cache` under `tag`
    plus the architecture and its networks' key (`tag` must name the set, protocol and student kind),
    and, when `store`, to write it there (process 0 of a multi-process run; every process reads).
    """
    results = {}
    for index, arch in enumerate(archs):
        arch_key = jax.random.fold_in(key, index)
        entry = None
        if cache is not None:
            tag = {**cache[1], "arch": label(arch), "key": np.asarray(jax.random.key_data(arch_key)).tolist()}
            entry = eval_cache.entry_path(cache[0], tag)
            cached = eval_cache.load(entry, tag)
            if cached is not None:
                results[arch] = cached
                log(f"  {label(arch):<14} {format_cell(cached)}  (cached: {entry.name})")
                continue
        model = get_model(arch, num_classes=real.num_classes, image_shape=real.image_shape, conv=conv)
        start = time.perf_counter()
        accs, extra = accuracies(model, arch_key)
        results[arch] = summarize(accs, seconds=round(time.perf_counter() - start, 2), **extra)
        if entry is not None and cache[2]:
            eval_cache.store(entry, tag, results[arch])
        log(f"  {label(arch):<14} {format_cell(results[arch])}  ({note(results[arch])})")
    return results


def format_cell(summary: dict) -> str:
    """'mean ± std' in percent with one decimal, as published tables print it."""
    return f"{100 * summary['mean']:.1f} ± {100 * summary['std']:.1f}"
