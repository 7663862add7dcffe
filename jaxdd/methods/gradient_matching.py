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
from jaxdd.errors import UserError, is_finite_number, is_int, require
from jaxdd.methods.base import NO_HOOKS, DistillState, Hooks, Method, bind_model_step, init_state, pixel_step
from jaxdd.methods.matching_distance import METRICS, distance
from jaxdd.methods.matching_loss import (
    CLASS_LOOPS,
    NET_LOOPS,
    matching_loss,
    matching_loss_and_grad,
    over_nets,
    stacked_matching_loss,
    stacked_matching_loss_and_grad,
)
from jaxdd.models import get_model

__all__ = [
    "METHOD",
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
    """The `config.gm` defaults (the reference's, DESIGN §4.1); 0 loops = from the IPC table."""
    return ml_collections.ConfigDict(
        {
            "outer_loop": 0,  # 0: the reference's value for the IPC (LOOPS)
            "inner_loop": 0,  # inner training EPOCHS per outer step; 0: from LOOPS
            "batch_real": 256,  # real images per class per match, capped to the smallest class
            "batch_train": 256,  # inner-loop batch size
            "lr_img": 0.1,
            "momentum_img": 0.5,
            "lr_net": 0.01,
            "metric": "ours",  # 'ours' | 'mse' | 'cos'
            "num_nets": 1,  # K networks per iteration, the loss averaged over them
            "class_chunk": -1,  # classes per vmap group; 0: all at once; -1: BACKEND_DEFAULTS
            "class_loop": "auto",  # over class groups: 'map' (lax.map) | 'unroll' | 'auto'
            "bn_images_per_class": 16,  # real images per class that set BatchNorm statistics
            "dsa_strategy": "",  # '' = augment.default_strategy(dataset); method 'dsa' only
            "parallel": "auto",  # over the K networks: 'vmap' | 'loop' | 'map' | 'auto' (BACKEND_DEFAULTS)
        }
    )


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
    """Everything static about one gradient-matching run (hashable: a `jit` static argument).

    strategy: the DSA strategy of matching and inner training, '' for none (DC). class_chunk (0: all
    classes in one vmap), class_loop ('map' | 'unroll') and parallel ('vmap' | 'loop' | 'map' over the
    K networks) choose how the work is iterated, never its result (see `matching_loss`).
    """

    outer_loop: int
    inner_loop: int
    batch_real: int
    batch_train: int = 256
    lr_img: float = 0.1
    momentum_img: float = 0.5
    lr_net: float = 0.01
    metric: str = "ours"
    num_nets: int = 1
    bn_images_per_class: int = 16
    strategy: str = ""
    class_chunk: int = 0
    class_loop: str = "map"
    parallel: str = "vmap"
    devices: int = 1

    @property
    def pixel_optimizer(self) -> optax.GradientTransformation:
        return optax.sgd(self.lr_img, momentum=self.momentum_img or None)

    @property
    def net_optimizer(self) -> optax.GradientTransformation:
        return optax.sgd(self.lr_net)  # the reference's inner loop: plain SGD, no momentum

    @property
    def loss_options(self) -> dict:
        """Keyword arguments of `matching_loss` / `stacked_matching_loss`."""
        return {
            "batch_real": self.batch_real,
            "strategy": self.strategy,
            "metric": self.metric,
            "class_chunk": self.class_chunk,
            "class_loop": self.class_loop,
            "parallel": self.parallel,
            "devices": self.devices,
        }


def settings_from_config(
    config: ml_collections.ConfigDict, *, min_class_count: int, num_classes: int = 0
) -> Settings:
    """The run's `Settings`: loops from the IPC table where 0, `batch_real`, `bn_images_per_class` capped
    to the smallest class (the reference draws `permutation(class)[:n]`, i.e. the whole class when it is
    smaller); classes sharded over `config.devices` devices (`sharding.resolve_devices`; one when
    `num_classes` is not given). The loops over classes and networks must be resolved (no 'auto'/-1:
    `jaxdd.config.validate` puts the backend's `BACKEND_DEFAULTS`)."""
    gm = config.gm
    outer, inner = loops_for_ipc(config.ipc, gm.outer_loop, gm.inner_loop)
    strategy = ""  # DC: no augmentation
    if config.method == "dsa":
        strategy = gm.dsa_strategy or augment.default_strategy(config.dataset)
    return Settings(
        outer_loop=outer,
        inner_loop=inner,
        batch_real=min(gm.batch_real, min_class_count),
        batch_train=gm.batch_train,
        lr_img=float(gm.lr_img),
        momentum_img=float(gm.momentum_img),
        lr_net=float(gm.lr_net),
        metric=gm.metric,
        num_nets=gm.num_nets,
        bn_images_per_class=min(gm.bn_images_per_class, min_class_count),
        strategy=strategy,
        class_chunk=_choice(gm, "class_chunk", -1),
        class_loop=_choice(gm, "class_loop", "auto"),
        parallel=_choice(gm, "parallel", "auto"),
        devices=sharding.resolve_devices(config.devices, num_classes) if num_classes else 1,
    )


def _choice(gm: ml_collections.ConfigDict, name: str, auto):
    """gm.`name`, which must hold the backend's choice already (a missing key is `auto`, unresolved)."""
    value = gm.get(name, auto)
    if value == auto:
        raise UserError(
            f"gm.{name}={value!r} is the backend's choice (BACKEND_DEFAULTS), which jaxdd.config.validate "
            "fills in (jaxdd.config.resolve_backend): validate or resolve the config first."
        )
    return value


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
            options = settings.loss_options
            return (*stacked_matching_loss_and_grad(model, nets, images, real, key, **options), {})

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
    """UserError for a bad `gm.*` value (info: the dataset's `DatasetInfo`); no data, no compilation."""
    gm = config.gm
    require(config.method in ("dc", "dsa"), f"method={config.method!r}: gradient matching is 'dc' or 'dsa'.")
    for name in ("outer_loop", "inner_loop"):
        require(
            is_int(gm[name]) and gm[name] >= 0,
            f"gm.{name}={gm[name]!r} must be an integer ≥ 0 (0: the reference's value for the IPC).",
        )
    loops_for_ipc(config.ipc, gm.outer_loop, gm.inner_loop)
    for name in ("batch_real", "batch_train", "num_nets", "bn_images_per_class"):
        require(is_int(gm[name]) and gm[name] >= 1, f"gm.{name}={gm[name]!r} must be an integer ≥ 1.")
    require(
        is_int(gm.class_chunk) and gm.class_chunk >= -1,
        f"gm.class_chunk={gm.class_chunk!r} must be an integer ≥ -1 (classes per vmap group; 0: all at "
        "once; -1: the backend's default).",
    )
    require(gm.metric in METRICS, f"gm.metric={gm.metric!r} must be one of {', '.join(METRICS)}.")
    for name, valid in (("class_loop", ("auto", *CLASS_LOOPS)), ("parallel", ("auto", *NET_LOOPS))):
        value = gm.get(name, "auto")
        require(value in valid, f"gm.{name}={value!r} must be one of {', '.join(valid)}.")
    for name, reference in (("lr_img", 0.1), ("lr_net", 0.01)):
        require(
            is_finite_number(gm[name]) and gm[name] > 0,
            f"gm.{name}={gm[name]!r} must be > 0 and finite (the reference uses {reference}).",
        )
    require(
        is_finite_number(gm.momentum_img) and 0 <= gm.momentum_img < 1,
        f"gm.momentum_img={gm.momentum_img!r} must lie in [0, 1) (reference 0.5).",
    )
    if config.method == "dc":
        require(
            not gm.dsa_strategy,
            f"gm.dsa_strategy={gm.dsa_strategy!r} is set but method='dc' matches without augmentation: "
            "use --config.method=dsa, or leave gm.dsa_strategy empty.",
        )
    elif gm.dsa_strategy:
        augment.parse_strategy(gm.dsa_strategy)
    sharding.resolve_devices(config.devices, info.num_classes)
    _model(config, info.num_classes, info.image_shape)


METHOD = Method(init=init, make_step=make_step, validate=validate, lr_keys=("gm.lr_img",))
