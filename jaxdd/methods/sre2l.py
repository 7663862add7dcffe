"""SRe2L: Yin, Xing & Shen, "Squeeze, Recover and Relabel: Dataset Condensation at ImageNet Scale From
A New Perspective", NeurIPS 2023 (DESIGN §4.3).

- Squeeze: `config.model` (a BatchNorm network) trained on the real data, cached by `jaxdd.teachers`
  under `<teachers.dir>/<dataset>/<model>/` and reused by later runs.
- Recover (this method's step): the synthetic images start from noise and follow Adam(lr_img, betas
  (beta1, beta2)) with the lr cosine-decayed to 0 over `iterations`, on

      L = CE(teacher(V(x)), y) + r_bn · Σ_l (‖μ_l(V(x)) − μ_l^BN‖₂ + ‖σ²_l(V(x)) − σ²_l^BN‖₂)

  V a random resized crop + flip per image, μ_l, σ²_l the batch mean and biased variance at the input
  of BatchNorm layer l of the frozen teacher (eval mode), μ^BN, σ²^BN its running statistics; after each
  step the pixels are clipped to the valid range [0, 1] (in the normalised space), as the reference.
  Batches: `batch_ipc` images per class form one batch whose statistics are matched (0: the whole set);
  the batches are independent (`lax.map`), as the reference recovers one image per class at a time.
- Devices: with `Settings.devices` > 1 each batch's views are split over the devices (whole classes per
  device; the teacher's forward is per image in eval mode), each device records its share's BatchNorm
  moments, and they are pooled into the batch's exactly (`pooled_moments`), so the loss, the gradient
  and the recovered set do not depend on the device count (tests/test_sharding.py).
- Relabel: `jaxdd.relabel`, soft-label students in the evaluation table (`evaluate_soft_labels`).

The state is a `DistillState` (images, Adam state with its schedule count, key, step), so checkpoints
and resume go through the run driver; step t's randomness is `fold_in(state.key, t)`.
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

from jaxdd import evaluation, relabel, sharding, teachers, training
from jaxdd.data import zca
from jaxdd.data.real import RealData
from jaxdd.errors import (
    UserError,
    is_int,
    require,
    require_in_interval,
    require_non_negative,
    require_positive,
)
from jaxdd.methods.base import NO_HOOKS, DistillState, Hooks, Method, bind_step, init_state, pixel_step
from jaxdd.models import MODELS, conv, uses_batch_norm
from jaxdd.resized_crop import MIN_SCALE, random_resized_crop_flip
from jaxdd.settings import derived, from_section, section_config

__all__ = [
    "METHOD",
    "Settings",
    "bn_statistics_distance",
    "default_config",
    "evaluate_soft_labels",
    "init",
    "make_step",
    "pooled_moments",
    "recover_loss",
    "recover_step",
    "soft_labels_enabled",
    "validate",
]


def default_config() -> ml_collections.ConfigDict:
    """The `config.sre2l` defaults: `Settings`' and, under `relabel`, `relabel.RelabelProtocol`'s (SRe2L's
    recover and relabel settings, DESIGN §4.3); relabel.enabled: soft-label columns ('arch+soft') beside
    the hard-label ones."""
    return section_config(Settings, relabel=section_config(relabel.RelabelProtocol, enabled=True))


@dataclasses.dataclass(frozen=True)
class Settings:
    """`config.sre2l`'s recover settings, one run's (hashable: a `jit` static argument).

    Attributes:
      lr_img, beta1, beta2: the pixels' Adam, its rate cosine-decayed over `iterations`.
      r_bn: the weight of the BatchNorm-statistics term. min_crop_scale: RandomResizedCrop(scale=
        (min_crop_scale, 1)). batch_ipc: images per class in one recover batch (BN statistics); 0: all.
      iterations, devices (each batch's views split over them), low/high (per-channel pixel bounds in
        the normalised space, ((0 − mean)/std, (1 − mean)/std)): derived by `settings_from_config`.
    """

    lr_img: float = 0.25
    beta1: float = 0.5
    beta2: float = 0.9
    r_bn: float = 0.01
    min_crop_scale: float = MIN_SCALE
    batch_ipc: int = 0
    iterations: int = derived(0)
    devices: int = derived(1)
    low: tuple[float, ...] = derived((0.0,))
    high: tuple[float, ...] = derived((1.0,))

    def __post_init__(self):
        require_positive("sre2l.lr_img", self.lr_img, note="the reference: 0.25")
        for name in ("beta1", "beta2"):
            require_in_interval(f"sre2l.{name}", getattr(self, name), "[0, 1)", note="reference 0.5 / 0.9")
        require_non_negative("sre2l.r_bn", self.r_bn, note="the reference: 0.01")
        require_in_interval("sre2l.min_crop_scale", self.min_crop_scale, "(0, 1]", note="ref 0.08")
        require(
            is_int(self.batch_ipc) and self.batch_ipc >= 0,
            f"sre2l.batch_ipc={self.batch_ipc!r} must be 0 (all images in one batch) or an integer ≥ 1.",
        )

    @property
    def pixel_optimizer(self) -> optax.GradientTransformation:
        # iterations=0 exports the initialisation: no step runs, but Adam's state needs a valid schedule
        schedule = optax.cosine_decay_schedule(self.lr_img, max(self.iterations, 1))
        return optax.adam(schedule, b1=self.beta1, b2=self.beta2)


def settings_from_config(config: ml_collections.ConfigDict, real_or_info) -> Settings:
    """The run's `Settings` (`real_or_info`: anything with `mean`, `std` and `num_classes`)."""
    mean, std = real_or_info.mean, real_or_info.std
    return from_section(
        Settings,
        config.sre2l,
        iterations=int(config.iterations),
        devices=sharding.resolve_devices(config.devices, real_or_info.num_classes),
        low=tuple(-m / d for m, d in zip(mean, std, strict=True)),
        high=tuple((1 - m) / d for m, d in zip(mean, std, strict=True)),
    )


# ---- the loss ----


def _safe_norm(x: jax.Array) -> jax.Array:
    """‖x‖₂ with a zero (not NaN) gradient at x = 0."""
    squared = jnp.sum(jnp.square(x))
    positive = squared > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, squared, 1.0)), 0.0)


def bn_statistics_distance(recorded: dict, running: dict) -> jax.Array:
    """Σ over BatchNorm layers of ‖μ − μ^BN‖₂ + ‖σ² − σ²^BN‖₂: `recorded` the `bn_stats` collection (batch
    mean and biased variance, [C_l] per layer), `running` the `batch_stats` one (same tree)."""
    norms = jax.tree.map(lambda batch, run: _safe_norm(batch - run), recorded, running)
    return sum(jax.tree.leaves(norms), jnp.zeros(()))


def teacher_outputs(
    model: nn.Module, variables: dict, images: jax.Array, devices: int = 1
) -> tuple[jax.Array, dict]:
    """The frozen teacher (eval mode) on images [B,H,W,C]: logits [B,K] and its `bn_stats` collection
    (the whole batch's moments); the images split over `devices` (dividing B) when more than one."""
    if devices == 1:
        (logits, _), recorded = model.apply(variables, images, train=False, mutable=["bn_stats"])
        return logits, recorded["bn_stats"]

    def share(views):  # [B/devices, ...] -> logits of the share, its moments with a leading axis of 1
        logits, recorded = teacher_outputs(model, variables, views)
        return logits, jax.tree.map(lambda x: x[None], recorded)

    logits, per_device = sharding.over_class_shards(share, devices)(images)
    return logits, pooled_moments(per_device)


def _is_moments(node) -> bool:
    return isinstance(node, dict) and set(node) == {"mean", "var"}


def pooled_moments(per_share: dict) -> dict:
    """The moments of a batch from those of its D equal shares: every {'mean': [D, C], 'var': [D, C]}
    node becomes mean = mean_d μ_d, var = mean_d σ²_d + mean_d (μ_d − mean)² (biased, exact)."""

    def pool(node):
        mean = jnp.mean(node["mean"], 0)
        spread = jnp.mean(jnp.square(node["mean"] - mean), 0)
        return {"mean": mean, "var": jnp.mean(node["var"], 0) + spread}

    return jax.tree.map(pool, per_share, is_leaf=_is_moments)


def recover_loss(
    model: nn.Module,
    variables: dict,
    images: jax.Array,
    labels: jax.Array,
    key: jax.Array,
    settings: Settings,
) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    """(CE + r_bn · BN distance, (CE, BN distance)) of one batch images [B,H,W,C], labels [B]."""
    views = random_resized_crop_flip(images, key, min_scale=settings.min_crop_scale)
    logits, recorded = teacher_outputs(model, variables, views, settings.devices)
    ce = training.cross_entropy(logits, labels)
    bn = bn_statistics_distance(recorded, variables["batch_stats"])
    return ce + settings.r_bn * bn, (ce, bn)


def _batches(images: jax.Array, num_classes: int, batch_ipc: int) -> jax.Array:
    """Class-major images [C·ipc, ...] -> [G, C·batch_ipc, ...]: batch g holds images g·b..(g+1)·b − 1
    of every class (class-major within the batch)."""
    b = batch_ipc
    per_class = images.reshape(num_classes, -1, b, *images.shape[1:])  # [C, G, b, ...]
    return jnp.swapaxes(per_class, 0, 1).reshape(per_class.shape[1], num_classes * b, *images.shape[1:])


def _unbatch(batches: jax.Array, num_classes: int) -> jax.Array:
    """The inverse of `_batches`."""
    g, _, *rest = batches.shape
    per_class = jnp.swapaxes(batches.reshape(g, num_classes, -1, *rest), 0, 1)
    return per_class.reshape(-1, *rest)


def recover_loss_and_grad(model, variables, images, num_classes: int, key, settings: Settings):
    """(mean loss over the batches, ∂/∂images of the summed loss, {'ce', 'bn'}: their means): each
    batch's images get their own batch's gradient; one batch at a time."""
    batch_ipc = settings.batch_ipc or images.shape[0] // num_classes
    batches = _batches(images, num_classes, batch_ipc)
    labels = jnp.repeat(jnp.arange(num_classes, dtype=jnp.int32), batch_ipc)
    value_and_grad = jax.value_and_grad(
        lambda x, k: recover_loss(model, variables, x, labels, k, settings), has_aux=True
    )
    keys = jax.random.split(key, batches.shape[0])
    if batches.shape[0] == 1:
        (loss, (ce, bn)), grads = jax.tree.map(lambda x: x[None], value_and_grad(batches[0], keys[0]))
    else:
        (loss, (ce, bn)), grads = jax.lax.map(lambda xs: value_and_grad(*xs), (batches, keys))
    return jnp.mean(loss), _unbatch(grads, num_classes), {"ce": jnp.mean(ce), "bn": jnp.mean(bn)}


@functools.partial(jax.jit, static_argnames=("model", "settings"))
def recover_step(
    model: nn.Module,
    settings: Settings,
    variables: dict,
    state: DistillState,
    real: RealData,
    hooks: Hooks = NO_HOOKS,
) -> tuple[DistillState, dict]:
    """One Adam `pixel_step` of the recover objective, the pixels clipped to their valid range; metrics
    'loss' (mean over batches), 'ce', 'bn', 'grad_norm', 'lr', 'images' (synthetic images seen) and,
    with MetaDD auxiliary networks in `hooks` (DESIGN §4.6), MetaDD's."""
    loss_and_grad = lambda images, key: recover_loss_and_grad(
        model, variables, images, real.num_classes, key, settings
    )
    clip = lambda images: jnp.clip(images, jnp.asarray(settings.low), jnp.asarray(settings.high))
    tx, key = settings.pixel_optimizer, state.step_key
    teacher = lambda images: model.apply(variables, images, train=False)[0]  # MetaDD's 'backbone'
    images, opt_state, metrics = pixel_step(
        loss_and_grad, tx, state.images, state.opt_state, state.labels, key, hooks=hooks, project=clip,
        backbone=teacher,
    )  # fmt: skip
    metrics = {
        **metrics,
        "lr": optax.cosine_decay_schedule(settings.lr_img, settings.iterations)(state.step),
        "images": jnp.float32(state.images.shape[0]),
    }
    return state.advance(images, opt_state), metrics


# ---- the Method interface ----


def teacher_options(config: ml_collections.ConfigDict) -> teachers.TeacherOptions:
    return teachers.options_from_section(
        config.teachers, config.dataset, conv=conv.options_from_config(config)
    )


def load_teacher(config: ml_collections.ConfigDict, real: RealData, *, log=print) -> teachers.Teacher:
    """The squeeze step: the cached `config.model` teacher of the dataset, or one trained now from
    `purpose_key(teachers.seed, 'teacher')`."""
    return teachers.load_or_train_teacher(config.model, real, teacher_options(config), log=log)


def init(config: ml_collections.ConfigDict, real: RealData, key: jax.Array) -> DistillState:
    """The first state (`base.init_state`): `config.init` images (SRe2L: 'noise'), Adam's state, the key."""
    return init_state(config, real, key, settings_from_config(config, real).pixel_optimizer)


def make_step(config: ml_collections.ConfigDict, real: RealData, *, log: Callable[[str], None] = print):
    """`step(state, real)`: `recover_step` bound to the teacher of `config.model` (loaded or trained
    now, saying so to `log`) and `Settings` (`base.bind_step`: with MetaDD's auxiliary networks; SRe2L
    takes no pool)."""
    settings = settings_from_config(config, real)

    def bind(arch):
        teacher = teachers.load_or_train_teacher(arch, real, teacher_options(config), log=log)
        return functools.partial(recover_step, teacher.model, settings, teacher.variables)

    return bind_step(config, real, bind, log=log)


def soft_labels_enabled(config: ml_collections.ConfigDict) -> bool:
    """Whether the evaluation adds soft-label ('arch+soft') columns: SRe2L runs with relabel enabled."""
    return config.method == "sre2l" and bool(config.sre2l.relabel.enabled)


def evaluate_soft_labels(
    config: ml_collections.ConfigDict,
    real: RealData,
    images: jax.Array,
    archs,
    key: jax.Array,
    *,
    networks: evaluation.Networks,
    log: Callable[[str], None] = print,
) -> dict[str, dict]:
    """The relabel step for every eval architecture, its students run as `networks` says: {arch: summary
    + 'teacher', 'teacher_acc'}."""
    protocol = from_section(
        relabel.RelabelProtocol,
        config.sre2l.relabel,
        min_crop_scale=config.sre2l.min_crop_scale,
        test_batch_size=config.eval.test_batch_size,
    )
    teacher = load_teacher(config, real, log=log)
    results = relabel.evaluate_archs_soft(
        archs, real, images, key, protocol=protocol, teacher=(teacher.model, teacher.variables),
        networks=networks, log=log,
    )  # fmt: skip
    name = teachers.arch_folder_name(teachers.as_arch(config.model))
    return {arch: {**s, "teacher": name, "teacher_acc": teacher.test_accuracy} for arch, s in results.items()}


def validate(config: ml_collections.ConfigDict, info) -> None:
    """UserError for a bad `sre2l.*` / `teachers.*` value, a teacher without BatchNorm or a missing cached
    teacher that may not be trained (info: the dataset's `DatasetInfo`); nothing compiles."""
    s = config.sre2l
    if not uses_batch_norm(teachers.as_arch(config.model)):
        bn_models = ", ".join(name for name in MODELS if uses_batch_norm(name))
        raise UserError(
            f"method='sre2l' matches the teacher's BatchNorm statistics, but model={config.model!r} has no "
            f"BatchNorm: choose a BatchNorm teacher with --config.model, one of {bn_models}."
        )
    require(
        not zca.settings_from_config(config).enabled,
        "zca.enabled=True with method='sre2l': SRe2L clips its images to the pixel box [0, 1] and relabels "
        "random crops of them, which whitened images have no counterpart of; set --config.zca.enabled=False.",
    )
    require(
        not config.get("pool") or not config.pool.preset,
        f"pool.preset={config.pool.preset if config.get('pool') else ''!r}: SRe2L recovers from one "
        "teacher, not a model pool; set --config.pool.preset=''.",
    )
    from_section(Settings, s)  # checks the sre2l.* values
    require(
        s.batch_ipc == 0 or config.ipc % s.batch_ipc == 0,
        f"sre2l.batch_ipc={s.batch_ipc!r} must be 0 (all images in one batch) or an integer ≥ 1 dividing "
        f"ipc={config.ipc}.",
    )
    from_section(relabel.RelabelProtocol, config.sre2l.relabel)  # checks the sre2l.relabel.* values
    sharding.resolve_devices(config.devices, info.num_classes)
    teachers.require_cached_or_trainable(
        teacher_options(config),
        info,
        config.model,
        flag="--config.teachers.train",
        split=zca.training_split(config),
    )


METHOD = Method(
    init=init,
    make_step=make_step,
    validate=validate,
    lr_keys=("sre2l.lr_img",),
    schedule_uses_iterations=True,  # the learning rate is a cosine over `iterations`
    teacher_archs=lambda config: (config.model,),
)
