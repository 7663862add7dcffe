"""Trajectory matching (MTT): Cazenavette et al., "Dataset Distillation by Matching Training Trajectories",
CVPR 2022 (reference: GeorgeCazenavette/mtt-distillation, `distill.py`).

One outer iteration: draw an expert e (`jaxdd.experts`: networks trained on the real data, every epoch's
parameters kept) and a start epoch t ∈ [0, max_start_epoch); start a student at θ*_{e,t} and train it
`syn_steps` plain SGD steps on minibatches of the synthetic set (per-image DSA, train mode), with the
learnable step size α:

    θ_{s+1} = θ_s − α ∇θ CE(f_θs(A(S_{b_s})), y_{b_s}),    θ_0 = θ*_{e,t}

then one step of the pixels (SGD lr_img, momentum 0.5) and of α (SGD lr_lr, momentum 0.5) on

    L(S, α) = ‖θ_N − θ*_{e,t+M}‖² / ‖θ*_{e,t} − θ*_{e,t+M}‖²    (M = expert_epochs)

(the reference divides both sums by the parameter count, which cancels). Minibatches follow the
reference: a random permutation of the N synthetic images cut into chunks of `batch_syn`, used from the
last chunk (the short one when `batch_syn` does not divide N) to the first, then a new permutation.

The student is functional (flax `apply` on a params pytree) and its unroll is a `lax.scan`; `remat`
decides what the backward pass keeps: 'none' every step's activations (memory linear in N), 'step' only
each step's params (N·|θ| plus one step's activations; every step recomputed once), 'sqrt' (default) the
params at the boundaries of blocks of B = ⌈√N⌉ steps and, while one block's gradient is taken, that
block's per-step params ((N/B + B)·|θ| ≈ 2√N·|θ| plus one step's activations; every step recomputed
twice). `unroll=True` (with remat 'none' only) writes the N steps as straight-line code instead of a loop:
on XLA:CPU a scan's backward runs 3.8-4× slower than the same steps unrolled (benchmarks/results/
bench_mtt_unroll.md; XLA:CPU leaves the backward's weight- and input-gradient convolutions inside the
loop body in non-canonical dimension orders, which straight-line code gets canonicalized), but
straight-line code keeps every step's activations whatever `jax.checkpoint` asks (measured), and its
compile time grows with N.

Learnable α: `MTTState` is the `DistillState` with two fields more, `syn_lr` and `lr_opt_state`. The
step goes through `base.pixel_step` (so MetaDD and the model pool's gradient scale apply to the pixels):
the method's `loss_and_grad` differentiates L with respect to (images, α) together and hands α's
gradient out as the metric 'syn_lr_grad', which the step then applies with α's own optimiser.

Randomness: step t uses `fold_in(state.key, t)`, split into the expert and start draw, the student's
BatchNorm structure and the matching key (permutations and DSA keys), so a resumed run repeats exactly.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import struct

from jaxdd import augment, experts, pool, training
from jaxdd.data import zca
from jaxdd.data.real import RealData
from jaxdd.errors import (
    UserError,
    require,
    require_in_interval,
    require_int,
    require_non_negative,
    require_positive,
)
from jaxdd.methods.base import (
    NO_HOOKS,
    DistillState,
    Hooks,
    Method,
    bind_step,
    init_state,
    pixel_step,
    sgd_pixel_optimizer,
)
from jaxdd.models import conv
from jaxdd.settings import derived, from_section, section_config

__all__ = [
    "METHOD",
    "MTTState",
    "Settings",
    "default_config",
    "init",
    "make_step",
    "minibatch_schedule",
    "outer_step",
    "parameter_distance",
    "prepare_experts",
    "trajectory_loss",
    "unroll",
    "validate",
]

REMATS = ("none", "step", "sqrt")


def default_config() -> ml_collections.ConfigDict:
    """The `config.mtt` defaults: `Settings`' (the reference's argparse defaults)."""
    return section_config(Settings)


@dataclasses.dataclass(frozen=True)
class Settings:
    """`config.mtt`, one MTT run's static settings (hashable: a `jit` static argument).

    Distillation (distill.py): syn_steps (N), expert_epochs (M), max_start_epoch (t < this), lr_img and
    momentum_img (the pixels' SGD), lr_lr and momentum_lr (α's SGD), syn_lr_init (α's start: the
    reference's lr_teacher), batch_syn (0: all N images per step), dsa_strategy ('dsa', 'none' or a
    strategy), remat ('none' | 'step' | 'sqrt', see the module docstring), unroll (straight-line student
    steps instead of a lax.scan: faster on XLA:CPU, memory as remat 'none'; remat 'none' only).
    Experts (buffer.py): num_experts, expert_train_epochs (T), expert_lr, expert_momentum,
    expert_weight_decay, expert_batch_size, expert_lr_decay, expert_augment ('dsa', 'none' or a
    strategy), expert_seed; experts_dir (the cache), train_experts (False: a missing expert is an error).
    Derived: strategy (the distillation's DSA strategy, '' for none), expert_strategy, batch (the
    minibatch size used: batch_syn capped to N).
    """

    syn_steps: int = 20
    expert_epochs: int = 3
    max_start_epoch: int = 25
    lr_img: float = 1000.0
    momentum_img: float = 0.5
    lr_lr: float = 1e-5
    momentum_lr: float = 0.5
    syn_lr_init: float = 0.01
    batch_syn: int = 0
    dsa_strategy: str = "dsa"
    remat: str = "sqrt"
    unroll: bool = False
    num_experts: int = 100
    expert_train_epochs: int = experts.ExpertProtocol.epochs
    expert_lr: float = experts.ExpertProtocol.lr
    expert_momentum: float = experts.ExpertProtocol.momentum
    expert_weight_decay: float = experts.ExpertProtocol.weight_decay
    expert_batch_size: int = experts.ExpertProtocol.batch_size
    expert_lr_decay: bool = experts.ExpertProtocol.lr_decay
    expert_augment: str = "dsa"
    expert_seed: int = 0
    experts_dir: str = "~/.cache/jaxdd/experts"
    train_experts: bool = True
    strategy: str = derived("")
    expert_strategy: str = derived("none")
    batch: int = derived(0)

    def __post_init__(self):
        require_int("mtt.syn_steps", self.syn_steps, minimum=1, note="the reference: 10 to 80")
        require_int("mtt.expert_epochs", self.expert_epochs, minimum=1, note="the reference: 2 or 3")
        require_int("mtt.max_start_epoch", self.max_start_epoch, minimum=1, note="the reference: 2 to 40")
        require_int("mtt.expert_train_epochs", self.expert_train_epochs, minimum=1, note="reference 50")
        last = self.max_start_epoch - 1 + self.expert_epochs
        highest = self.expert_train_epochs + 1 - self.expert_epochs
        require(
            last <= self.expert_train_epochs,
            f"mtt.max_start_epoch={self.max_start_epoch} with mtt.expert_epochs={self.expert_epochs} "
            f"targets epoch {last}, beyond the experts' {self.expert_train_epochs} epochs "
            f"(mtt.expert_train_epochs): set max_start_epoch ≤ {highest} "
            "or train longer experts.",
        )
        require_positive("mtt.lr_img", self.lr_img, note="the reference: 100 to 10000")
        require_in_interval("mtt.momentum_img", self.momentum_img, "[0, 1)", note="the reference: 0.5")
        require_non_negative("mtt.lr_lr", self.lr_lr, note="the reference: 1e-7 to 1e-4; 0 keeps α fixed")
        require_in_interval("mtt.momentum_lr", self.momentum_lr, "[0, 1)", note="the reference: 0.5")
        require_positive("mtt.syn_lr_init", self.syn_lr_init, note="the reference's lr_teacher: 0.01")
        require_int("mtt.batch_syn", self.batch_syn, minimum=1, marker=0, note="0: all synthetic images")
        augment.check_strategy_key("mtt.dsa_strategy", self.dsa_strategy)
        augment.check_strategy_key("mtt.expert_augment", self.expert_augment)
        require(
            self.remat in REMATS,
            f"mtt.remat={self.remat!r} must be one of {', '.join(REMATS)} (default 'sqrt': memory ~2√N).",
        )
        require(isinstance(self.unroll, bool), f"mtt.unroll={self.unroll!r} must be true or false.")
        require(
            not self.unroll or self.remat == "none",
            f"mtt.unroll=True with mtt.remat={self.remat!r}: unrolled steps keep every step's activations "
            "whatever remat asks (XLA:CPU, measured), so set mtt.remat='none' with it, or mtt.unroll=False "
            "to bound memory with remat.",
        )
        require_int("mtt.num_experts", self.num_experts, minimum=1, note="the reference: 100")
        require_int("mtt.expert_seed", self.expert_seed, minimum=0, note="default 0")
        require(
            isinstance(self.experts_dir, str) and bool(self.experts_dir),
            f"mtt.experts_dir={self.experts_dir!r} must be a folder path, e.g. ~/.cache/jaxdd/experts.",
        )
        require(
            isinstance(self.train_experts, bool),
            f"mtt.train_experts={self.train_experts!r} must be true or false.",
        )
        self.expert_protocol()  # checks the expert_* keys

    @property
    def pixel_optimizer(self) -> optax.GradientTransformation:
        return sgd_pixel_optimizer(self.lr_img, self.momentum_img)

    @property
    def lr_optimizer(self) -> optax.GradientTransformation:
        """α's SGD (the reference's `optimizer_lr`)."""
        return optax.sgd(self.lr_lr, momentum=self.momentum_lr or None)

    @property
    def epochs_needed(self) -> int:
        """Expert epochs 0..max_start_epoch − 1 + M are ever drawn: the number kept on the device."""
        return self.max_start_epoch + self.expert_epochs

    def expert_protocol(self) -> experts.ExpertProtocol:
        """How the experts train (buffer.py's protocol from the expert_* keys)."""
        return experts.ExpertProtocol(
            epochs=self.expert_train_epochs, batch_size=self.expert_batch_size, lr=self.expert_lr,
            momentum=self.expert_momentum, weight_decay=self.expert_weight_decay,
            lr_decay=self.expert_lr_decay, augment=self.expert_strategy,
        )  # fmt: skip


def settings_from_config(config: ml_collections.ConfigDict, *, num_images: int) -> Settings:
    """The run's `Settings` from `config.mtt`: DSA strategies resolved for the dataset, batch_syn capped to
    the `num_images` synthetic images (the reference's `torch.split` gives one chunk of all of them)."""
    section = config.mtt
    batch = section.batch_syn or num_images
    resolve = lambda value: "_".join(augment.parse_strategy(augment.resolve_strategy(value, config.dataset)))
    return from_section(
        Settings,
        section,
        strategy=resolve(section.dsa_strategy),
        expert_strategy=resolve(section.expert_augment) or "none",
        batch=min(batch, num_images),
    )


def expert_options(settings: Settings, config: ml_collections.ConfigDict) -> experts.ExpertOptions:
    """The experts' cache, protocol and seed; convolutions as `config.conv` says."""
    return experts.ExpertOptions(
        settings.experts_dir, train=settings.train_experts, protocol=settings.expert_protocol(),
        seed=settings.expert_seed, conv=conv.options_from_config(config),
    )  # fmt: skip


@struct.dataclass
class MTTState(DistillState):
    """`DistillState` plus the learnable student step size α (`syn_lr`, float32 scalar) and its
    optimiser's state; checkpointed with the rest."""

    syn_lr: jax.Array
    lr_opt_state: optax.OptState


# ---- the loss ----


def parameter_distance(student, start, target) -> jax.Array:
    """‖student − target‖² / ‖start − target‖², each a sum over every leaf of equal pytrees (scalar)."""

    squared = lambda a, b: sum(jax.tree.leaves(jax.tree.map(lambda x, y: jnp.sum(jnp.square(x - y)), a, b)))
    return squared(student, target) / squared(start, target)


def minibatch_schedule(key: jax.Array, num_images: int, batch: int, steps: int) -> jax.Array:
    """The images of each student step, [steps, batch] int32: permutations of range(num_images), from
    `fold_in(key, p)`, each cut into ⌈num_images / batch⌉ chunks used last chunk first (the reference's
    `indices_chunks.pop()`). A short last chunk of r = num_images − (chunks − 1)·batch images is padded:
    the step that uses it (`short_steps`) reads only its first r entries."""
    chunks = -(-num_images // batch)
    perms = -(-steps // chunks)
    order = jax.vmap(lambda p: jax.random.permutation(jax.random.fold_in(key, p), num_images))(
        jnp.arange(perms)
    )
    order = jnp.pad(order, ((0, 0), (0, chunks * batch - num_images)))
    return order.reshape(perms, chunks, batch)[:, ::-1].reshape(perms * chunks, batch)[:steps]


def short_steps(num_images: int, batch: int, steps: int) -> tuple[bool, ...]:
    """Whether each step of `minibatch_schedule` uses the short chunk (static: no randomness)."""
    chunks = -(-num_images // batch)
    short = num_images % batch != 0
    return tuple(short and s % chunks == 0 for s in range(steps))


def unroll(step: Callable, params, xs, *, remat: str, straight: bool = False):
    """`lax.scan(step, params, xs)`'s final carry, with the backward pass's memory as `remat` says
    ('none' | 'step' | 'sqrt'; the module docstring); `straight`: no loop, the steps unrolled (remat
    'none' only). `step(params, x) -> (params, None)`."""
    if remat == "none":
        return jax.lax.scan(step, params, xs, unroll=straight)[0]
    step = jax.checkpoint(step, prevent_cse=False)  # keeps only the carry; the step is recomputed
    steps = jax.tree.leaves(xs)[0].shape[0]
    if remat == "step":
        return jax.lax.scan(step, params, xs)[0]
    size = math.ceil(math.sqrt(steps))
    blocks = steps // size
    head = jax.tree.map(lambda x: x[: blocks * size].reshape(blocks, size, *x.shape[1:]), xs)
    run_block = jax.checkpoint(lambda p, block: (jax.lax.scan(step, p, block)[0], None), prevent_cse=False)
    params = jax.lax.scan(run_block, params, head)[0]
    if steps > blocks * size:
        params = jax.lax.scan(step, params, jax.tree.map(lambda x: x[blocks * size :], xs))[0]
    return params


def trajectory_loss(
    model: nn.Module,
    settings: Settings,
    batch_stats: dict,
    images: jax.Array,
    labels: jax.Array,
    syn_lr: jax.Array,
    start,
    target,
    key: jax.Array,
) -> jax.Array:
    """L(S, α): the normalised distance after `settings.syn_steps` student steps from `start` (params)
    on images [N, H, W, C] (labels [N]) with step size α = `syn_lr`, to `target` (params). The student
    runs in train mode (BatchNorm: batch statistics; `batch_stats` gives their structure only)."""
    num_images, batch, steps = images.shape[0], settings.batch, settings.syn_steps
    order_key, aug_key = jax.random.split(key)
    rows = minibatch_schedule(order_key, num_images, batch, steps)
    short = jnp.asarray(short_steps(num_images, batch, steps))
    aug_keys = jax.random.split(aug_key, steps)
    tail = num_images - (-(-num_images // batch) - 1) * batch

    def ce_grad(params, idx, aug_key):
        x, y = images[idx], labels[idx]
        if settings.strategy:
            x = augment.augment(x, aug_key, strategy=settings.strategy, siamese=False)

        def ce(p):
            return training.cross_entropy(training.apply_model(model, p, batch_stats, x, train=True)[0], y)

        return jax.grad(ce)(params)

    def step(params, xs):
        idx, is_short, aug_key = xs
        full = lambda: ce_grad(params, idx, aug_key)
        if tail == batch:
            grad = full()
        else:
            grad = jax.lax.cond(is_short, lambda: ce_grad(params, idx[:tail], aug_key), full)
        return jax.tree.map(lambda p, g: p - syn_lr * g, params, grad), None

    end = unroll(step, start, (rows, short, aug_keys), remat=settings.remat, straight=settings.unroll)
    return parameter_distance(end, start, target)


def pick_segment(buffer, key: jax.Array, settings: Settings):
    """(start, target, expert, start epoch): a uniform expert e and epoch t ∈ [0, max_start_epoch) of the
    trajectories `buffer` (leaves [E, K, ...]); start = θ*_{e,t}, target = θ*_{e,t+M}."""
    expert_key, epoch_key = jax.random.split(key)
    num_experts = jax.tree.leaves(buffer)[0].shape[0]
    expert = jax.random.randint(expert_key, (), 0, num_experts)
    epoch = jax.random.randint(epoch_key, (), 0, settings.max_start_epoch)
    start = jax.tree.map(lambda b: b[expert, epoch], buffer)
    target = jax.tree.map(lambda b: b[expert, epoch + settings.expert_epochs], buffer)
    return start, target, expert, epoch


# ---- the outer iteration ----


@functools.partial(jax.jit, static_argnames=("model", "settings"))
def outer_step(
    model: nn.Module,
    settings: Settings,
    state: MTTState,
    real: RealData,
    buffer,
    hooks: Hooks = NO_HOOKS,
) -> tuple[MTTState, dict]:
    """One iteration: a trajectory segment of `buffer` (the experts' params, leaves [E, K, ...]), one
    `pixel_step` (with the plug-ins' `hooks`) and one step of α. Metrics: 'loss' (L), 'grad_norm' (the
    pixels' base gradient), 'syn_lr' (α after the step), 'syn_lr_grad', 'expert', 'start_epoch',
    'images' (student forward passes per iteration) and the hooks'."""
    select_key, net_key, match_key = jax.random.split(state.step_key, 3)
    start, target, expert, epoch = pick_segment(buffer, select_key, settings)
    _, batch_stats = training.init_variables(model, net_key, state.images.shape[1:])

    def loss_and_grad(images, key):
        loss, (grad, lr_grad) = jax.value_and_grad(
            lambda x, lr: trajectory_loss(
                model, settings, batch_stats, x, state.labels, lr, start, target, key
            ),
            argnums=(0, 1),
        )(images, state.syn_lr)
        return loss, grad, {"syn_lr_grad": lr_grad}

    def backbone(images):  # MetaDD's kl_target='backbone': the student at θ*_{e,t}, as it trains (train mode)
        return training.apply_model(model, start, batch_stats, images, train=True)[0]

    images, opt_state, metrics = pixel_step(
        loss_and_grad, settings.pixel_optimizer, state.images, state.opt_state, state.labels, match_key,
        hooks=hooks, backbone=backbone,
    )  # fmt: skip
    updates, lr_opt_state = settings.lr_optimizer.update(metrics["syn_lr_grad"], state.lr_opt_state)
    syn_lr = optax.apply_updates(state.syn_lr, updates)
    metrics = {
        **metrics,
        "syn_lr": syn_lr,
        "expert": expert.astype(jnp.float32),
        "start_epoch": epoch.astype(jnp.float32),
        "images": jnp.float32(settings.syn_steps * settings.batch),
    }
    return state.advance(images, opt_state).replace(syn_lr=syn_lr, lr_opt_state=lr_opt_state), metrics


# ---- the Method interface ----


def _num_images(config: ml_collections.ConfigDict, num_classes: int) -> int:
    return num_classes * config.ipc


def init(config: ml_collections.ConfigDict, real: RealData, key: jax.Array) -> MTTState:
    """The first state (`base.init_state`: `config.init` images, the pixels' SGD state, the key) with
    α = syn_lr_init and its SGD state."""
    settings = settings_from_config(config, num_images=_num_images(config, real.num_classes))
    base = init_state(config, real, key, settings.pixel_optimizer)
    syn_lr = jnp.float32(settings.syn_lr_init)
    fields = {f.name: getattr(base, f.name) for f in dataclasses.fields(DistillState)}
    return MTTState(**fields, syn_lr=syn_lr, lr_opt_state=settings.lr_optimizer.init(syn_lr))


def make_step(config: ml_collections.ConfigDict, real: RealData, *, log: Callable[[str], None] = print):
    """`step(state, real) -> (state, metrics)`: `outer_step` bound to each architecture's experts (loaded,
    or trained now and cached: `jaxdd.experts`), through `base.bind_step` (the model pool, MetaDD)."""
    settings = settings_from_config(config, num_images=_num_images(config, real.num_classes))
    options = expert_options(settings, config)

    def bind(arch):
        found = experts.load_or_train_experts(
            arch, real, options, settings.num_experts, epochs=settings.epochs_needed, log=log
        )
        return functools.partial(outer_step, found.model, settings, buffer=found.params)

    return bind_step(config, real, bind, log=log)


def prepare_experts(config: ml_collections.ConfigDict, *, log: Callable[[str], None] = print) -> dict:
    """`--mode=experts`, the reference's buffer.py step on its own: checks `config` (as a run does), loads
    its real data and loads or trains (continuing an interrupted one) every expert a run of it uses.
    Returns {architecture: `experts.Experts`}."""
    from jaxdd import config as config_lib  # the whole library: imported only by this entry point
    from jaxdd.run_eval import load_real

    config_lib.prepare(config)
    real = load_real(config, log)
    settings = settings_from_config(config, num_images=_num_images(config, real.num_classes))
    options = expert_options(settings, config)
    return {
        arch: experts.load_or_train_experts(
            arch, real, options, settings.num_experts, epochs=settings.epochs_needed, log=log
        )
        for arch in archs(config)
    }


def archs(config: ml_collections.ConfigDict) -> tuple:
    """The architectures whose experts a run needs: the pool's, or `config.model`."""
    found = pool.pool_from_config(config)
    return tuple(found.archs) if found is not None else (pool.main_arch(config),)


def validate(config: ml_collections.ConfigDict, info) -> None:
    """UserError for a bad `mtt.*` value or, with training off, an expert that is not cached (info: the
    dataset's `DatasetInfo`); no data, no compilation."""
    if "mtt" not in config:
        raise UserError("method='mtt' needs the config.mtt section: start from jaxdd.config.base_config().")
    settings = settings_from_config(config, num_images=_num_images(config, info.num_classes))
    options = expert_options(settings, config)
    split = zca.training_split(config)
    for arch in archs(config):
        experts.require_available(
            options, info, arch, settings.num_experts, flag="--config.mtt.train_experts", split=split
        )


def learned_lr(state: MTTState) -> float:
    """α, the student step size learned with the set: the reference evaluates the set with it."""
    return float(jax.device_get(state.syn_lr))


METHOD = Method(
    init=init, make_step=make_step, validate=validate, lr_keys=("mtt.lr_img",), learned_lr=learned_lr
)
