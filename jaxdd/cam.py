"""Differentiable Grad-CAM (Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks via
Gradient-based Localization", ICCV 2017) for any jaxdd model, without changing the models.

The feature map A is tapped where the network leaves its spatial layers: the output of the LAST submodule
call that returns a 4-D [B, h, w, C] map (`feature_tap` finds its module path once, abstractly). That is

- ResNet18*: the last residual block, i.e. exactly `out['feature_map']` (4x4 at 28x28 and 32x32);
- ConvNet*, AlexNet*, VGG11*: the last convolution's norm (or the conv itself when there is no norm),
  before the final activation and pooling. For VGG11 this is the 2x2 map of the last stage, where the
  pooled `out['feature_map']` is 1x1 at 28x28 / 32x32 and its CAM would be a constant (no location).

A zero perturbation δ is added to that output through `flax.linen.intercept_methods`; the gradient of
the class logit with respect to δ is ∂z_y/∂A. With w_k = mean_{h,w} ∂z_y/∂A_k, the map is
relu(Σ_k w_k A_k), bilinearly resized to the image grid and min-max normalised per image. Everything
is a JAX function of the pixels, so the CAM can be differentiated again (second order).

The gradient of Σ_i z_{i, y_i} gives every image its own ∂z_{y_i}/∂A_i because the networks run in eval
mode, where images do not interact (instance / group / layer norm are per image, BatchNorm uses its
running statistics).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdd.errors import UserError

Path = tuple[str, ...]


def _is_map(value) -> bool:
    return hasattr(value, "ndim") and value.ndim == 4


def feature_tap(model: nn.Module, image_shape: tuple[int, int, int]) -> tuple[Path, tuple[int, int, int]]:
    """(module path, (h, w, C)) of the last submodule output that is a 4-D map, for images (H, W, C).

    Abstract (`jax.eval_shape`): no FLOPs. Raises UserError for a network without a spatial map (MLP).
    """
    calls: list[tuple[Path, tuple[int, ...]]] = []

    def record(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        if context.method_name == "__call__" and _is_map(out):
            calls.append((tuple(context.module.path), tuple(out.shape[1:])))
        return out

    x = jax.ShapeDtypeStruct((1, *map(int, image_shape)), jnp.float32)
    variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)
    with nn.intercept_methods(record):
        jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, x)
    if not calls:
        raise UserError(
            f"{type(model).__name__} has no spatial feature map, so it has no Grad-CAM: choose a "
            "convolutional network (ConvNet, AlexNet, VGG11, ResNet18, their variants)."
        )
    return calls[-1]


def _perturbed_logits(model: nn.Module, variables, images: jax.Array, tap: Path, delta: jax.Array):
    """(logits [B, K], A [B, h, w, C]): the eval-mode forward with δ added to the tapped output."""
    tapped = []

    def add_delta(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        if context.method_name == "__call__" and tuple(context.module.path) == tap and not tapped:
            tapped.append(out)
            return out + delta
        return out

    with nn.intercept_methods(add_delta):
        logits, _ = model.apply(variables, images, train=False)
    return logits, tapped[0]


def class_activation(
    model: nn.Module, variables, images: jax.Array, labels: jax.Array, tap: Path, map_shape
) -> tuple[jax.Array, jax.Array]:
    """Raw Grad-CAM maps [B, h, w] (relu(Σ_k w_k A_k), not resized) and the logits [B, K].

    images [B, H, W, C], labels [B] int; `tap`, `map_shape` from `feature_tap`.
    """
    delta = jnp.zeros((images.shape[0], *map_shape), images.dtype)

    def class_score(delta):
        logits, feature_map = _perturbed_logits(model, variables, images, tap, delta)
        score = jnp.sum(jnp.take_along_axis(logits, labels[:, None], axis=1))
        return score, (logits, feature_map)

    grad, (logits, feature_map) = jax.grad(class_score, has_aux=True)(delta)
    weights = jnp.mean(grad, axis=(1, 2))  # [B, C]
    return nn.relu(jnp.einsum("bhwc,bc->bhw", feature_map, weights)), logits


def normalise_maps(maps: jax.Array, size: tuple[int, int], epsilon: float) -> jax.Array:
    """Maps [B, h, w] -> [B, H, W]: bilinear resize to `size`, then (m − min) / (max − min + ε) per map."""
    resized = jax.image.resize(maps, (maps.shape[0], *size), method="bilinear")
    low = jnp.min(resized, axis=(1, 2), keepdims=True)
    high = jnp.max(resized, axis=(1, 2), keepdims=True)
    return (resized - low) / (high - low + epsilon)


def grad_cam(
    model: nn.Module,
    variables,
    images: jax.Array,
    labels: jax.Array,
    tap: tuple[Path, tuple[int, int, int]],
    *,
    epsilon: float,
) -> tuple[jax.Array, jax.Array]:
    """(cams [B, H, W] in [0, 1], logits [B, K]) of images [B, H, W, C] with labels [B] under a frozen
    network; `tap` = `feature_tap(model, image_shape)`. Differentiable w.r.t. the images."""
    path, map_shape = tap
    maps, logits = class_activation(model, variables, images, labels, path, map_shape)
    return normalise_maps(maps, images.shape[1:3], epsilon), logits
