"""MetaDD: an architecture-invariant regularizer for any base method (DESIGN §4.6).

Paper: "MetaDD: Boosting Dataset Distillation with Neural Network Architecture-Invariant Generalization".
M frozen auxiliary networks of different architectures (trained once on the real data and cached by
`jaxdd.teachers`) look at the synthetic images S [N, H, W, C] with labels y [N]; `cams[M, N, H, W]` are
their Grad-CAMs on the pixel grid (`jaxdd.cam`). The regularizer is

    R(S) = λ_var · L_var + λ_ai · L_ai
    L_var = mean_{n,h,w} Var_m cams[m, n, h, w]
    L_ai  = Σ_m [ CE(f_m(S), y) + KL(p̄ ‖ p_m) ],   p̄ = mean_m p_m   (each averaged over images)

and a base method minimises L_base + R. A λ of 0 switches its term off (not traced). The meta-feature
fraction (pixels where every map ≥ 0.5) and the heterogeneous fraction (≥ 0.5 for some maps, not all)
are returned as metrics.

The plug-in is ONE hook, `add_gradient(aux, images, labels, key, grad) -> (grad, metrics)`, called by
`methods.base.pixel_step`, the pixel update every method's jitted step goes through, between the base
pixel gradient and the optimiser update, with the key of the base loss. ∂L_base/∂S + ∂R/∂S is the
gradient of L_base + R, so the base loss code stays untouched. `aux` (`load_auxiliaries`) is bound to
every method's step by `methods.base.bind_step`: an `Auxiliaries` pytree passed to the step as a jit
ARGUMENT (its variables are traced inputs, not constants folded at compile time; the modules, feature
taps and options are static pytree metadata); `None` (MetaDD off) makes the hook the identity.

Low memory: `images_per_step` > 0 regularises a random subset of that many images per call (drawn from
the hook's key; their gradient is the subset mean's, an unbiased estimate of the full mean's).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import struct

from jaxdd import cam, config_lists, teachers
from jaxdd.data.real import RealData, split_name
from jaxdd.errors import UserError, is_finite_number, is_int, require
from jaxdd.models import get_model

META_THRESHOLD = 0.5  # the paper's definition of a (meta) feature pixel
# Mixed into a step's key so the subset draw never reuses a key the method derives by split ("meta").
METADD_STREAM = 0x6D657461


def default_config() -> ml_collections.ConfigDict:
    """The `config.metadd` defaults (DESIGN §4.6): off; four auxiliary architectures, λs 1."""
    return ml_collections.ConfigDict(
        {
            "enabled": False,
            # comma-separated registry names, or a list of names / ConvNet spec dicts
            "archs": "ConvNet,AlexNet,VGG11,ResNet18",
            "lambda_var": 1.0,  # 0 switches L_var off
            "lambda_ai": 1.0,  # 0 switches L_ai off
            "images_per_step": 0,  # synthetic images regularised per step (random subset); 0 = all
            "cam_epsilon": 1e-6,  # min-max normalisation: (m − min) / (max − min + ε)
        }
    )


@dataclasses.dataclass(frozen=True)
class Options:
    """Static MetaDD settings (hashable)."""

    lambda_var: float = 1.0
    lambda_ai: float = 1.0
    images_per_step: int = 0
    cam_epsilon: float = 1e-6


@struct.dataclass
class Auxiliaries:
    """The M frozen auxiliary networks: `variables` (a tuple of {'params', 'batch_stats'?}) are pytree
    leaves, i.e. jit arguments; `models`, `taps` (`cam.feature_tap` per network) and `options` are static."""

    variables: tuple
    models: tuple[nn.Module, ...] = struct.field(pytree_node=False)
    taps: tuple = struct.field(pytree_node=False)
    options: Options = struct.field(pytree_node=False, default=Options())


def make_auxiliaries(models, variables, image_shape, options: Options = Options()) -> Auxiliaries:
    """`Auxiliaries` of trained networks for images (H, W, C) (feature taps found abstractly)."""
    taps = tuple(cam.feature_tap(model, tuple(image_shape)) for model in models)
    return Auxiliaries(variables=tuple(variables), models=tuple(models), taps=taps, options=options)


# ---- the loss ----


def cam_variance(cams: jax.Array) -> jax.Array:
    """L_var: the per-pixel (population) variance over the M maps of cams [M, N, H, W], averaged."""
    return jnp.mean(jnp.var(cams, axis=0))


def agreement_loss(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """L_ai = Σ_m [CE(logits_m, y) + KL(p̄ ‖ p_m)] for logits [M, N, K], labels [N]; means over images."""
    log_p = jax.nn.log_softmax(logits, axis=-1)
    log_mean = jax.nn.logsumexp(log_p, axis=0) - jnp.log(logits.shape[0])  # log p̄ [N, K]
    kl = jnp.sum(jnp.exp(log_mean) * (log_mean - log_p), axis=-1)  # [M, N]
    ce = -jnp.take_along_axis(log_p, jnp.broadcast_to(labels[None, :, None], (*logits.shape[:2], 1)), -1)
    return jnp.sum(jnp.mean(ce[..., 0] + kl, axis=1))


def feature_fractions(cams: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(meta, heterogeneous) pixel fractions of cams [M, N, H, W]: every map ≥ 0.5; some but not all."""
    above = cams >= META_THRESHOLD
    every, some = jnp.all(above, axis=0), jnp.any(above, axis=0)
    return jnp.mean(every), jnp.mean(some & ~every)


def cams_and_logits(aux: Auxiliaries, images: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(cams [M, N, H, W], logits [M, N, K]) of images [N, H, W, C]; a Python loop over the networks
    (different architectures cannot be vmapped or scanned together). `jax.checkpoint` around each
    network's CAM (recompute instead of keep) was measured: it raised XLA CPU's temporary memory, so
    it is not used."""
    outs = [
        cam.grad_cam(model, variables, images, labels, tap, epsilon=aux.options.cam_epsilon)
        for model, variables, tap in zip(aux.models, aux.variables, aux.taps, strict=True)
    ]
    return jnp.stack([c for c, _ in outs]), jnp.stack([z for _, z in outs])


def metadd_loss(aux: Auxiliaries, images: jax.Array, labels: jax.Array) -> tuple[jax.Array, dict]:
    """(R = λ_var·L_var + λ_ai·L_ai, metrics) of images [N, H, W, C], labels [N]; terms with λ = 0 are
    reported but not part of R."""
    cams, logits = cams_and_logits(aux, images, labels)
    variance, agreement = cam_variance(cams), agreement_loss(logits, labels)
    o = aux.options
    loss = jnp.zeros(())
    if o.lambda_var:
        loss = loss + o.lambda_var * variance
    if o.lambda_ai:
        loss = loss + o.lambda_ai * agreement
    meta, hetero = feature_fractions(jax.lax.stop_gradient(cams))
    metrics = {"metadd_var": variance, "metadd_ai": agreement, "meta_fraction": meta}
    metrics["hetero_fraction"] = hetero
    return loss, metrics


def metadd_loss_and_grad(
    aux: Auxiliaries, images: jax.Array, labels: jax.Array, key: jax.Array
) -> tuple[jax.Array, jax.Array, dict]:
    """(R, ∂R/∂images [N, H, W, C], metrics) on `aux.options.images_per_step` images drawn with `key`
    (all when 0 or ≥ N; the others get a zero gradient)."""
    n, subset = images.shape[0], aux.options.images_per_step
    value_and_grad = jax.value_and_grad(lambda x, y: metadd_loss(aux, x, y), has_aux=True)
    if not subset or subset >= n:
        (loss, metrics), grad = value_and_grad(images, labels)
        return loss, grad, metrics
    rows = jax.random.choice(key, n, (subset,), replace=False)
    (loss, metrics), sub_grad = value_and_grad(images[rows], labels[rows])
    return loss, jnp.zeros_like(images).at[rows].set(sub_grad), metrics


def add_gradient(
    aux: Auxiliaries | None, images: jax.Array, labels: jax.Array, key: jax.Array, grad: jax.Array
) -> tuple[jax.Array, dict]:
    """THE hook of every method (`methods.base.pixel_step`): (grad + ∂R/∂images, metrics) before the pixel
    optimiser's update; the identity (grad, {}) when `aux` is None. `key`: the base loss's key (mixed
    with `METADD_STREAM`)."""
    if aux is None:
        return grad, {}
    loss, metadd_grad, metrics = metadd_loss_and_grad(
        aux, images, labels, jax.random.fold_in(key, METADD_STREAM)
    )
    metrics = {"metadd_loss": loss, **metrics, "metadd_grad_norm": optax.tree.norm(metadd_grad)}
    return grad + metadd_grad, metrics


# ---- from the config ----


def enabled(config: ml_collections.ConfigDict) -> bool:
    return "metadd" in config and bool(config.metadd.enabled)


def arch_list(metadd: ml_collections.ConfigDict) -> tuple[teachers.Arch, ...]:
    """`metadd.archs` as registry names / `ConvNetSpec`s: a comma-separated string or a sequence."""
    return tuple(teachers.as_arch(arch) for arch in config_lists.split_list(metadd.archs, key="metadd.archs"))


def options_from_config(metadd: ml_collections.ConfigDict) -> Options:
    return Options(
        lambda_var=float(metadd.lambda_var),
        lambda_ai=float(metadd.lambda_ai),
        images_per_step=int(metadd.images_per_step),
        cam_epsilon=float(metadd.cam_epsilon),
    )


def load_auxiliaries(
    config: ml_collections.ConfigDict, real: RealData, *, log: Callable[[str], None] = print
) -> Auxiliaries | None:
    """The run's auxiliary networks (cached, or trained now with `config.teachers` from
    `purpose_key(teachers.seed, 'teacher')`, as SRe2L's teacher), or None when MetaDD is off."""
    if not enabled(config):
        return None
    options = teachers.options_from_config(config.teachers, config.dataset)
    nets = [teachers.load_or_train_teacher(a, real, options, log=log) for a in arch_list(config.metadd)]
    models, variables = [t.model for t in nets], [t.variables for t in nets]
    return make_auxiliaries(models, variables, real.image_shape, options_from_config(config.metadd))


def validate(config: ml_collections.ConfigDict, info) -> None:
    """UserError for a bad `metadd.*` value (info: the dataset's `DatasetInfo`); abstract shapes only."""
    if not enabled(config):
        return
    m = config.metadd
    require(
        config.method in ("dc", "dsa", "dm", "sre2l"),
        f"metadd.enabled with method={config.method!r}: MetaDD regularises dc, dsa, dm or sre2l.",
    )
    for name in ("lambda_var", "lambda_ai"):
        require(
            is_finite_number(m[name]) and m[name] >= 0,
            f"metadd.{name}={m[name]!r} must be ≥ 0 and finite (0 switches the term off; default 1).",
        )
    require(m.lambda_var > 0 or m.lambda_ai > 0, "metadd.enabled but both λs are 0: set one > 0.")
    require(
        is_finite_number(m.cam_epsilon) and m.cam_epsilon > 0,
        f"metadd.cam_epsilon={m.cam_epsilon!r} must be > 0 and finite (default 1e-6).",
    )
    count = m.images_per_step
    require(
        is_int(count) and count >= 0,
        f"metadd.images_per_step={count!r} must be an integer ≥ 0 (0: every synthetic image).",
    )
    archs = arch_list(m)
    require(
        len(archs) >= 2,
        f"metadd.archs={m.archs!r} names {len(archs)} network(s): MetaDD compares at least 2 architectures.",
    )
    for arch in archs:
        try:
            model = get_model(arch, num_classes=info.num_classes, image_shape=tuple(info.image_shape))
            cam.feature_tap(model, tuple(info.image_shape))
        except UserError as error:
            message = f"metadd.archs has {arch!r}, which cannot be an auxiliary network: {error}"
            raise UserError(message) from None
        teachers.require_cached_or_trainable(
            teachers.options_from_config(config.teachers, config.dataset), info, arch,
            flag="--config.teachers.train",
            split=split_name(config.holdout.per_class, config.holdout.seed),
        )  # fmt: skip
