"""Differentiable Grad-CAM (Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks via
Gradient-based Localization", ICCV 2017) for any jaxdd model, without changing the models.

The feature map A is tapped where the network leaves its spatial layers: the output of the LAST submodule
call that returns a 4-D [B, h, w, C] map whose sides are at least `min_map_size` (`feature_tap` finds its
module path once, abstractly). MetaDD asks for 4 (`metadd.min_map_size`), so at 28x28 and 32x32

- ResNet18*: the last residual block, i.e. exactly `out['feature_map']` (4x4);
- ConvNet*, AlexNet*: the last convolution's norm (or the conv itself when there is no norm), before
  the final activation and pooling (8x8);
- VGG11*: its last stage is 2x2 (the pooled `out['feature_map']` 1x1), so the tap moves up to the last
  map of at least 4x4; with `min_map_size` 0 it is the 2x2 map.

A zero perturbation δ is added to that output through `flax.linen.intercept_methods`; the gradient of
the class logit with respect to δ is ∂z_y/∂A. With w_k = mean_{h,w} ∂z_y/∂A_k, the raw map is
Σ_k w_k A_k; `normalise_maps` resizes it to the image grid and normalises it per image (Grad-CAM's
relu + min-max, or one of the normalisations that leave no map frozen). Everything is a JAX function of
the pixels, so the CAM can be differentiated again (second order); where the network after the tap is
piecewise linear, the weights' own gradient is exactly zero and can be skipped (`probe_linear_head`).

The gradient of Σ_i z_{i, y_i} gives every image its own ∂z_{y_i}/∂A_i because the networks run in eval
mode, where images do not interact (instance / group / layer norm are per image, BatchNorm uses its
running statistics).
"""

from __future__ import annotations

from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdd.errors import UserError

Path = tuple[str, ...]
NORMALISATIONS = ("minmax", "pre_relu", "softmax")


def _is_map(value) -> bool:
    return hasattr(value, "ndim") and value.ndim == 4


class Tap(NamedTuple):
    """Where a network's Grad-CAM is taken: the module `path`, its output's `map_shape` (h, w, C), and
    `linear_head`: whether the network after the tap is piecewise linear (`probe_linear_head`)."""

    path: Path
    map_shape: tuple[int, int, int]
    linear_head: bool = False


def feature_tap(model: nn.Module, image_shape: tuple[int, int, int], *, min_map_size: int = 0) -> Tap:
    """The last submodule output that is a 4-D map whose sides are both ≥ `min_map_size` (0: the last
    map; a network with no map that large gives its largest), for images (H, W, C).

    Abstract (`jax.eval_shape`): no FLOPs. Raises UserError for a network without a spatial map (MLP).
    """
    calls: list[tuple[Path, tuple[int, ...]]] = []

    def record(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        if context.method_name == "__call__" and _is_map(out):
            calls.append((tuple(context.module.path), tuple(out.shape[1:])))
        return out

    x = jax.ShapeDtypeStruct((1, *map(int, image_shape)), jnp.result_type(float))  # float64 under x64
    variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)
    with nn.intercept_methods(record):
        jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, x)
    if not calls:
        raise UserError(
            f"{type(model).__name__} has no spatial feature map, so it has no Grad-CAM: choose a "
            "convolutional network (ConvNet, AlexNet, VGG11, ResNet18, their variants)."
        )
    side = min(min_map_size, max(min(shape[:2]) for _, shape in calls))
    path, shape = [call for call in calls if min(call[1][:2]) >= side][-1]
    return Tap(path, shape)


def probe_linear_head(model: nn.Module, variables, image_shape, tap: Tap, key: jax.Array) -> Tap:
    """`tap` with `linear_head` set: True when the class score is piecewise linear in the tapped map A,
    i.e. its Hessian-vector product in A is exactly 0 at random images and directions.

    Then ∂(w_k = mean ∂z/∂A_k)/∂A = 0 wherever it exists: the Grad-CAM weights carry no gradient to the
    pixels and `stop_gradient` on them is exact (ReLU / leaky ReLU, max / average pooling, linear
    layers and eval-mode BatchNorm after the tap). Sigmoid, swish, or instance / layer / group norm
    after the tap give a non-zero product: the full second-order path is kept.
    """
    image_key, labels_key, direction_key = jax.random.split(key, 3)
    images = jax.random.normal(image_key, (2, *image_shape))
    logits, _ = model.apply(variables, images, train=False)
    labels = jax.random.randint(labels_key, (2,), 0, logits.shape[-1])
    delta = jnp.zeros((2, *tap.map_shape), images.dtype)

    def score(delta):
        logits, _ = _perturbed_logits(model, variables, images, tap.path, delta)
        return jnp.sum(jnp.take_along_axis(logits, labels[:, None], axis=1))

    direction = jax.random.normal(direction_key, delta.shape)
    # reverse over reverse: the convolutions are custom_vjp functions, which have no forward mode
    hvp = jax.grad(lambda d: jnp.vdot(jax.grad(score)(d), direction))(delta)
    return tap._replace(linear_head=bool(jnp.all(hvp == 0)))


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
    model: nn.Module, variables, images: jax.Array, labels: jax.Array, tap: Tap, *, stop_weights: bool = False
) -> tuple[jax.Array, jax.Array]:
    """Raw Grad-CAM maps Σ_k w_k A_k [B, h, w] (before the ReLU, not resized) and the logits [B, K].

    images [B, H, W, C], labels [B] int; `tap` from `feature_tap`. `stop_weights`: no gradient through
    the weights w_k (exact when `tap.linear_head`; see `probe_linear_head`).
    """
    delta = jnp.zeros((images.shape[0], *tap.map_shape), images.dtype)

    def class_score(delta):
        logits, feature_map = _perturbed_logits(model, variables, images, tap.path, delta)
        score = jnp.sum(jnp.take_along_axis(logits, labels[:, None], axis=1))
        return score, (logits, feature_map)

    grad, (logits, feature_map) = jax.grad(class_score, has_aux=True)(delta)
    weights = jnp.mean(grad, axis=(1, 2))  # [B, C]
    if stop_weights:
        weights = jax.lax.stop_gradient(weights)
    return jnp.einsum("bhwc,bc->bhw", feature_map, weights), logits


def _resize(maps: jax.Array, size: tuple[int, int]) -> jax.Array:
    return jax.image.resize(maps, (maps.shape[0], *size), method="bilinear")


def _min_max(maps: jax.Array, epsilon: float) -> jax.Array:
    low = jnp.min(maps, axis=(1, 2), keepdims=True)
    high = jnp.max(maps, axis=(1, 2), keepdims=True)
    return (maps - low) / (high - low + epsilon)


def normalise_maps(
    raw: jax.Array, size: tuple[int, int], epsilon: float, method: str = "minmax"
) -> jax.Array:
    """Raw maps [B, h, w] (Σ_k w_k A_k) -> CAMs [B, H, W] on the image grid `size`, per map:

    - 'minmax': relu, bilinear resize, (m − min) / (max − min + ε), in [0, 1] (Grad-CAM's map). A map
      with at most one positive cell becomes a fixed template: no gradient reaches its pixels.
    - 'pre_relu': resize, then min-max without the ReLU (in [0, 1]; negative evidence kept, so only a
      constant map is frozen).
    - 'softmax': resize, standardise ((m − mean) / (std + ε)), softmax over the H·W pixels, times H·W
      (a uniform map is 1 everywhere, whatever the resolution).
    """
    if method == "minmax":
        return _min_max(_resize(nn.relu(raw), size), epsilon)
    resized = _resize(raw, size)
    if method == "pre_relu":
        return _min_max(resized, epsilon)
    if method == "softmax":
        mean = jnp.mean(resized, axis=(1, 2), keepdims=True)
        standard = (resized - mean) / (jnp.std(resized, axis=(1, 2), keepdims=True) + epsilon)
        flat = standard.reshape(standard.shape[0], -1)
        return (jax.nn.softmax(flat, axis=-1) * flat.shape[-1]).reshape(resized.shape)
    raise ValueError(f"unknown CAM normalisation {method!r}; choose one of {', '.join(NORMALISATIONS)}")


def grad_cam(
    model: nn.Module,
    variables,
    images: jax.Array,
    labels: jax.Array,
    tap: Tap,
    *,
    epsilon: float,
    normalisation: str = "minmax",
    stop_weights: bool = False,
) -> tuple[jax.Array, jax.Array]:
    """(cams [B, H, W], logits [B, K]) of images [B, H, W, C] with labels [B] under a frozen network;
    `tap` = `feature_tap(model, image_shape)`. Differentiable w.r.t. the images. `normalisation`: see
    `normalise_maps`; `stop_weights`: see `class_activation`."""
    raw, logits = class_activation(model, variables, images, labels, tap, stop_weights=stop_weights)
    return normalise_maps(raw, images.shape[1:3], epsilon, normalisation), logits
