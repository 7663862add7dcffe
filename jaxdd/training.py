"""Pure training and evaluation steps for one network, used by evaluation, inner loops and teachers.

A network's trainable state is a `TrainState` pytree (params, BatchNorm statistics, optimiser state),
so K networks are one stacked `TrainState` and `jax.vmap` trains them together. Nothing here reads a
config: callers pass the model, the optax transform and shapes explicitly.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct

# (images [B,H,W,C], key) -> augmented images [B,H,W,C]; None means no augmentation.
AugmentFn = Callable[[jax.Array, jax.Array], jax.Array] | None
# (logits [B,K], labels [B], images [B,H,W,C] as the network saw them) -> scalar; None: `cross_entropy`.
BatchLoss = Callable[[jax.Array, jax.Array, jax.Array], jax.Array] | None
# As BatchLoss, plus the epoch (int32 scalar, from 0): a loss that changes over training (KD's τ decay).
EpochLoss = Callable[[jax.Array, jax.Array, jax.Array, jax.Array], jax.Array] | None


@struct.dataclass
class TrainState:
    """One network's trainable state. `batch_stats` is `{}` for networks without BatchNorm."""

    params: dict
    batch_stats: dict
    opt_state: optax.OptState


def init_variables(model: nn.Module, key: jax.Array, image_shape: tuple[int, int, int]) -> tuple[dict, dict]:
    """Fresh (params, batch_stats) of `model` for images of `image_shape` (H, W, C)."""
    variables = model.init(key, jnp.zeros((1, *image_shape), jnp.float32), train=False)
    return variables["params"], variables.get("batch_stats", {})


def init_train_state(
    model: nn.Module, key: jax.Array, image_shape: tuple[int, int, int], tx: optax.GradientTransformation
) -> TrainState:
    """A freshly initialised network and its optimiser state."""
    params, batch_stats = init_variables(model, key, image_shape)
    return TrainState(params=params, batch_stats=batch_stats, opt_state=tx.init(params))


def apply_model(
    model: nn.Module, params: dict, batch_stats: dict, images: jax.Array, *, train: bool
) -> tuple[jax.Array, dict, dict]:
    """Runs `model` on images [B,H,W,C]; returns (logits [B,K], intermediates, new batch_stats).

    In train mode BatchNorm uses batch statistics and returns updated running statistics; in eval
    mode (and for networks without BatchNorm) `batch_stats` comes back unchanged.
    """
    variables = {"params": params, **({"batch_stats": batch_stats} if batch_stats else {})}
    if train and batch_stats:
        (logits, out), updates = model.apply(variables, images, train=True, mutable=["batch_stats"])
        return logits, out, updates["batch_stats"]
    logits, out = model.apply(variables, images, train=train)
    return logits, out, batch_stats


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean softmax cross-entropy of logits [B,K] against integer labels [B]."""
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def sgd_step(
    model: nn.Module,
    tx: optax.GradientTransformation,
    state: TrainState,
    images: jax.Array,
    labels: jax.Array,
    key: jax.Array,
    *,
    augment: AugmentFn = None,
    loss: BatchLoss = None,
) -> tuple[TrainState, jax.Array]:
    """One optimiser step on a batch (images [B,H,W,C], labels [B]); returns (state, loss).

    `loss(logits, labels, images)` sees the augmented images (a KD teacher labels what the student saw);
    None is `cross_entropy`.
    """
    if augment is not None:
        images = augment(images, key)

    def loss_fn(params):
        logits, _, batch_stats = apply_model(model, params, state.batch_stats, images, train=True)
        value = cross_entropy(logits, labels) if loss is None else loss(logits, labels, images)
        return value, batch_stats

    (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    return TrainState(params=params, batch_stats=batch_stats, opt_state=opt_state), loss


def train_one_epoch(
    model: nn.Module,
    tx: optax.GradientTransformation,
    state: TrainState,
    images: jax.Array,
    labels: jax.Array,
    epoch_key: jax.Array,
    epoch_index: jax.Array | int,
    *,
    batch_size: int,
    augment: AugmentFn = None,
    loss: EpochLoss = None,
) -> tuple[TrainState, jax.Array]:
    """One shuffled pass over (images [N,H,W,C], labels [N]); returns (state, mean batch loss).

    Like a PyTorch DataLoader with shuffle=True, drop_last=False: a fresh permutation in `N // batch_size`
    full batches (a `scan`) plus one smaller batch for the remainder. `loss(logits, labels, images,
    epoch_index)` replaces the cross-entropy (see `sgd_step`).
    """
    num_images = images.shape[0]
    num_full, remainder = divmod(num_images, batch_size)
    keys = jax.random.split(epoch_key, num_full + 2)
    order = jax.random.permutation(keys[0], num_images)
    full_batches = order[: num_full * batch_size].reshape(num_full, batch_size)
    batch_loss = None if loss is None else lambda *args: loss(*args, epoch_index)
    step = functools.partial(sgd_step, model, tx, augment=augment, loss=batch_loss)

    def batch_step(state, xs):
        idx, step_key = xs
        return step(state, images[idx], labels[idx], step_key)

    state, losses = jax.lax.scan(batch_step, state, (full_batches, keys[1:-1]))
    if remainder:
        idx = order[num_full * batch_size :]
        state, last_loss = step(state, images[idx], labels[idx], keys[-1])
        losses = jnp.concatenate([losses, last_loss[None]])
    return state, losses.mean()


def epoch_keys(key: jax.Array, epochs: int) -> jax.Array:
    """The per-epoch keys [epochs] that `train_epochs(key=key)` uses: a loop of `train_one_epoch` over
    them trains the same network."""
    return jax.random.split(key, epochs)


def train_epochs(
    model: nn.Module,
    tx: optax.GradientTransformation,
    state: TrainState,
    images: jax.Array,
    labels: jax.Array,
    key: jax.Array,
    *,
    epochs: int,
    batch_size: int,
    augment: AugmentFn = None,
    loss: EpochLoss = None,
) -> tuple[TrainState, jax.Array]:
    """Trains on (images [N,H,W,C], labels [N]) for `epochs` passes of `train_one_epoch`, one `scan`, so
    the whole training is one compiled program. Returns (state, mean loss per epoch [epochs])."""

    def epoch(state, xs):
        index, epoch_key = xs
        return train_one_epoch(
            model,
            tx,
            state,
            images,
            labels,
            epoch_key,
            index,
            batch_size=batch_size,
            augment=augment,
            loss=loss,
        )

    return jax.lax.scan(epoch, state, (jnp.arange(epochs), epoch_keys(key, epochs)))


def steps_per_epoch(num_images: int, batch_size: int) -> int:
    """Optimiser steps in one epoch with a final partial batch kept (drop_last=False)."""
    return -(-num_images // batch_size)


def predict_correct(
    model: nn.Module,
    params: dict,
    batch_stats: dict,
    images: jax.Array,
    labels: jax.Array,
    *,
    batch_size: int,
) -> jax.Array:
    """Number of correctly classified images (eval mode), computed in batches of `batch_size`.

    images [M,H,W,C], labels [M]; M need not divide by `batch_size` (the tail is padded and masked).
    Returns a scalar int32.
    """
    num_images = images.shape[0]
    num_batches = -(-num_images // batch_size)
    pad = num_batches * batch_size - num_images
    images = jnp.pad(images, ((0, pad), (0, 0), (0, 0), (0, 0)))
    labels = jnp.pad(labels, (0, pad), constant_values=-1)  # -1 never equals a prediction

    def count(batch):
        batch_images, batch_labels = batch
        logits, _, _ = apply_model(model, params, batch_stats, batch_images, train=False)
        return jnp.sum(jnp.argmax(logits, -1) == batch_labels)

    batched = (images.reshape(num_batches, batch_size, *images.shape[1:]), labels.reshape(num_batches, -1))
    return jnp.sum(jax.lax.map(count, batched))
