"""Gradient matching: DC (Zhao, Mopuri & Bilen, ICLR 2021) and DSA (Zhao & Bilen, ICML 2021).

One outer iteration, as the reference `main.py` (VICO-UoE/DatasetCondensation; DESIGN §4.1): K fresh
networks; `outer_loop` times { BN nets: refresh the running statistics with `bn_images_per_class` real
images per class in train mode (PyTorch momentum 0.1), then freeze them; match (`matching_loss`) and
take one SGD(lr_img, momentum_img) pixel step on the loss summed over classes, averaged over the K
networks; unless last, train each network `inner_loop` EPOCHS over the synthetic set (plain SGD lr_net,
shuffled batches of `batch_train`, per-image DSA for 'dsa') }.

The iteration is ONE jitted program, `outer_step`, compiled once per (architecture, `Settings`) and
cached across `make_step` calls: the outer loop a `scan` (none when outer_loop is 1), the inner
training `training.train_epochs` (a `scan`) behind a `cond` that skips it after the last match.
Randomness: step t uses `fold_in(state.key, t)`, split into the networks' initialisation and one key
per outer-loop step (BN batch, matching, inner training), so a resumed run repeats exactly. Count
compilations with `outer_step._cache_size()`.
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
from jaxdd.data.real import RealData, class_indices
from jaxdd.errors import UserError, require, require_in_interval, require_int, require_positive
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
from jaxdd.methods.matching_distance import METRICS, distance
from jaxdd.methods.matching_loss import (
    CLASS_LOOPS,
    NET_LOOPS,
    MatchOptions,
    matching_loss,
    matching_loss_and_grad,
    over_nets,
    stacked_matching_loss,
    stacked_matching_loss_and_grad,
)
from jaxdd.models import get_model
from jaxdd.settings import derived, from_section, section_config

__all__ = [
    "METHOD",
    "MatchOptions",
    "Settings",
    "default_config",
    "distance",
    "init",
    "loops_for_ipc",
    "make_step",
    "matching_loss",
    "matching_loss_and_grad",
    "outer_step",
    "stacked_matching_loss",
    "stacked_matching_loss_and_grad",
    "validate",
]

# (outer_loop, inner_loop) by IPC: the reference's `get_loops`.
LOOPS = {1: (1, 1), 10: (10, 50), 20: (20, 25), 30: (30, 20), 40: (40, 15), 50: (50, 10)}
# How classes and the K networks are iterated when the config says 'auto' / -1 (`jaxdd.config` resolves
# them with `backend_default`). CPU: measured with benchmarks/bench_gradient_matching.py (results/), one
# class at a time under lax.map: 2x faster than unrolled and 9x less memory. Accelerators (not measured
# here): classes vmapped in groups of 10 (all classes of a 10-class set; bounded memory for CIFAR-100).
BACKEND_DEFAULTS = {
    "cpu": {"parallel": "loop", "class_chunk": 1, "class_loop": "map"},
    "gpu": {"parallel": "vmap", "class_chunk": 10, "class_loop": "map"},
    "tpu": {"parallel": "vmap", "class_chunk": 10, "class_loop": "map"},
}


def backend_default(name: str, backend: str):
    """`BACKEND_DEFAULTS`' gm.`name` ('parallel', 'class_chunk', 'class_loop') on `backend` (another
    accelerator: the GPU's)."""
    return BACKEND_DEFAULTS.get(backend, BACKEND_DEFAULTS["gpu"])[name]


def default_config() -> ml_collections.ConfigDict:
    """The `config.gm` defaults: `Settings`' (the reference's, DESIGN §4.1)."""
    return section_config(Settings)


def loops_for_ipc(ipc: int, outer: int = 0, inner: int = 0) -> tuple[int, int]:
    """(outer_loop, inner_loop): the given values, each 0 replaced by the reference's table entry."""
    if outer and inner:
        return outer, inner
    if ipc not in LOOPS:
        raise UserError(
            f"gm.outer_loop and gm.inner_loop have no reference values for ipc={ipc} (the table covers "
            f"ipc {', '.join(map(str, LOOPS))}): set both explicitly, e.g. --config.gm.outer_loop=10 "
            "--config.gm.inner_loop=50."
        )
    table_outer, table_inner = LOOPS[ipc]
    return outer or table_outer, inner or table_inner


@dataclasses.dataclass(frozen=True)
class Settings:
    """`config.gm`, one gradient-matching run's static settings (hashable: a `jit` static argument).

    The fields are the section's keys with the reference's defaults; `settings_from_config` resolves the
    run's: loops from the IPC table where 0, `batch_real` and `bn_images_per_class` capped to the smallest
    class, the backend's choices for the markers (-1, 'auto'), `strategy` and `devices`.

    Attributes:
      outer_loop, inner_loop: matches per iteration, inner training EPOCHS between them (0: `LOOPS`).
      batch_real: real images per class per match. batch_train: the inner loop's batch size.
      metric: 'ours' | 'mse' | 'cos'. num_nets: K networks per iteration, the loss averaged over them.
      class_chunk: classes per vmap group (0: all at once; -1: `BACKEND_DEFAULTS`). class_loop: over
        class groups, 'map' (lax.map) | 'unroll' | 'auto'. parallel: over the K networks, 'vmap' |
        'loop' | 'map' | 'auto'. These choose how the work is iterated, never its result.
      bn_images_per_class: real images per class that set BatchNorm statistics.
      dsa_strategy: method 'dsa''s strategy: 'dsa' = the dataset's (`augment.default_strategy`) or a
        strategy string. strategy (derived): the strategy matching and inner training apply, '' for DC.
      devices (derived): the devices the classes are sharded over.
    """

    outer_loop: int = 0
    inner_loop: int = 0
    batch_real: int = 256
    batch_train: int = 256
    lr_img: float = 0.1
    momentum_img: float = 0.5
    lr_net: float = 0.01
    metric: str = "ours"
    num_nets: int = 1
    class_chunk: int = -1
    class_loop: str = "auto"
    bn_images_per_class: int = 16
    dsa_strategy: str = "dsa"
    parallel: str = "auto"
    strategy: str = derived("")
    devices: int = derived(1)

    def __post_init__(self):
        for name in ("outer_loop", "inner_loop"):
            value = getattr(self, name)
            require_int(f"gm.{name}", value, minimum=0, note="0: the reference's value for the IPC")
        for name in ("batch_real", "batch_train", "num_nets", "bn_images_per_class"):
            require_int(f"gm.{name}", getattr(self, name), minimum=1)
        require_int(
            "gm.class_chunk",
            self.class_chunk,
            minimum=-1,
            note="classes per vmap group; 0: all at once; -1: the backend's default",
        )
        require(self.metric in METRICS, f"gm.metric={self.metric!r} must be one of {', '.join(METRICS)}.")
        for name, valid in (("class_loop", ("auto", *CLASS_LOOPS)), ("parallel", ("auto", *NET_LOOPS))):
            value = getattr(self, name)
            require(value in valid, f"gm.{name}={value!r} must be one of {', '.join(valid)}.")
        for name, reference in (("lr_img", 0.1), ("lr_net", 0.01)):
            require_positive(f"gm.{name}", getattr(self, name), note=f"the reference uses {reference}")
        require_in_interval("gm.momentum_img", self.momentum_img, "[0, 1)", note="reference 0.5")
        augment.check_strategy_key("gm.dsa_strategy", self.dsa_strategy)

    @property
    def pixel_optimizer(self) -> optax.GradientTransformation:
        return sgd_pixel_optimizer(self.lr_img, self.momentum_img)

    @property
    def net_optimizer(self) -> optax.GradientTransformation:
        return optax.sgd(self.lr_net)  # the reference's inner loop: plain SGD, no momentum

    @property
    def match_options(self) -> MatchOptions:
        """The `MatchOptions` that `matching_loss` / `stacked_matching_loss` take: the fields of the same
        names (every `MatchOptions` field is one of these settings)."""
        return MatchOptions(**{f.name: getattr(self, f.name) for f in dataclasses.fields(MatchOptions)})


def settings_from_config(
    config: ml_collections.ConfigDict, *, min_class_count: int, num_classes: int = 0
) -> Settings:
    """The run's `Settings` from `config.gm`: loops from the IPC table where 0, `batch_real`,
    `bn_images_per_class` capped to the smallest class (the reference draws `permutation(class)[:n]`,
    i.e. the whole class when it is smaller); `strategy` '' for DC, else `dsa_strategy` resolved
    (`augment.resolve_strategy`); classes sharded over `config.devices` devices
    (`sharding.resolve_devices`; one when `num_classes` is not given). The loops over classes and networks
    must be resolved (no 'auto'/-1: `jaxdd.config.validate` puts the backend's `BACKEND_DEFAULTS`)."""
    gm = config.gm
    outer, inner = loops_for_ipc(config.ipc, gm.outer_loop, gm.inner_loop)
    for name, marker in (("class_chunk", -1), ("class_loop", "auto"), ("parallel", "auto")):
        _require_resolved(name, gm.get(name, marker), marker)
    dsa = config.method == "dsa"
    return from_section(
        Settings,
        gm,
        outer_loop=outer,
        inner_loop=inner,
        batch_real=min(gm.batch_real, min_class_count),
        bn_images_per_class=min(gm.bn_images_per_class, min_class_count),
        strategy=augment.resolve_strategy(gm.dsa_strategy, config.dataset) if dsa else "",
        devices=sharding.resolve_devices(config.devices, num_classes) if num_classes else 1,
    )


def _require_resolved(name: str, value, marker) -> None:
    """gm.`name` must hold the backend's choice already (a missing key is the marker, unresolved)."""
    if value == marker:
        raise UserError(
            f"gm.{name}={value!r} is the backend's choice (BACKEND_DEFAULTS), which jaxdd.config.validate "
            "fills in (jaxdd.config.resolve_backend): validate or resolve the config first."
        )


def _model(config: ml_collections.ConfigDict, num_classes: int, image_shape) -> nn.Module:
    spec = config.model.to_dict() if isinstance(config.model, ml_collections.ConfigDict) else config.model
    return get_model(spec, num_classes=num_classes, image_shape=tuple(image_shape))


# ---- the outer iteration ----


def init_nets(model: nn.Module, settings: Settings, key, image_shape) -> training.TrainState:
    """K freshly initialised networks as one stacked `TrainState` (leading axis K)."""
    init = functools.partial(
        training.init_train_state, model, image_shape=tuple(image_shape), tx=settings.net_optimizer
    )
    return jax.vmap(init)(jax.random.split(key, settings.num_nets))


def refresh_batch_stats(model, settings: Settings, nets, real: RealData, key):
    """One train-mode pass of `bn_images_per_class` real images per class (the reference's BNSizePC)
    through each network: running statistics move 10% towards this batch's, then stay frozen."""
    labels = jnp.arange(real.num_classes)
    rows = jax.vmap(
        lambda c: class_indices(real, c, jax.random.fold_in(key, c), settings.bn_images_per_class)
    )(labels)
    batch = real.train_images[rows.reshape(-1)]

    def refresh(net):
        _, _, stats = training.apply_model(model, net.params, net.batch_stats, batch, train=True)
        return net.replace(batch_stats=stats)

    return over_nets(refresh, nets, settings.parallel)


def train_nets(model, settings: Settings, nets, images, labels, key):
    """`inner_loop` epochs of each network on the synthetic set (its own shuffling per network).

    Returns (nets, mean over networks of the last epoch's CE).
    """
    aug = None
    if settings.strategy:
        aug = functools.partial(augment.augment, strategy=settings.strategy, siamese=False)

    def train(xs):
        net, net_key = xs
        net, losses = training.train_epochs(
            model, settings.net_optimizer, net, images, labels, net_key,
            epochs=settings.inner_loop, batch_size=settings.batch_train, augment=aug,
        )  # fmt: skip
        return net, losses[-1]

    keys = jax.random.split(key, settings.num_nets)
    nets, losses = over_nets(train, (nets, keys), settings.parallel)
    return nets, jnp.mean(losses)


@functools.partial(jax.jit, static_argnames=("model", "settings"))
def outer_step(
    model: nn.Module,
    settings: Settings,
    state: DistillState,
    real: RealData,
    hooks: Hooks = NO_HOOKS,
) -> tuple[DistillState, dict]:
    """One outer iteration (fresh networks, `outer_loop` `pixel_step`s); a pure function of `state`.

    Returns the new state (step + 1) and metrics: 'loss' the reference's loss_avg (Σ_c D / C, averaged
    over the outer loop and the K networks), 'loss_first'/'loss_last' the same for the first and last
    match, 'grad_norm' the mean L2 norm of the base pixel gradient, 'inner_ce' the mean CE of the
    networks' last inner epoch (0 when outer_loop is 1), 'images' the real and synthetic images matched.
    With MetaDD auxiliary networks in `hooks` (DESIGN §4.6) every pixel step adds their gradient and the
    metrics gain MetaDD's, averaged over the outer loop.
    """
    net_key, loop_key = jax.random.split(state.step_key)
    nets = init_nets(model, settings, net_key, state.images.shape[1:])
    tx = settings.pixel_optimizer
    batch_norm = bool(jax.tree.leaves(nets.batch_stats))
    last = settings.outer_loop - 1

    def match_and_train(carry, ol):
        images, opt_state, nets = carry
        bn_key, match_key, inner_key = jax.random.split(jax.random.fold_in(loop_key, ol), 3)
        if batch_norm:
            nets = refresh_batch_stats(model, settings, nets, real, bn_key)

        def loss_and_grad(images, key):
            options = settings.match_options
            return (*stacked_matching_loss_and_grad(model, nets, images, real, key, options), {})

        def backbone(x):  # MetaDD's kl_target='backbone': the K networks' mean prediction, eval mode
            apply = lambda net: training.apply_model(model, net.params, net.batch_stats, x, train=False)[0]
            log_p = jax.nn.log_softmax(over_nets(apply, nets, settings.parallel))
            return jax.nn.logsumexp(log_p, axis=0) - jnp.log(log_p.shape[0])

        images, opt_state, step_metrics = pixel_step(
            loss_and_grad, tx, images, opt_state, state.labels, match_key, hooks=hooks, backbone=backbone
        )
        inner_ce = jnp.zeros(())
        if last:  # static: with one outer loop the networks are never trained
            nets, inner_ce = jax.lax.cond(
                ol < last,
                lambda n: train_nets(model, settings, n, images, state.labels, inner_key),
                lambda n: (n, jnp.zeros(())),
                nets,
            )
        return (images, opt_state, nets), (step_metrics, inner_ce)

    carry = (state.images, state.opt_state, nets)
    if settings.outer_loop == 1:  # the single match needs no loop
        (images, opt_state, _), outs = match_and_train(carry, jnp.int32(0))
        step_metrics, inner_ces = jax.tree.map(lambda x: x[None], outs)
    else:
        (images, opt_state, _), (step_metrics, inner_ces) = jax.lax.scan(
            match_and_train, carry, jnp.arange(settings.outer_loop)
        )
    per_class = step_metrics.pop("loss") / real.num_classes
    metrics = {
        "loss": jnp.mean(per_class),
        "loss_first": per_class[0],
        "loss_last": per_class[-1],
        "inner_ce": jnp.sum(inner_ces) / max(last, 1),
        # real + synthetic images matched (the progress line's images/s)
        "images": jnp.float32(settings.num_nets * settings.outer_loop * state.images.shape[0])
        + settings.num_nets * settings.outer_loop * real.num_classes * settings.batch_real,
        **{name: jnp.mean(values) for name, values in step_metrics.items()},  # grad_norm, MetaDD's
    }
    return state.advance(images, opt_state), metrics


# ---- the Method interface ----


def init(config: ml_collections.ConfigDict, real: RealData, key: jax.Array) -> DistillState:
    """The first state (`base.init_state`): `config.init` ('real' | 'noise') images, SGD's state, the key."""
    settings = settings_from_config(config, min_class_count=real.min_class_count)
    return init_state(config, real, key, settings.pixel_optimizer)


def make_step(config: ml_collections.ConfigDict, real: RealData, *, log: Callable[[str], None] = print):
    """`step(state, real) -> (state, metrics)`: the jitted `outer_step` bound to each architecture's model
    and the `Settings` (`base.bind_model_step`: the model pool, DESIGN §4.4, and MetaDD's auxiliary networks
    in `hooks`); without a pool a `functools.partial` (`step.args` = (model, settings)), with one a
    `pool.PooledStep` that binds each drawn architecture once."""
    settings = settings_from_config(
        config, min_class_count=real.min_class_count, num_classes=real.num_classes
    )
    return bind_model_step(config, real, outer_step, settings, log=log)


def validate(config: ml_collections.ConfigDict, info) -> None:
    """UserError for a bad `gm.*` value (`Settings` checks each; info: the dataset's `DatasetInfo`) or a
    combination the dataset or method refuses; no data, no compilation."""
    gm = config.gm
    require(config.method in ("dc", "dsa"), f"method={config.method!r}: gradient matching is 'dc' or 'dsa'.")
    from_section(Settings, gm)
    loops_for_ipc(config.ipc, gm.outer_loop, gm.inner_loop)
    require(
        config.method == "dsa" or gm.dsa_strategy == "dsa",
        f"gm.dsa_strategy={gm.dsa_strategy!r} is set but method='dc' matches without augmentation: "
        "use --config.method=dsa, or leave gm.dsa_strategy at 'dsa'.",
    )
    sharding.resolve_devices(config.devices, info.num_classes)
    _model(config, info.num_classes, info.image_shape)


METHOD = Method(init=init, make_step=make_step, validate=validate, lr_keys=("gm.lr_img",))
