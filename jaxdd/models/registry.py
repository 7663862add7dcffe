"""The model registry: reference names (and structured ConvNet specs) -> Flax modules.

Names follow ``get_network`` of the DC/DSA/DM reference (VICO-UoE/DatasetCondensation ``utils.py``),
including the model-pool paper's ConvNetASwish / ConvNetASwishBN. Every model has the same contract::

    variables = model.init(key, x, train=False)          # x [B, H, W, C]
    logits, out = model.apply(variables, x, train=False)  # logits [B, num_classes]
    (logits, out), updates = model.apply(variables, x, train=True, mutable=['batch_stats'])  # BN nets

``out['embedding']`` [B, D] is what the classifier sees; ``out['feature_map']`` [B, h, w, C] is the last
spatial map before flatten / global pooling (all but MLP). BatchNorm nets (``uses_batch_norm``) carry a
``batch_stats`` collection; all others have ``params`` only, so ``'batch_stats' in variables`` is an
equivalent check on initialised variables.
"""

import functools
from collections.abc import Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdd.errors import UserError, is_int
from jaxdd.models.alexnet import AlexNet
from jaxdd.models.conv import ConvOptions
from jaxdd.models.convnet import ConvNet, ConvNetSpec
from jaxdd.models.lenet import LeNet
from jaxdd.models.mlp import MLP
from jaxdd.models.resnet import ResNet18
from jaxdd.models.vgg import VGG11

Spec = str | ConvNetSpec | Mapping

CONVNETS: dict[str, ConvNetSpec] = {
    "ConvNet": ConvNetSpec(),
    "ConvNetBN": ConvNetSpec(norm="batchnorm"),
    "ConvNetIN": ConvNetSpec(norm="instancenorm"),
    "ConvNetLN": ConvNetSpec(norm="layernorm"),
    "ConvNetGN": ConvNetSpec(norm="groupnorm"),
    "ConvNetNN": ConvNetSpec(norm="none"),
    "ConvNetD1": ConvNetSpec(depth=1),
    "ConvNetD2": ConvNetSpec(depth=2),
    "ConvNetD3": ConvNetSpec(depth=3),
    "ConvNetD4": ConvNetSpec(depth=4),
    "ConvNetW32": ConvNetSpec(width=32),
    "ConvNetW64": ConvNetSpec(width=64),
    "ConvNetW128": ConvNetSpec(width=128),
    "ConvNetW256": ConvNetSpec(width=256),
    "ConvNetAS": ConvNetSpec(act="sigmoid"),
    "ConvNetAR": ConvNetSpec(act="relu"),
    "ConvNetAL": ConvNetSpec(act="leakyrelu"),
    "ConvNetASwish": ConvNetSpec(act="swish"),
    "ConvNetASwishBN": ConvNetSpec(act="swish", norm="batchnorm"),
    "ConvNetMP": ConvNetSpec(pool="maxpool"),
    "ConvNetAP": ConvNetSpec(pool="avgpool"),
    "ConvNetNP": ConvNetSpec(pool="none"),
}


def _without_convolutions(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """The builder of an architecture that has no convolution, so no `conv` options."""
    return lambda *, num_classes, conv=None: builder(num_classes=num_classes)


# name -> builder(num_classes=..., conv=ConvOptions()) -> module
MODELS: dict[str, Callable[..., nn.Module]] = {
    **{name: functools.partial(ConvNet.from_spec, spec) for name, spec in CONVNETS.items()},
    "MLP": _without_convolutions(MLP),
    "LeNet": LeNet,
    "AlexNet": AlexNet,
    "AlexNetBN": functools.partial(AlexNet, norm="batchnorm"),
    "VGG11": VGG11,
    "VGG11BN": functools.partial(VGG11, norm="batchnorm"),
    "ResNet18": ResNet18,
    "ResNet18BN": functools.partial(ResNet18, norm="batchnorm"),
    "ResNet18BN_AP": functools.partial(ResNet18, norm="batchnorm", downsample="avgpool"),
}


def model_names() -> list[str]:
    """The valid reference names, in registry order."""
    return list(MODELS)


def _build(spec: Spec, num_classes: int, conv: ConvOptions = ConvOptions()) -> tuple[str, nn.Module]:
    """(display name, module) for a name, a ConvNetSpec or a dict of ConvNetSpec fields."""
    if hasattr(spec, "to_dict"):  # an ml_collections.ConfigDict from a config file or flag
        spec = spec.to_dict()
    if isinstance(spec, Mapping):
        spec = ConvNetSpec.from_dict(dict(spec))
    if isinstance(spec, ConvNetSpec):
        return repr(spec), ConvNet.from_spec(spec, num_classes=num_classes, conv=conv)
    if not isinstance(spec, str) or spec not in MODELS:
        raise UserError(
            f"unknown model {spec!r}; valid names: {', '.join(MODELS)}; or a ConvNet spec "
            "(a ConvNetSpec or a dict with keys width, depth, act, norm, pool)."
        )
    return spec, MODELS[spec](num_classes=num_classes, conv=conv)


def _is_positive_int(v) -> bool:
    return is_int(v) and v > 0


def _check_args(image_shape, num_classes) -> None:
    shape_ok = len(tuple(image_shape)) == 3 and all(_is_positive_int(d) for d in image_shape)
    if not shape_ok:
        raise UserError(f"image_shape={image_shape!r} must be (height, width, channels), positive integers.")
    if not _is_positive_int(num_classes):
        raise UserError(f"num_classes={num_classes!r} must be a positive integer.")


def _too_small_error(name: str, image_shape, size: int, why: str) -> UserError:
    h, w, _ = image_shape
    return UserError(
        f"{name} needs images of at least {size}x{size} ({why}); dataset images are {h}x{w}: "
        "choose another architecture."
    )


def get_model(
    spec: Spec, *, num_classes: int, image_shape: tuple[int, int, int], conv: ConvOptions = ConvOptions()
) -> nn.Module:
    """The Flax module for ``spec`` (a reference name, a ``ConvNetSpec`` or a dict of its fields), its
    convolutions computed as ``conv`` says (a run's ``conv.options_from_config``; the defaults: the CPU's).

    ``image_shape`` (H, W, C) is checked against the architecture's smallest input (arithmetic, no
    tracing); ``check_input_shape`` adds a full abstract evaluation. Raises UserError on an unknown name,
    a bad spec or a too-small image.
    """
    _check_args(image_shape, num_classes)
    name, model = _build(spec, num_classes, conv)
    h, w, c = image_shape
    size, why = model.min_image_size(c)
    if min(h, w) < size:
        raise _too_small_error(name, image_shape, size, why)
    return model


def check_input_shape(spec: Spec, image_shape: tuple[int, int, int], num_classes: int) -> None:
    """Validate that ``spec`` runs on images of ``image_shape`` before any real work.

    Runs ``get_model``'s checks, then traces init + forward abstractly (``jax.eval_shape``, no FLOPs)
    and requires non-empty logits, embedding and feature map. Raises UserError otherwise.
    """
    model = get_model(spec, num_classes=num_classes, image_shape=image_shape)
    name = spec if isinstance(spec, str) else repr(spec)
    x = jax.ShapeDtypeStruct((1, *map(int, image_shape)), jnp.float32)
    try:
        (logits, out), _ = jax.eval_shape(
            lambda x: model.init_with_output(jax.random.key(0), x, train=False), x
        )
    except Exception as e:  # any shape failure inside the net is a user-facing incompatibility
        raise UserError(f"{name} cannot run on images of shape {tuple(image_shape)}: {e}") from e
    if any(0 in a.shape for a in (logits, *out.values())):
        size, why = model.min_image_size(image_shape[-1])
        raise _too_small_error(name, image_shape, size, why)


def uses_batch_norm(model_or_spec: nn.Module | Spec) -> bool:
    """Whether the model (or the model a spec names) has BatchNorm, i.e. a ``batch_stats`` collection."""
    if isinstance(model_or_spec, nn.Module):
        return getattr(model_or_spec, "norm", "none") == "batchnorm"
    return uses_batch_norm(_build(model_or_spec, num_classes=1)[1])
