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

from jaxdd import evaluation, training
from jaxdd.data.real import RealData
from jaxdd.resized_crop import random_resized_crop_flip

COLUMN_SUFFIX = "+soft"


def column(arch: str) -> str:
    """The eval.json key and table column of `arch`'s soft-label students, e.g. 'ConvNet+soft'."""
    return arch + COLUMN_SUFFIX


@dataclasses.dataclass(frozen=True)
class RelabelProtocol:
    """How a soft-label student is trained (hashable: a `jit` static argument)."""

    epochs: int = 300
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.01
    temperature: float = 20.0
    min_crop_scale: float = 0.08
    test_batch_size: int = 500


def soft_label_loss(student_logits: jax.Array, teacher_logits: jax.Array, temperature) -> jax.Array:
    """KL(softmax(z_t/T) ‖ softmax(z_s/T)) summed over classes, averaged over the batch; logits [B, K].

    Classes where the teacher's probability underflows to 0 contribute 0 (x·log x → 0).
    """
    log_p_teacher = jax.nn.log_softmax(teacher_logits / temperature, axis=-1)
    log_p_student = jax.nn.log_softmax(student_logits / temperature, axis=-1)
    p_teacher = jnp.exp(log_p_teacher)
    terms = jnp.where(p_teacher > 0, p_teacher * (log_p_teacher - log_p_student), 0.0)
    return jnp.sum(terms, axis=-1).mean()


def student_optimizer(protocol: RelabelProtocol, num_images: int) -> optax.GradientTransformation:
    """AdamW(lr, weight_decay) with the lr cosine-decayed to 0 over all `epochs` of steps."""
    steps = protocol.epochs * training.steps_per_epoch(num_images, protocol.batch_size)
    return optax.adamw(optax.cosine_decay_schedule(protocol.lr, steps), weight_decay=protocol.weight_decay)


def train_student(
    model: nn.Module,
    protocol: RelabelProtocol,
    teacher_model: nn.Module,
    teacher_variables: dict,
    key: jax.Array,
    images: jax.Array,
) -> training.TrainState:
    """A fresh student trained on images [N, H, W, C] with the teacher's soft labels of each view."""
    init_key, train_key = jax.random.split(key)
    tx = student_optimizer(protocol, images.shape[0])
    state = training.init_train_state(model, init_key, images.shape[1:], tx)
    views = functools.partial(random_resized_crop_flip, min_scale=protocol.min_crop_scale)

    def loss(logits, labels, seen, epoch):
        teacher_logits, _ = teacher_model.apply(teacher_variables, seen, train=False)
        return soft_label_loss(logits, jax.lax.stop_gradient(teacher_logits), protocol.temperature)

    labels = jnp.zeros(images.shape[:1], jnp.int32)  # unused: the soft labels replace them
    state, _ = training.train_epochs(
        model, tx, state, images, labels, train_key,
        epochs=protocol.epochs, batch_size=protocol.batch_size, augment=views, loss=loss,
    )  # fmt: skip
    return state


def student_accuracy(
    model, protocol, teacher_model, teacher_variables, key, images, test_images, test_labels
) -> jax.Array:
    """`train_student`, then its accuracy (scalar) on (test_images [M,H,W,C], test_labels [M])."""
    state = train_student(model, protocol, teacher_model, teacher_variables, key, images)
    correct = training.predict_correct(
        model, state.params, state.batch_stats, test_images, test_labels, batch_size=protocol.test_batch_size
    )
    return correct / test_labels.shape[0]


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3, 4))
def _student_accuracy_block(model, protocol, teacher_model, mode, devices, keys, teacher_variables, *data):
    one = lambda key, teacher_variables, *data: student_accuracy(
        model, protocol, teacher_model, teacher_variables, key, *data
    )
    return evaluation.network_block(one, mode, devices)(keys, teacher_variables, *data)


def evaluate_archs_soft(
    archs: Sequence[str],
    real: RealData,
    images: jax.Array,
    key: jax.Array,
    *,
    protocol: RelabelProtocol,
    teacher: tuple[nn.Module, dict],
    num_nets: int,
    parallel: str = "auto",
    devices: int = 1,
    log: Callable[[str], None] = print,
) -> dict[str, dict]:
    """Soft-label students of every architecture: {arch: {'mean', 'std', 'accs', 'seconds',
    'temperature'}}; architecture i's students use `split(fold_in(key, i), num_nets)`, split over
    `devices` devices (as `evaluation.evaluate_model`)."""
    teacher_model, teacher_variables = teacher
    shared = (teacher_variables, images, real.test_images, real.test_labels)

    def accuracies(model, arch_key):
        block = lambda mode, net_devices, block_keys: _student_accuracy_block(
            model, protocol, teacher_model, mode, net_devices, block_keys, *shared
        )
        keys = jax.random.split(arch_key, num_nets)
        accs = evaluation.run_networks(block, keys, parallel=parallel, devices=devices)
        return accs, {"temperature": protocol.temperature}

    return evaluation.for_each_arch(
        archs, real, key, accuracies, note=lambda _: f"T {protocol.temperature:g}", label=column, log=log
    )
