"""Knowledge-distillation evaluation of a synthetic set (DESIGN §4.5).

Paper: "Improve Cross-Architecture Generalization on Dataset Distillation" (the model-pool paper), after
Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural Network" (2015). A teacher (a ConvNet) is
trained on the synthetic set with the standard protocol (`evaluation`); each student architecture is
then trained on the same set, with the same protocol, on

    α·τ²·KL(softmax(z_t/τ) ‖ softmax(z_s/τ)) + (1−α)·CE(z_s, y)

where z_t are the frozen teacher's logits (eval mode) on the very batch the student sees (augmented when
the protocol augments), and τ_e = max(τ·decay^e, min_temperature) in epoch e (the paper's code: τ = 1.5,
decay 0.9). With `temperatures` set, τ is chosen per architecture by the accuracy on a validation split
drawn from the real training set, never on the test set.

Students use the same keys as the plain evaluation (`evaluation.evaluate_archs`), so each KD network
starts from the initialisation of its plain counterpart, and α = 0 reproduces plain training.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import struct

from jaxdd import config_lists, eval_settings, evaluation, losses, settings, training
from jaxdd.data.real import RealData, class_indices
from jaxdd.errors import (
    UserError,
    is_finite_number,
    require,
    require_in_interval,
    require_int,
    require_positive,
)
from jaxdd.models import ConvOptions, check_input_shape, get_model

COLUMN_SUFFIX = "+KD"  # eval.json / table.md column of an architecture's KD students


def column(arch: str) -> str:
    """The eval.json key and table column of `arch`'s KD students, e.g. 'LeNet+KD'."""
    return arch + COLUMN_SUFFIX


# Streams folded into the evaluation key; large 32-bit constants, distinct from the architecture indices
# that `evaluate_archs` folds in.
TEACHER_STREAM = 0x74656163  # "teac"
VALIDATION_STREAM = 0x76616C69  # "vali"
SEARCH_STREAM = 0x73656172  # "sear"


@struct.dataclass
class KDParams:
    """The numbers of the KD loss, traced (a τ search reuses one compiled program). Scalars."""

    alpha: jax.Array
    temperature: jax.Array
    temperature_decay: jax.Array
    min_temperature: jax.Array

    @classmethod
    def create(cls, *, alpha, temperature, temperature_decay=1.0, min_temperature=0.01) -> KDParams:
        return cls(*(jnp.float32(v) for v in (alpha, temperature, temperature_decay, min_temperature)))


def kd_loss(
    student_logits: jax.Array,
    teacher_logits: jax.Array,
    labels: jax.Array,
    *,
    alpha: jax.Array | float,
    temperature: jax.Array | float,
) -> jax.Array:
    """α·τ²·KL(softmax(z_t/τ) ‖ softmax(z_s/τ)) + (1−α)·CE(z_s, y), a scalar.

    student_logits, teacher_logits: [B, K]; labels [B] int. The KL is `losses.kl_divergence` (batch mean,
    PyTorch's `reduction='batchmean'`; no NaN at a small τ).
    """
    kl = losses.kl_divergence(student_logits, teacher_logits, temperature)
    return alpha * temperature**2 * kl + (1 - alpha) * training.cross_entropy(student_logits, labels)


def temperature_at(params: KDParams, epoch: jax.Array) -> jax.Array:
    """τ in epoch `epoch` (from 0): max(τ·decay^epoch, min_temperature)."""
    decayed = params.temperature * params.temperature_decay ** epoch.astype(jnp.float32)
    return jnp.maximum(decayed, params.min_temperature)


@dataclasses.dataclass(frozen=True)
class KDLoss:
    """The KD student's `evaluation.StudentLoss`, loss_args (teacher's `TrainState`, `KDParams`): `kd_loss`
    against the frozen teacher's logits (eval mode) on the batch as the student saw it, at τ of the epoch."""

    teacher_model: nn.Module

    def __call__(self, loss_args, logits, labels, images, epoch) -> jax.Array:
        teacher_state, params = loss_args
        teacher_logits, _, _ = training.apply_model(
            self.teacher_model, teacher_state.params, teacher_state.batch_stats, images, train=False
        )
        return kd_loss(
            logits,
            jax.lax.stop_gradient(teacher_logits),
            labels,
            alpha=params.alpha,
            temperature=temperature_at(params, epoch),
        )


def student(
    model: nn.Module, protocol: eval_settings.EvalProtocol, teacher_model: nn.Module
) -> evaluation.Student:
    """A KD student of `model`: the plain protocol and its SGD, the loss `KDLoss(teacher_model)`."""
    return evaluation.Student(model, protocol, KDLoss(teacher_model))


_train_teacher = jax.jit(evaluation.train_network, static_argnums=(0, 1))
_teacher_accuracy = jax.jit(evaluation.network_accuracy, static_argnums=(0, 1))


def validation_split(real: RealData, per_class: int, key: jax.Array) -> tuple[jax.Array, jax.Array]:
    """`per_class` distinct real training images of every class, drawn with `key`.

    Returns (images [C·per_class, H, W, C'], labels [C·per_class]), class-major. The test set is never
    touched.
    """
    classes = jnp.arange(real.num_classes)
    rows = jax.vmap(lambda c: class_indices(real, c, jax.random.fold_in(key, c), per_class))(classes)
    return real.train_images[rows.reshape(-1)], jnp.repeat(classes, per_class).astype(jnp.int32)


@dataclasses.dataclass(frozen=True)
class KDOptions:
    """What `config.kd` asks for: its keys besides `enabled` (which switches the KD columns on).

    Attributes:
      alpha: weight of the KD term; 0 = plain cross-entropy (the paper: 0.5).
      temperature: τ (the start value when it decays; the paper: 1.5).
      temperature_decay: τ ×= decay after each epoch (1: fixed τ; the paper's code: 0.9).
      min_temperature: the decayed τ stops here (τ·0.9^e underflows float32 by e ≈ 800).
      teacher: a registry name, trained on the synthetic set with config.eval.
      temperatures: comma-separated τ to search on a validation split; '' = `temperature` (no search).
        `temperature_choices` holds them as numbers.
      val_per_class: real training images per class in the validation split of the search.
      search_nets: students per (architecture, τ) in the search.
    """

    alpha: float = 0.5
    temperature: float = 1.5
    temperature_decay: float = 1.0
    min_temperature: float = 0.01
    teacher: str = "ConvNet"
    temperatures: str = ""
    val_per_class: int = 100
    search_nets: int = 1

    def __post_init__(self):
        floor = self.min_temperature
        require_in_interval("kd.alpha", self.alpha, "[0, 1]", note="the paper: 0.5")
        require_in_interval(
            "kd.temperature_decay", self.temperature_decay, "(0, 1]", note="1: fixed τ; the paper's code: 0.9"
        )
        require_positive("kd.min_temperature", floor, note="the floor of the decayed τ")
        require_positive("kd.temperature", self.temperature, note="paper: 1.5")
        choices = self.temperature_choices
        for temperature in choices:
            require(
                is_finite_number(temperature) and temperature > 0,
                f"kd.temperatures={self.temperatures!r} has {temperature!r}: list finite numbers > 0, "
                "e.g. '1,1.5,2,4'.",
            )
        for temperature in (self.temperature, *choices):
            require(
                temperature >= floor,
                f"kd temperature {temperature!r} is below kd.min_temperature={floor!r}: "
                "raise it or lower kd.min_temperature.",
            )
        for name in ("val_per_class", "search_nets"):
            require_int(f"kd.{name}", getattr(self, name), minimum=1)

    @property
    def temperature_choices(self) -> tuple[float, ...]:
        """`temperatures` as numbers: '1, 1.5,2' or '(1, 1.5, 2)' -> (1.0, 1.5, 2.0); '' -> ()."""
        return config_lists.split_floats(self.temperatures, key="kd.temperatures")

    def params(self, temperature: float | None = None) -> KDParams:
        return KDParams.create(
            alpha=self.alpha,
            temperature=self.temperature if temperature is None else temperature,
            temperature_decay=self.temperature_decay,
            min_temperature=self.min_temperature,
        )


def default_config() -> ml_collections.ConfigDict:
    """The `config.kd` defaults: off (`enabled`: also train every eval arch as a KD student; the table
    then shows plain and KD columns), then `KDOptions()`."""
    return settings.section_config(KDOptions, enabled=False)


# (keys [n, 2], τ, (test images, test labels)) -> accuracies [n] of KD students of one architecture
TrainAtTemperature = Callable[[jax.Array, float, tuple[jax.Array, jax.Array]], np.ndarray]


def search_temperature(
    train: TrainAtTemperature, options: KDOptions, key: jax.Array, validation: tuple[jax.Array, jax.Array]
) -> tuple[float, dict[str, float]]:
    """The τ of `options.temperature_choices` whose `options.search_nets` students (keys from `key`) score
    best on `validation` (the first on a tie), and the mean validation accuracy of every τ ({str(τ): acc})."""
    keys = jax.random.split(key, options.search_nets)
    choices = options.temperature_choices
    scores = {str(t): float(np.mean(train(keys, t, validation))) for t in choices}
    best = max(choices, key=lambda t: scores[str(t)])
    return best, scores


def train_teacher(
    options: KDOptions,
    real: RealData,
    images: jax.Array,
    labels: jax.Array,
    key: jax.Array,
    *,
    protocol: eval_settings.EvalProtocol,
    conv: ConvOptions = ConvOptions(),
) -> tuple[nn.Module, training.TrainState, float]:
    """(teacher module, its trained state, its test accuracy): `options.teacher` (its convolutions as
    `conv` says) trained on the set with the protocol, initialised from `fold_in(key, TEACHER_STREAM)`."""
    model = get_model(options.teacher, num_classes=real.num_classes, image_shape=real.image_shape, conv=conv)
    state = _train_teacher(model, protocol, jax.random.fold_in(key, TEACHER_STREAM), images, labels)
    accuracy = _teacher_accuracy(model, protocol, state, real.test_images, real.test_labels)
    return model, state, float(accuracy)


def evaluate_archs_kd(
    archs: Sequence[str],
    real: RealData,
    images: jax.Array,
    labels: jax.Array,
    key: jax.Array,
    *,
    protocol: eval_settings.EvalProtocol,
    options: KDOptions,
    networks: evaluation.Networks,
    log: Callable[[str], None] = print,
) -> dict[str, dict]:
    """KD students of every architecture, `networks.num_nets` of each, run as `networks` says (the
    teacher's convolutions too): {arch: {'mean', 'std', 'accs', 'seconds', 'temperature', 'alpha',
    'teacher', 'teacher_acc'[, 'search']}}.

    Student keys are those of `evaluation.evaluate_archs` with the same `key` (paired with the plain
    networks); 'search' holds the validation accuracy of each τ when `options.temperatures` is set.
    """
    start = time.perf_counter()
    teacher_model, teacher_state, teacher_acc = train_teacher(
        options, real, images, labels, key, protocol=protocol, conv=networks.conv
    )
    log(f"  KD teacher {options.teacher}: {100 * teacher_acc:.1f}% ({time.perf_counter() - start:.1f} s)")
    validation = None
    if options.temperature_choices:
        validation = validation_split(real, options.val_per_class, jax.random.fold_in(key, VALIDATION_STREAM))

    def accuracies(model, arch_key):
        train = lambda keys, temperature, test: evaluation.train_students(
            student(model, protocol, teacher_model), keys, images, labels, test=test,
            loss_args=(teacher_state, options.params(temperature)), parallel=networks.parallel,
            devices=networks.devices,
        )  # fmt: skip
        temperature, extra = options.temperature, {}
        if validation is not None:
            search_key = jax.random.fold_in(arch_key, SEARCH_STREAM)
            temperature, extra["search"] = search_temperature(train, options, search_key, validation)
        test = (real.test_images, real.test_labels)
        accs = train(jax.random.split(arch_key, networks.num_nets), temperature, test)
        extra.update(
            temperature=temperature, alpha=options.alpha, teacher=options.teacher, teacher_acc=teacher_acc
        )
        return accs, extra

    return evaluation.for_each_arch(
        archs,
        real,
        key,
        accuracies,
        note=lambda summary: f"τ {summary['temperature']:g}",
        label=column,
        conv=networks.conv,
        log=log,
    )


def validate(kd_config: ml_collections.ConfigDict, info) -> None:
    """UserError for a bad `kd.*` value (info: the dataset's `DatasetInfo`); nothing compiles. The values
    are checked (`KDOptions`) even while KD is off, so a mistake never waits unseen for the day it is
    switched on; the search's split against the smallest class too; the teacher's fit to the dataset
    only when KD is on."""
    options = settings.from_section(KDOptions, kd_config)
    if options.temperature_choices:
        require(
            options.val_per_class <= info.min_class_count,
            f"kd.val_per_class={options.val_per_class} exceeds the smallest class of {info.name!r} "
            f"({info.min_class_count} training images): choose --config.kd.val_per_class ≤ "
            f"{info.min_class_count}.",
        )
    if not kd_config.enabled:
        return  # the teacher is built only when KD is on (its shape check depends on the dataset)
    try:
        check_input_shape(options.teacher, info.image_shape, info.num_classes)
    except UserError as error:
        raise UserError(f"kd.teacher={options.teacher!r}: {error}") from None
