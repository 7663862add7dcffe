"""MetaDD: an architecture-invariant regularizer for any base method (DESIGN §4.6; docs/metadd.md).

Paper: "MetaDD: Boosting Dataset Distillation with Neural Network Architecture-Invariant Generalization".
M frozen auxiliary networks of different architectures (trained once on the real data and cached by
`jaxdd.teachers`) look at the synthetic images; their Grad-CAMs (`jaxdd.cam`) and predictions give two
terms, L_var (where the evidence is: the maps' variance or misalignment) and L_ai (what the image is),
whose pixel gradient g_R is added to the base method's, weighted by fixed λs or balanced at every step
to a set fraction of the base gradient's norm (`jaxdd.metadd_gradient` has the formulas and metrics;
`jaxdd.metadd_terms` the terms; docs/metadd.md the options and where each network is tapped).

The plug-in is ONE hook, `add_gradient(aux, images, labels, key, grad, base_norm=, backbone=)`, called by
`methods.base.pixel_step` between the base pixel gradient and the optimiser update, with the key of the
base loss; `base_norm` is the norm of the base gradient applied (the method's 'grad_norm', times the
pool's 'grad_scale' when that rescales it) and `backbone` (images -> logits) the method's own network,
for kl_target='backbone'. `aux` (`load_auxiliaries`) is a jit ARGUMENT of every method's step
(`methods.base.Hooks`): its variables are traced inputs, the modules, feature taps and options static
pytree metadata; None makes the hook the identity. `images_per_step` > 0 regularises a random subset of
that many images per call (low memory; its gradient is the subset mean's, an unbiased estimate).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import flax.linen as nn
import jax
import ml_collections
import optax
from flax import struct

from jaxdd import cam, config_lists, teachers
from jaxdd import metadd_gradient as gradient
from jaxdd import metadd_terms as terms
from jaxdd.data import zca
from jaxdd.data.real import RealData
from jaxdd.errors import (
    UserError,
    is_finite_number,
    require,
    require_in_interval,
    require_int,
    require_non_negative,
    require_positive,
)
from jaxdd.models import conv, get_model
from jaxdd.settings import from_section, section_config

# Mixed into a step's key so the subset draw never reuses a key the method derives by split ("meta").
METADD_STREAM = 0x6D657461
PROBE_SEED = 0  # the fixed key of the weight-stop probe: a structural property, any key finds it
BALANCES, CAM_TERMS, WEIGHT_GRADIENTS = ("fixed", "ratio"), ("variance", "alignment"), ("auto", "full")


@dataclasses.dataclass(frozen=True)
class Options:
    """MetaDD's settings: the `config.metadd` keys besides `enabled` and `archs` (static, hashable).

    Attributes:
      lambda_var, lambda_ai: balance='fixed''s weights of L_var and L_ai.
      balance: 'fixed' | 'ratio' (each term's gradient rescaled at every step to `var_ratio` /
        `ai_ratio` times the base gradient's norm; the λs are then unused).
      images_per_step: synthetic images regularised per step (a random subset); 0 = all.
      cam_epsilon: the normalisation's ε. normalisation: 'minmax' (Grad-CAM's relu + min-max) |
        'pre_relu' | 'softmax' (`cam.normalise_maps`: the last two leave no map frozen).
      cam_term: 'variance' | 'alignment'. cam_threshold: map pixels below it count as 0 (0: off).
      min_map_size: each auxiliary is tapped at its last map at least this wide (`cam.feature_tap`).
      kl_target: L_ai's KL target, 'mean' | 'backbone' | 'none'.
      weight_gradient: 'auto' (no gradient through the Grad-CAM weights where the network after the tap
        is piecewise linear: exact there, `cam.probe_linear_head`) | 'full'.
      min_aux_accuracy: an auxiliary whose test accuracy is below this fraction of the best auxiliary's
        is named weak in the log.
      image_chunk: the regularizer's gradient computed this many images at a time (the largest divisor
        of the image count not above it; the same gradient, a chunk's memory); 0 = all at once.
    """

    lambda_var: float = 1.0
    lambda_ai: float = 1.0
    images_per_step: int = 0
    cam_epsilon: float = 1e-6
    balance: str = "fixed"
    var_ratio: float = 0.1
    ai_ratio: float = 0.1
    normalisation: str = "minmax"
    cam_term: str = "variance"
    cam_threshold: float = 0.0
    min_map_size: int = 4
    kl_target: str = "mean"
    weight_gradient: str = "auto"
    min_aux_accuracy: float = 0.8
    image_chunk: int = 0

    def __post_init__(self):
        choices = {"balance": BALANCES, "normalisation": cam.NORMALISATIONS, "cam_term": CAM_TERMS}
        choices |= {"kl_target": terms.KL_TARGETS, "weight_gradient": WEIGHT_GRADIENTS}
        for name, valid in choices.items():
            value = getattr(self, name)
            require(value in valid, f"metadd.{name}={value!r}: choose one of {', '.join(map(repr, valid))}.")
        for name in ("lambda_var", "lambda_ai", "var_ratio", "ai_ratio"):
            require_non_negative(f"metadd.{name}", getattr(self, name), note="0 switches the term off")
        keys = "metadd.lambda_var, lambda_ai" if self.balance == "fixed" else "metadd.var_ratio, ai_ratio"
        require(any(self.weights), f"metadd.enabled but both weights ({keys}) are 0: set one > 0.")
        require_positive("metadd.cam_epsilon", self.cam_epsilon, note="default 1e-6")
        integers = {"images_per_step": "0: every image", "min_map_size": "0: the last map"}
        integers["image_chunk"] = "0: all images at once"
        for name, meaning in integers.items():
            require_int(f"metadd.{name}", getattr(self, name), minimum=0, note=meaning)
        bound = float("inf") if self.normalisation == "softmax" else 1.0  # the other maps lie in [0, 1]
        t = self.cam_threshold
        require(
            is_finite_number(t) and 0 <= t < bound,
            f"metadd.cam_threshold={t!r} must be ≥ 0 (0: off) and, with normalisation "
            f"{self.normalisation!r} (maps in [0, 1]), below 1.",
        )
        require_in_interval("metadd.min_aux_accuracy", self.min_aux_accuracy, "[0, 1]")

    @property
    def weights(self) -> tuple[float, float]:
        """(L_var's, L_ai's): the λs with balance='fixed', the ratios with 'ratio'."""
        if self.balance == "fixed":
            return self.lambda_var, self.lambda_ai
        return self.var_ratio, self.ai_ratio


def default_config() -> ml_collections.ConfigDict:
    """The `config.metadd` defaults (DESIGN §4.6): off; four auxiliary architectures; `Options()`."""
    # archs: comma-separated registry names, or a list of names / ConvNet spec dicts
    return section_config(Options, enabled=False, archs="ConvNet,AlexNet,VGG11,ResNet18")


@struct.dataclass
class Auxiliaries:
    """The M frozen auxiliary networks: `variables` (a tuple of {'params', 'batch_stats'?}) are pytree
    leaves, i.e. jit arguments; `models`, `taps` (`cam.Tap` per network) and `options` are static."""

    variables: tuple
    models: tuple[nn.Module, ...] = struct.field(pytree_node=False)
    taps: tuple = struct.field(pytree_node=False)
    options: Options = struct.field(pytree_node=False, default=Options())


def make_auxiliaries(models, variables, image_shape, options: Options = Options()) -> Auxiliaries:
    """`Auxiliaries` of trained networks for images (H, W, C): each tapped at its last map at least
    `options.min_map_size` wide (found abstractly); with weight_gradient='auto' each tap is probed with
    these variables for a piecewise-linear head (`cam.probe_linear_head`, key `PROBE_SEED`)."""
    shape = tuple(image_shape)
    taps = [cam.feature_tap(model, shape, min_map_size=options.min_map_size) for model in models]
    if options.weight_gradient == "auto":
        key = jax.random.key(PROBE_SEED)
        pairs = zip(models, variables, taps, strict=True)
        taps = [cam.probe_linear_head(model, v, shape, tap, key) for model, v, tap in pairs]
    return Auxiliaries(variables=tuple(variables), models=tuple(models), taps=tuple(taps), options=options)


def add_gradient(
    aux: Auxiliaries | None,
    images: jax.Array,
    labels: jax.Array,
    key: jax.Array,
    grad: jax.Array,
    *,
    base_norm: jax.Array | None = None,
    backbone: gradient.Backbone | None = None,
) -> tuple[jax.Array, dict]:
    """THE hook of every method (`methods.base.pixel_step`): (grad + g_R, metrics) before the pixel
    optimiser's update; the identity (grad, {}) when `aux` is None. `key`: the base loss's key (mixed
    with `METADD_STREAM`); `base_norm`: the norm of the base gradient applied (default ‖grad‖);
    `backbone`: the base method's network (images -> logits), for kl_target='backbone'."""
    if aux is None:
        return grad, {}
    base_norm = optax.tree.norm(grad) if base_norm is None else base_norm
    subset_key = jax.random.fold_in(key, METADD_STREAM)
    loss, metadd_grad, metrics = gradient.metadd_loss_and_grad(
        aux, images, labels, subset_key, base_norm=base_norm, backbone=backbone
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
    """`Options` of the `config.metadd` block; UserError naming a bad key."""
    return from_section(Options, metadd)


def auxiliary_report(accuracies: list[tuple[str, float]], taps, options: Options) -> list[str]:
    """Log lines for the auxiliaries (name, test accuracy) and their `cam.Tap`s: each one's accuracy, tap
    and whether its CAM weights' gradient is skipped; then a warning naming each weak one, below
    `options.min_aux_accuracy` × the best auxiliary's accuracy (docs/metadd.md says why 0.8)."""
    lines = []
    for (name, accuracy), tap in zip(accuracies, taps, strict=True):
        how = "skipped (piecewise-linear head)" if gradient.stops_weights(options, tap) else "kept"
        where = f"{'/'.join(tap.path)} ({'x'.join(map(str, tap.map_shape))})"
        lines.append(f"MetaDD auxiliary {name}: test accuracy {100 * accuracy:.1f}%, Grad-CAM at {where}, "
                     f"the CAM weights' gradient {how}")  # fmt: skip
    best, best_accuracy = max(accuracies, key=lambda pair: pair[1])
    for name, accuracy in accuracies:
        if accuracy < options.min_aux_accuracy * best_accuracy:
            lines.append(
                f"Warning: MetaDD auxiliary {name} is weak: test accuracy {100 * accuracy:.1f}% is below "
                f"metadd.min_aux_accuracy={options.min_aux_accuracy} × the best auxiliary's ({best}, "
                f"{100 * best_accuracy:.1f}%): its Grad-CAM explains a network that barely recognises the "
                "data. Train it longer (--config.teachers.epochs) or drop it from metadd.archs."
            )
    return lines


def load_auxiliaries(
    config: ml_collections.ConfigDict, real: RealData, *, log: Callable[[str], None] = print
) -> Auxiliaries | None:
    """The run's auxiliary networks (cached, or trained now with `config.teachers` from
    `purpose_key(teachers.seed, 'teacher')`, as SRe2L's teacher), or None when MetaDD is off. Logs
    `auxiliary_report` (teachers.json in the run folder records the same accuracies)."""
    if not enabled(config):
        return None
    archs, options = arch_list(config.metadd), options_from_config(config.metadd)
    teacher_options = teachers.options_from_section(
        config.teachers, config.dataset, conv=conv.options_from_config(config)
    )
    nets = [teachers.load_or_train_teacher(arch, real, teacher_options, log=log) for arch in archs]
    aux = make_auxiliaries([t.model for t in nets], [t.variables for t in nets], real.image_shape, options)
    accuracies = [(teachers.arch_folder_name(a), t.test_accuracy) for a, t in zip(archs, nets, strict=True)]
    for line in auxiliary_report(accuracies, aux.taps, options):
        log(line)
    return aux


def validate(config: ml_collections.ConfigDict, info) -> None:
    """UserError for a bad `metadd.*` value (info: the dataset's `DatasetInfo`); abstract shapes only."""
    if not enabled(config):
        return
    m = config.metadd
    require(
        config.method in ("dc", "dsa", "dm", "sre2l", "mtt"),
        f"metadd.enabled with method={config.method!r}: MetaDD regularises dc, dsa, dm, sre2l or mtt.",
    )
    options, archs = options_from_config(m), arch_list(m)
    require(
        len(archs) >= 2,
        f"metadd.archs={m.archs!r} names {len(archs)} network(s): MetaDD compares at least 2 architectures.",
    )
    teacher_options = teachers.options_from_section(config.teachers, config.dataset)
    for arch in archs:
        try:
            model = get_model(arch, num_classes=info.num_classes, image_shape=tuple(info.image_shape))
            cam.feature_tap(model, tuple(info.image_shape), min_map_size=options.min_map_size)
        except UserError as error:
            message = f"metadd.archs has {arch!r}, which cannot be an auxiliary network: {error}"
            raise UserError(message) from None
        teachers.require_cached_or_trainable(
            teacher_options, info, arch, flag="--config.teachers.train",
            split=zca.training_split(config),
        )  # fmt: skip
