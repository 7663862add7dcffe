"""SRe2L's relabel step as an evaluation: students learn the teacher's soft predictions (DESIGN §4.3).

Yin, Xing & Shen, "Squeeze, Recover and Relabel" (NeurIPS 2023). A fresh student is trained on the
synthetic images only; each batch is augmented per image (random resized crop + flip) and the student
matches the frozen teacher's prediction on that same view:

    L = KL(softmax(z_t/T) ‖ softmax(z_s/T))   (batch mean; no T² factor, as SRe2L's `KLDivLoss`)

with AdamW (lr 1e-3, weight decay 0.01) under a cosine schedule over all steps. The hard labels are not
used. Results land in the same cross-architecture table as the plain protocol, one `arch+soft` column
per architecture; a student of architecture index i gets the keys of the plain networks of that index
(paired comparison).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from jaxdd import evaluation, losses, training
from jaxdd.data.real import RealData
from jaxdd.errors import require_int, require_non_negative, require_positive
from jaxdd.resized_crop import MIN_SCALE, random_resized_crop_flip
from jaxdd.settings import derived

COLUMN_SUFFIX = "+soft"


def column(arch: str) -> str:
    """The eval.json key and table column of `arch`'s soft-label students, e.g. 'ConvNet+soft'."""
    return arch + COLUMN_SUFFIX


@dataclasses.dataclass(frozen=True)
class RelabelProtocol:
    """How a soft-label student is trained (hashable: a `jit` static argument): the `config.sre2l.relabel`
    keys besides `enabled` (which adds the soft-label columns), and two values of other sections.

    Attributes:
      epochs, batch_size: the student's training (SRe2L: 300, 64).
      lr, weight_decay: AdamW's, the lr cosine-decayed to 0 over all steps (SRe2L: 1e-3, 0.01).
      temperature: T of the KL to the teacher's soft labels (SRe2L: 20).
      min_crop_scale (derived): `sre2l.min_crop_scale`, the views' RandomResizedCrop(scale=(it, 1)).
      test_batch_size (derived): `eval.test_batch_size`.
    """

    epochs: int = 300
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.01
    temperature: float = 20.0
    min_crop_scale: float = derived(MIN_SCALE)
    test_batch_size: int = derived(500)

    def __post_init__(self):
        for name, reference in (("temperature", 20), ("lr", 1e-3)):
            require_positive(f"sre2l.relabel.{name}", getattr(self, name), note=f"SRe2L: {reference}")
        require_non_negative("sre2l.relabel.weight_decay", self.weight_decay, note="SRe2L: 0.01")
        for name in ("epochs", "batch_size"):
            require_int(f"sre2l.relabel.{name}", getattr(self, name), minimum=1)

    def augment_fn(self) -> training.AugmentFn:
        """Per-image random resized crop + flip of every training batch (the views the teacher labels)."""
        return functools.partial(random_resized_crop_flip, min_scale=self.min_crop_scale)


def student_optimizer(protocol: RelabelProtocol, num_images: int) -> optax.GradientTransformation:
    """AdamW(lr, weight_decay) with the lr cosine-decayed to 0 over all `epochs` of steps."""
    steps = protocol.epochs * training.steps_per_epoch(num_images, protocol.batch_size)
    return optax.adamw(optax.cosine_decay_schedule(protocol.lr, steps), weight_decay=protocol.weight_decay)


@dataclasses.dataclass(frozen=True)
class SoftLabelLoss:
    """The soft-label student's `evaluation.StudentLoss`, loss_args the teacher's variables: KL at
    `temperature` from the frozen teacher's prediction (eval mode) on the view the student saw."""

    teacher_model: nn.Module
    temperature: float

    def __call__(self, teacher_variables, logits, labels, seen, epoch) -> jax.Array:
        teacher_logits, _ = self.teacher_model.apply(teacher_variables, seen, train=False)
        return losses.kl_divergence(logits, jax.lax.stop_gradient(teacher_logits), self.temperature)


def student(model: nn.Module, protocol: RelabelProtocol, teacher_model: nn.Module) -> evaluation.Student:
    """A soft-label student of `model`: `SoftLabelLoss` at the protocol's T, AdamW (`student_optimizer`)."""
    return evaluation.Student(
        model, protocol, SoftLabelLoss(teacher_model, protocol.temperature), student_optimizer
    )


def evaluate_archs_soft(
    archs: Sequence[str],
    real: RealData,
    images: jax.Array,
    key: jax.Array,
    *,
    protocol: RelabelProtocol,
    teacher: tuple[nn.Module, dict],
    networks: evaluation.Networks,
    log: Callable[[str], None] = print,
) -> dict[str, dict]:
    """Soft-label students of every architecture: {arch: {'mean', 'std', 'accs', 'seconds',
    'temperature'}}; architecture i's students use `split(fold_in(key, i), networks.num_nets)`, run as
    `networks` says (`evaluation.train_students`)."""
    teacher_model, teacher_variables = teacher
    labels = jnp.zeros(images.shape[:1], jnp.int32)  # unused: the soft labels replace them

    def accuracies(model, arch_key):
        accs = evaluation.train_students(
            student(model, protocol, teacher_model), jax.random.split(arch_key, networks.num_nets), images,
            labels, test=(real.test_images, real.test_labels), loss_args=teacher_variables,
            parallel=networks.parallel, devices=networks.devices,
        )  # fmt: skip
        return accs, {"temperature": protocol.temperature}

    return evaluation.for_each_arch(
        archs, real, key, accuracies, note=lambda _: f"T {protocol.temperature:g}", label=column,
        conv=networks.conv, log=log,
    )  # fmt: skip
