"""Distribution matching (DM): Zhao & Bilen, "Dataset Condensation with Distribution Matching", WACV 2023.

One outer iteration, as the reference `main_DM.py` (VICO-UoE/DatasetCondensation; DESIGN §4.2): a fresh
randomly initialised network (drawn from the model pool when one is configured), its parameters
constant, embeds a real batch of `batch_real` images and the synthetic images of every class, both
under the same DSA op and parameters (siamese: one key per class), and the pixels take one
SGD(lr_img, momentum_img) step on

    L(S) = Σ_c ‖ mean_i emb(A(R_c))_i − mean_j emb(A(S_c))_j ‖²

with emb the model's `out['embedding']` (the classifier's input). Networks without BatchNorm embed one
class at a time under `lax.map` (one copy of the graph; the gradient of S_c is taken class by class, so
a class's residuals are freed before the next), the classes split over `Settings.devices` devices
(`sharding.over_class_shards`: class c's work is the same on any device, so the set does not depend on
the device count); BatchNorm networks embed all classes' real images in one train-mode batch and all
synthetic images in another, as the reference does, because their batch statistics depend on the whole
batch (that path runs on one device).

The iteration is ONE jitted program, `outer_step`, compiled once per (architecture, `Settings`).
Randomness: step t uses `fold_in(state.key, t)`, split into the network's initialisation and the
matching key (class c's real batch and DSA key from `fold_in(match_key, c)`), so a resumed run repeats
exactly.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from jaxdd import augment, sharding, training
from jaxdd.data.real import RealData, sample_class_batch
from jaxdd.errors import require_in_interval, require_int, require_positive
from jaxdd.methods.base import (
    NO_HOOKS,
    DistillState,
    Hooks,
    Method,
    bind_model_step,
    init_state,
    pixel_step,
    sgd_pixel_optimizer,
)
from jaxdd.settings import derived, from_section, section_config

__all__ = [
    "METHOD",
    "Settings",
    "class_embedding_distance",
    "default_config",
    "init",
    "make_step",
    "matching_loss",
    "matching_loss_and_grad",
    "outer_step",
    "validate",
]


def default_config() -> ml_collections.ConfigDict:
    """The `config.dm` defaults: `Settings`' (the reference's, DESIGN §4.2)."""
    return section_config(Settings)


@dataclasses.dataclass(frozen=True)
class Settings:
    """`config.dm`, one DM run's static settings (hashable: a `jit` static argument).

    Attributes:
      batch_real: real images per class per iteration (`settings_from_config` caps it to the smallest
        class). lr_img, momentum_img: the pixels' SGD (the DM readme: lr 1; CIFAR-10 at IPC ≥ 100: 10).
      dsa_strategy: 'dsa' = the dataset's strategy (`augment.default_strategy`), 'none', or a strategy.
      strategy (derived): the strategy applied, '' for none. devices (derived): the devices the per-class
        path's classes are split over.
    """

    batch_real: int = 256
    lr_img: float = 1.0
    momentum_img: float = 0.5
    dsa_strategy: str = "dsa"
    strategy: str = derived("")
    devices: int = derived(1)

    def __post_init__(self):
        require_int("dm.batch_real", self.batch_real, minimum=1, note="the reference: 256")
        require_positive("dm.lr_img", self.lr_img, note="reference: 1; CIFAR-10 IPC ≥ 100: 10")
        require_in_interval("dm.momentum_img", self.momentum_img, "[0, 1)", note="reference 0.5")
        augment.check_strategy_key("dm.dsa_strategy", self.dsa_strategy)

    @property
    def pixel_optimizer(self) -> optax.GradientTransformation:
        return sgd_pixel_optimizer(self.lr_img, self.momentum_img)


def settings_from_config(
    config: ml_collections.ConfigDict, *, min_class_count: int, num_classes: int | None = None
) -> Settings:
    """The run's `Settings` from `config.dm`: `batch_real` capped to the smallest class (the reference
    draws `permutation(class)[:n]`); the strategy resolved (`augment.resolve_strategy`); classes over
    `config.devices` devices (`sharding.resolve_devices`; one when `num_classes` is not given)."""
    dm = config.dm
    strategy = augment.resolve_strategy(dm.dsa_strategy, config.dataset)
    return from_section(
        Settings,
        dm,
        batch_real=min(dm.batch_real, min_class_count),
        strategy="_".join(augment.parse_strategy(strategy)),
        devices=sharding.resolve_devices(config.devices, num_classes) if num_classes else 1,
    )


# ---- the loss ----


def embed(model: nn.Module, params, batch_stats, images: jax.Array) -> jax.Array:
    """Embeddings [B, D] of images [B, H, W, C]: train mode (batch statistics for BatchNorm nets, as the
    reference's `net.train()`); the running statistics it would update are discarded."""
    _, out, _ = training.apply_model(model, params, batch_stats, images, train=True)
    return out["embedding"]


def class_embedding_distance(real_embedding: jax.Array, syn_embedding: jax.Array) -> jax.Array:
    """‖mean(real_embedding, 0) − mean(syn_embedding, 0)‖² for embeddings [B_r, D] and [B_s, D]."""
    return jnp.sum(jnp.square(jnp.mean(real_embedding, 0) - jnp.mean(syn_embedding, 0)))


def _class_views(real: RealData, syn_c: jax.Array, label, key, settings: Settings):
    """Class `label`'s real batch [batch_real, ...] and its synthetic images [ipc, ...], both augmented
    with the same DSA key (siamese); batch and key from `fold_in(key, label)`."""
    real_key, aug_key = jax.random.split(jax.random.fold_in(key, label))
    real_c = sample_class_batch(real, label, real_key, settings.batch_real)
    if settings.strategy:
        real_c = augment.augment(real_c, aug_key, strategy=settings.strategy, siamese=True)
        syn_c = augment.augment(syn_c, aug_key, strategy=settings.strategy, siamese=True)
    return real_c, syn_c


def _per_class_loss_and_grad(model, params, images, real, key, settings):
    """Σ_c D_c and ∂/∂images, one class at a time (`lax.map`) on each of `settings.devices` devices'
    blocks of classes; networks without BatchNorm only."""

    def one_class(xs):
        label, syn_c = xs

        def distance(syn_c):
            real_c, syn_view = _class_views(real, syn_c, label, key, settings)
            real_embedding = jax.lax.stop_gradient(embed(model, params, {}, real_c))
            return class_embedding_distance(real_embedding, embed(model, params, {}, syn_view))

        return jax.value_and_grad(distance)(syn_c)

    syn = images.reshape(real.num_classes, -1, *images.shape[1:])
    labels = jnp.arange(real.num_classes, dtype=jnp.int32)
    block = lambda labels, syn: jax.lax.map(one_class, (labels, syn))
    losses, grads = sharding.over_class_shards(block, settings.devices)(labels, syn)
    return jnp.sum(losses), grads.reshape(images.shape)


def _all_classes_loss(model, params, batch_stats, images, real, key, settings):
    """Σ_c D_c with all classes' real images in one train-mode batch and all synthetic ones in another
    (BatchNorm nets: the batch statistics are those of all classes together, as in the reference)."""
    syn = images.reshape(real.num_classes, -1, *images.shape[1:])
    labels = jnp.arange(real.num_classes, dtype=jnp.int32)
    real_views, syn_views = jax.lax.map(
        lambda xs: _class_views(real, xs[1], xs[0], key, settings), (labels, syn)
    )
    flat = lambda x: x.reshape(-1, *x.shape[2:])
    real_embedding = jax.lax.stop_gradient(embed(model, params, batch_stats, flat(real_views)))
    syn_embedding = embed(model, params, batch_stats, flat(syn_views))
    real_means = real_embedding.reshape(real.num_classes, -1, real_embedding.shape[-1]).mean(1)
    syn_means = syn_embedding.reshape(real.num_classes, -1, syn_embedding.shape[-1]).mean(1)
    return jnp.sum(jnp.square(real_means - syn_means))


def matching_loss_and_grad(
    model: nn.Module,
    params,
    batch_stats,
    images: jax.Array,
    real: RealData,
    key: jax.Array,
    settings: Settings,
) -> tuple[jax.Array, jax.Array]:
    """The DM loss Σ_c ‖mean emb(A(R_c)) − mean emb(A(S_c))‖² (scalar) and its gradient w.r.t. images
    [C·ipc, H, W, C] (class-major); `batch_stats` non-empty selects the all-classes BatchNorm path."""
    if jax.tree.leaves(batch_stats):
        return jax.value_and_grad(
            lambda x: _all_classes_loss(model, params, batch_stats, x, real, key, settings)
        )(images)
    return _per_class_loss_and_grad(model, params, images, real, key, settings)


def matching_loss(model, params, batch_stats, images, real, key, settings: Settings) -> jax.Array:
    """The DM loss alone (see `matching_loss_and_grad`)."""
    return matching_loss_and_grad(model, params, batch_stats, images, real, key, settings)[0]


# ---- the outer iteration ----


@functools.partial(jax.jit, static_argnames=("model", "settings"))
def outer_step(
    model: nn.Module,
    settings: Settings,
    state: DistillState,
    real: RealData,
    hooks: Hooks = NO_HOOKS,
) -> tuple[DistillState, dict]:
    """One iteration: a fresh network, one `pixel_step` (with the plug-ins' `hooks`: MetaDD's auxiliary
    networks, DESIGN §4.6; the pool's gradient scale). Returns the new state (step + 1) and metrics:
    'loss' the reference's per-class loss (Σ_c D_c / C), 'grad_norm' the base pixel gradient's L2 norm,
    'images' the real and synthetic images embedded (the progress line's images/s), and MetaDD's."""
    net_key, match_key = jax.random.split(state.step_key)
    params, batch_stats = training.init_variables(model, net_key, state.images.shape[1:])

    def loss_and_grad(images, key):
        return (*matching_loss_and_grad(model, params, batch_stats, images, real, key, settings), {})

    def backbone(images):  # MetaDD's kl_target='backbone': this iteration's network, eval mode
        return training.apply_model(model, params, batch_stats, images, train=False)[0]

    tx = settings.pixel_optimizer
    images, opt_state, metrics = pixel_step(
        loss_and_grad, tx, state.images, state.opt_state, state.labels, match_key, hooks=hooks,
        backbone=backbone,
    )  # fmt: skip
    metrics = {
        **metrics,
        "loss": metrics["loss"] / real.num_classes,
        "images": jnp.float32(state.images.shape[0] + real.num_classes * settings.batch_real),
    }
    return state.advance(images, opt_state), metrics


# ---- the Method interface ----


def init(config: ml_collections.ConfigDict, real: RealData, key: jax.Array) -> DistillState:
    """The first state (`base.init_state`): `config.init` images (DM: 'real'), SGD's state, the key."""
    settings = settings_from_config(config, min_class_count=real.min_class_count)
    return init_state(config, real, key, settings.pixel_optimizer)


def make_step(config: ml_collections.ConfigDict, real: RealData, *, log: Callable[[str], None] = print):
    """`step(state, real) -> (state, metrics)`: `outer_step` bound to each architecture's model and the
    `Settings` (`base.bind_model_step`: the model pool and MetaDD's auxiliary networks)."""
    settings = settings_from_config(
        config, min_class_count=real.min_class_count, num_classes=real.num_classes
    )
    return bind_model_step(config, real, outer_step, settings, log=log)


def validate(config: ml_collections.ConfigDict, info) -> None:
    """UserError for a bad `dm.*` value (`Settings` checks each; info: the dataset's `DatasetInfo`); no
    data, no compilation."""
    from_section(Settings, config.dm)
    sharding.resolve_devices(config.devices, info.num_classes)


METHOD = Method(init=init, make_step=make_step, validate=validate, lr_keys=("dm.lr_img",))
