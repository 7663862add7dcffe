"""Random-resized-crop and horizontal-flip views, differentiable w.r.t. the pixels (SRe2L's augmentation).

As torchvision's `RandomResizedCrop(size, scale=(min_scale, 1), ratio=(3/4, 4/3))` followed by
`RandomHorizontalFlip()`, per image: a box of area fraction s ~ U(min_scale, 1) and aspect ratio
exp(U(log 3/4, log 4/3)) (each side clipped to the image instead of torchvision's ten retries), placed
uniformly at a continuous position, resized back to the full image bilinearly with
`align_corners=False` and the box's edge replicated (no antialiasing: a crop only enlarges), mirrored with
probability 1/2. The resize is separable, so it is two small interpolation matrices per image
(`[H, H]` and `[W, W]`, each row two weights summing to 1) and an einsum: matmuls, no gathers.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

RATIO = (3 / 4, 4 / 3)


def interpolation_matrix(start: jax.Array, extent: jax.Array, size: int) -> jax.Array:
    """[N, size, size] bilinear weights reading output pixel i of image n from the box [start, start +
    extent) of the input axis (length `size`), resized to `size`: source start + (i + 0.5)·extent/size
    − 0.5, clamped to the box (edge replication, as resizing the cropped box). start, extent: [N] in
    pixels."""
    centres = jnp.arange(size, dtype=jnp.float32) + 0.5
    source = start[:, None] + centres[None, :] * (extent[:, None] / size) - 0.5
    last = jnp.maximum(start, start + extent - 1)[:, None]  # the box's last pixel, as cropping first does
    source = jnp.clip(jnp.clip(source, start[:, None], last), 0.0, size - 1.0)
    low = jnp.floor(source)
    frac = (source - low)[..., None]
    high = jnp.minimum(low + 1, size - 1)
    one_hot = lambda index: jax.nn.one_hot(index.astype(jnp.int32), size, dtype=jnp.float32)
    return one_hot(low) * (1 - frac) + one_hot(high) * frac


def crop_matrices(key: jax.Array, num: int, height: int, width: int, *, min_scale: float):
    """Per-image row and column interpolation matrices [num, H, H], [num, W, W] of a random resized crop,
    the columns reversed for the flipped images."""
    k_area, k_ratio, k_y, k_x, k_flip = jax.random.split(key, 5)
    area = jax.random.uniform(k_area, (num,), minval=min_scale, maxval=1.0) * height * width
    log_ratio = jax.random.uniform(k_ratio, (num,), minval=math.log(RATIO[0]), maxval=math.log(RATIO[1]))
    ratio = jnp.exp(log_ratio)  # width / height of the box
    box_h = jnp.minimum(jnp.sqrt(area / ratio), height)
    box_w = jnp.minimum(jnp.sqrt(area * ratio), width)
    top = jax.random.uniform(k_y, (num,)) * (height - box_h)
    left = jax.random.uniform(k_x, (num,)) * (width - box_w)
    rows = interpolation_matrix(top, box_h, height)
    columns = interpolation_matrix(left, box_w, width)
    flip = jax.random.bernoulli(k_flip, 0.5, (num,))
    return rows, jnp.where(flip[:, None, None], columns[:, ::-1], columns)


MIN_SCALE = 0.08  # torchvision's RandomResizedCrop default, which SRe2L's recover and relabel use


@functools.partial(jax.jit, static_argnames="min_scale")
def random_resized_crop_flip(images: jax.Array, key: jax.Array, *, min_scale: float = MIN_SCALE) -> jax.Array:
    """One random resized crop + flip view per image of images [N, H, W, C] -> [N, H, W, C]."""
    n, h, w, _ = images.shape
    rows, columns = crop_matrices(key, n, h, w, min_scale=min_scale)
    return jnp.einsum("nih,nhwc,njw->nijc", rows, images, columns)
