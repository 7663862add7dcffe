"""What every distillation method provides, and the pieces every pixel-optimising method shares.

The run driver only knows `Method`: `init` builds the first `DistillState`, `make_step` returns
`step(state, real) -> (state, metrics)` (pure and jitted; metrics a flat dict of scalars), and the driver
loops, logs and checkpoints. A method with nothing to optimise (the random-real baseline) has no step.

Shared (optax's idea: one update that every optimiser fills in): a method writes only its
`loss_and_grad(images, key) -> (loss, grad, metrics)`, and
- `init_state` builds its first state, and `sgd_pixel_optimizer` is the matching methods' (DC/DSA, DM)
  pixel SGD,
- `pixel_step` is its pixel update: the gradient's norm, the plug-in hooks (MetaDD's `add_gradient`),
  the optax update and an optional projection; `DistillState.step_key` and `DistillState.advance` are
  the key of an outer iteration and its count,
- `bind_step` (`bind_model_step`) binds its jitted outer step to each architecture of the model pool
  with MetaDD's auxiliary networks, so neither plug-in names a method.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import struct

from jaxdd import metadd, pool, synthetic
from jaxdd.data.real import RealData
from jaxdd.errors import UserError
from jaxdd.models import conv, get_model
from jaxdd.synthetic import SyntheticSet


@struct.dataclass
class DistillState:
    """Everything a resumed run needs to continue exactly as an uninterrupted one.

    Attributes:
      images: [N, H, W, C] float32 synthetic images (normalised space), class-major.
      labels: [N] int32.
      opt_state: the pixel optimiser's state.
      key: the distillation's base PRNG key; step t uses `fold_in(key, t)`, so no key is carried forward.
      step: int32 scalar, number of completed outer iterations.
    """

    images: jax.Array
    labels: jax.Array
    opt_state: optax.OptState
    key: jax.Array
    step: jax.Array

    @property
    def synset(self) -> SyntheticSet:
        return SyntheticSet(images=self.images, labels=self.labels)

    @property
    def step_key(self) -> jax.Array:
        """The key of outer iteration `step`, `fold_in(key, step)`: a resumed run draws it again."""
        return jax.random.fold_in(self.key, self.step)

    def advance(self, images: jax.Array, opt_state: optax.OptState) -> DistillState:
        """The state after this outer iteration: its images and optimiser state, step + 1."""
        return self.replace(images=images, opt_state=opt_state, step=self.step + 1)


StepFn = Callable[[DistillState, RealData], tuple[DistillState, dict]]


@struct.dataclass
class Hooks:
    """What the plug-ins hand a method's jitted step (its `hooks=` argument, traced) for `pixel_step`.

    Attributes:
      metadd: MetaDD's auxiliary networks (`jaxdd.metadd`); None when MetaDD is off.
      grad_norm: a scalar the base pixel gradient is rescaled to (the model pool's scale-safe steps,
        `pool.scale='main'`: the main model's gradient norm at the same iteration); None: unchanged.
    """

    metadd: metadd.Auxiliaries | None = None
    grad_norm: jax.Array | None = None


NO_HOOKS = Hooks()

# loss_and_grad(images [N, H, W, C], key) -> (loss scalar, ∂loss/∂images [N, H, W, C], metrics)
LossAndGrad = Callable[[jax.Array, jax.Array], tuple[jax.Array, jax.Array, dict]]


@dataclasses.dataclass(frozen=True)
class Method:
    """A registry entry.

    init(config, real, key) -> DistillState
    make_step(config, real, *, log) -> StepFn, or None when there is nothing to optimise; `log` hears
      what making it says (a teacher trained now).
    validate(config, dataset_info) -> None, raising UserError for method-specific bad values.
    lr_keys: the config keys of the pixel learning rate, which `resume_with_new_lr` may change (the
      recovery from a diverged run).
    schedule_uses_iterations: whether a step depends on the total `iterations` (a decay over the run), so
      that a run cannot be extended or shortened on resume.
    teacher_archs(config) -> the architectures of the networks trained on the real data that the method
      itself uses (SRe2L's teacher); MetaDD's auxiliaries are listed by `jaxdd.metadd`.
    learned_lr(state) -> the student step size the method learns with the set (MTT's α; a host float),
      which evaluation trains with under `eval.learned_lr`; None for a method that learns none.
    """

    init: Callable[[ml_collections.ConfigDict, RealData, jax.Array], DistillState]
    make_step: Callable[..., StepFn] | None = None
    validate: Callable[[ml_collections.ConfigDict, object], None] | None = None
    lr_keys: tuple[str, ...] = ()
    schedule_uses_iterations: bool = False
    teacher_archs: Callable[[ml_collections.ConfigDict], tuple] = lambda config: ()
    learned_lr: Callable[[DistillState], float | None] = lambda state: None


def sgd_pixel_optimizer(lr: float, momentum: float) -> optax.GradientTransformation:
    """The pixels' SGD of the matching methods (DC/DSA, DM): rate `lr`, heavy-ball `momentum`; momentum 0
    is plain SGD, with no momentum buffer in the optimiser state (and so in a checkpoint)."""
    return optax.sgd(lr, momentum=momentum or None)


def init_state(
    config: ml_collections.ConfigDict, real: RealData, key: jax.Array, tx: optax.GradientTransformation
) -> DistillState:
    """The first state: `config.init` images ('real' | 'noise', `config.ipc` per class, from the first
    half of `key`), `tx`'s state, the distillation key (the second half), step 0."""
    if config.init not in synthetic.INITS:
        raise UserError(f"init={config.init!r} must be one of {', '.join(synthetic.INITS)}.")
    init_key, distill_key = jax.random.split(key)
    synset = synthetic.INITS[config.init](real, config.ipc, init_key)
    return DistillState(
        images=synset.images,
        labels=synset.labels,
        opt_state=tx.init(synset.images),
        key=distill_key,
        step=jnp.zeros((), jnp.int32),
    )


def pixel_step(
    loss_and_grad: LossAndGrad,
    tx: optax.GradientTransformation,
    images: jax.Array,
    opt_state: optax.OptState,
    labels: jax.Array,
    key: jax.Array,
    *,
    hooks: Hooks = NO_HOOKS,
    project: Callable[[jax.Array], jax.Array] | None = None,
    backbone: Callable[[jax.Array], jax.Array] | None = None,
) -> tuple[jax.Array, optax.OptState, dict]:
    """One update of images [N, H, W, C] (labels [N]) by every method: `loss_and_grad(images, key)`,
    rescaled to `hooks.grad_norm` when set, MetaDD's gradient added when `hooks.metadd` holds its
    auxiliary networks (with the same key and the norm of the base gradient applied, which MetaDD's
    balance='ratio' scales its terms to), `tx`'s update, then `project` (e.g. a clip to the valid
    pixel range). `backbone` (images -> logits [N, K]): the method's own network at this step, for
    MetaDD's kl_target='backbone'; None where the method has none.

    Returns (images, opt_state, metrics): 'loss', 'grad_norm' (the base gradient's L2 norm, before any
    hook), 'grad_scale' when rescaled, the method's metrics and the hooks'.
    """
    loss, grad, method_metrics = loss_and_grad(images, key)
    grad_norm = applied_norm = optax.tree.norm(grad)
    if hooks.grad_norm is not None:
        scale = hooks.grad_norm / jnp.maximum(grad_norm, jnp.finfo(grad_norm.dtype).tiny)
        grad = jax.tree.map(lambda g: g * scale, grad)
        method_metrics = {**method_metrics, "grad_scale": scale}
        applied_norm = grad_norm * scale
    grad, hook_metrics = metadd.add_gradient(
        hooks.metadd, images, labels, key, grad, base_norm=applied_norm, backbone=backbone
    )
    updates, opt_state = tx.update(grad, opt_state, images)
    images = optax.apply_updates(images, updates)
    if project is not None:
        images = project(images)
    return images, opt_state, {"loss": loss, "grad_norm": grad_norm, **method_metrics, **hook_metrics}


def bind_step(
    config: ml_collections.ConfigDict,
    real: RealData,
    bind: Callable[[pool.Arch], Callable],
    *,
    log: Callable[[str], None] = print,
) -> StepFn:
    """The run's `step(state, real)` from `bind(arch)`, a method's step for one architecture taking
    `(state, real, hooks=...)`: the model pool (`jaxdd.pool`) picks each iteration's architecture
    (`config.model` without a pool; each bound once) and every one gets the same `Hooks`: MetaDD's
    auxiliary networks (`jaxdd.metadd`; None when MetaDD is off) and, with `pool.scale='main'`, the
    main model's gradient norm on the other architectures' iterations. `log` hears of the auxiliary
    networks loaded or trained."""
    hooks = Hooks(metadd=metadd.load_auxiliaries(config, real, log=log))
    return pool.pooled_step(config, lambda arch: functools.partial(bind(arch), hooks=hooks))


def bind_model_step(
    config: ml_collections.ConfigDict,
    real: RealData,
    step: Callable,
    settings,
    *,
    log: Callable[[str], None] = print,
) -> StepFn:
    """`bind_step` of `step(model, settings, state, real, hooks=...)`, the model built from each
    architecture for `real`'s classes and image shape, its convolutions as `config.conv` says."""
    options = conv.options_from_config(config)

    def bind(arch):
        model = get_model(
            arch, num_classes=real.num_classes, image_shape=tuple(real.image_shape), conv=options
        )
        return functools.partial(step, model, settings)

    return bind_step(config, real, bind, log=log)
