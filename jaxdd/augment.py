"""Differentiable Siamese Augmentation (DSA) as pure JAX functions.

Zhao & Bilen, "Dataset Condensation with Differentiable Siamese Augmentation", ICML 2021. Every call
draws ONE op group from the strategy (the reference's 'S' mode) and applies it with random parameters
that are either shared by the whole batch (siamese: the real and synthetic batch of a class, given the
same key, get the identical transform whatever their sizes) or drawn per image (network training).

Images are NHWC float arrays in the normalised space the networks see. Every op is differentiable with
respect to the pixels. An op only draws parameters for one of three stages: colour (brightness,
saturation, contrast), an affine warp (crop, flip, scale and rotate) or cutout. The warp follows
PyTorch's ``affine_grid`` + ``grid_sample`` (bilinear, zero padding, ``align_corners=False``, the
defaults the reference ran with): in pixel units the source of output pixel p is ``c + A (p - c) + t``,
``c`` the image centre ``(size - 1) / 2``.
"""

import dataclasses
import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxdd.errors import UserError

STRATEGY_RGB = "color_crop_cutout_flip_scale_rotate"
STRATEGY_DIGITS = "color_crop_cutout_scale_rotate"
# The DSA readme: flip "is not good for digit datasets (MNIST and SVHN)"; Fashion-MNIST keeps it.
_DIGIT_DATASETS = frozenset({"mnist", "svhn", "digits"})


@dataclasses.dataclass(frozen=True)
class DSAParams:
    """Ranges of the DSA parameters (the reference's ``ParamDiffAug``).

    Attributes:
      scale: per-axis scale factor ~ U(1/scale, scale).
      rotate: angle ~ U(-rotate, rotate) degrees.
      crop: translation up to round(crop * size) pixels per axis, zero fill.
      cutout: side of the zeroed square, round(cutout * size).
      flip: probability of a horizontal flip.
      brightness: added offset ~ brightness * U(-0.5, 0.5).
      saturation: factor around the per-pixel channel mean ~ U(0, saturation).
      contrast: factor around the per-image mean ~ U(contrast, contrast + 1).
    """

    scale: float = 1.2
    rotate: float = 15.0
    crop: float = 0.125
    cutout: float = 0.5
    flip: float = 0.5
    brightness: float = 1.0
    saturation: float = 2.0
    contrast: float = 0.5

    def __post_init__(self):
        checks = {
            "scale": self.scale >= 1.0,
            "rotate": self.rotate >= 0.0,
            "crop": 0.0 <= self.crop < 1.0,
            "cutout": 0.0 < self.cutout <= 1.0,
            "flip": 0.0 <= self.flip <= 1.0,
            "brightness": self.brightness >= 0.0,
            "saturation": self.saturation >= 0.0,
            "contrast": self.contrast >= 0.0,
        }
        bad = [f"{name}={getattr(self, name)!r}" for name, ok in checks.items() if not ok]
        if bad:
            raise UserError(
                f"DSA parameters out of range: {', '.join(bad)}. Need scale >= 1, 0 <= crop < 1, "
                "0 < cutout <= 1, 0 <= flip <= 1 and the others >= 0 (defaults: DSAParams())."
            )


def _expand(value: jax.Array, trailing: int = 3) -> jax.Array:
    """A parameter of shape [] (shared) or [N] (per image) with ``trailing`` axes added to broadcast."""
    return jnp.asarray(value)[(...,) + (None,) * trailing]


# ---- ops with explicit parameters: each is a scalar (whole batch) or has shape [N]; jitted so that
# eager calls compile once per shape instead of dispatching dozens of small programs ----


@jax.jit
def adjust_brightness(images: jax.Array, delta: jax.Array) -> jax.Array:
    """Adds ``delta`` to every pixel. images [N, H, W, C]."""
    return images + _expand(delta)


@jax.jit
def adjust_saturation(images: jax.Array, factor: jax.Array) -> jax.Array:
    """Scales each pixel's deviation from its own channel mean by ``factor`` (identity for C = 1)."""
    # Per-channel slices: XLA:CPU reduces over a minor axis of size 3 (forward, and the backward of
    # the broadcast mean) about 10x slower than this.
    channels = [images[..., k : k + 1] for k in range(images.shape[-1])]
    mean = sum(channels) / len(channels)
    factor = _expand(factor)
    return jnp.concatenate([(channel - mean) * factor + mean for channel in channels], axis=-1)


@jax.jit
def adjust_contrast(images: jax.Array, factor: jax.Array) -> jax.Array:
    """Scales each image's deviation from its mean over H, W, C by ``factor``."""
    mean = images.mean(axis=(1, 2, 3), keepdims=True)
    return (images - mean) * _expand(factor) + mean


def _centred(size: int) -> jax.Array:
    return jnp.arange(size, dtype=jnp.float32) - (size - 1) / 2


def _warp_one(image: jax.Array, matrix: jax.Array, shift: jax.Array) -> jax.Array:
    """Bilinear sampling of one image [H, W, C] at ``c + matrix @ (p - c) + shift``, zero outside.

    Four gathers of flattened pixels (the backward pass scatter-adds). Integer source coordinates,
    as for crop and flip, give exact copies.
    """
    h, w, c = image.shape
    i, j = _centred(h)[:, None], _centred(w)[None, :]
    source_y = (h - 1) / 2 + matrix[0, 0] * i + matrix[0, 1] * j + shift[0]
    source_x = (w - 1) / 2 + matrix[1, 0] * i + matrix[1, 1] * j + shift[1]
    y0, x0 = jnp.floor(source_y), jnp.floor(source_x)
    pixels = image.reshape(h * w, c)
    out = jnp.zeros((h * w, c), image.dtype)
    for corner_y in (y0, y0 + 1):
        for corner_x in (x0, x0 + 1):
            inside = (corner_y >= 0) & (corner_y <= h - 1) & (corner_x >= 0) & (corner_x <= w - 1)
            weight = (1 - jnp.abs(source_y - corner_y)) * (1 - jnp.abs(source_x - corner_x))
            weight = jnp.where(inside, weight, 0.0).astype(image.dtype).reshape(-1, 1)
            index = jnp.clip(corner_y, 0, h - 1) * w + jnp.clip(corner_x, 0, w - 1)
            out = out + pixels[index.astype(jnp.int32).reshape(-1)] * weight
    return out.reshape(h, w, c)


@jax.jit
def warp(images: jax.Array, matrix: jax.Array, shift: jax.Array) -> jax.Array:
    """Affine warp, as ``grid_sample(images, affine_grid(theta))`` with PyTorch's defaults.

    Output pixel p (row, column) reads the source at ``c + matrix @ (p - c) + shift`` in pixel units,
    ``c`` the image centre, bilinearly, zero outside. images [N, H, W, C]; matrix [2, 2] or [N, 2, 2]
    acting on (row, column); shift [2] or [N, 2].
    """
    n = images.shape[0]
    matrix, shift = jnp.asarray(matrix, jnp.float32), jnp.asarray(shift, jnp.float32)
    if matrix.ndim == 2 and shift.ndim == 1:
        return jax.vmap(_warp_one, in_axes=(0, None, None))(images, matrix, shift)
    matrix, shift = jnp.broadcast_to(matrix, (n, 2, 2)), jnp.broadcast_to(shift, (n, 2))
    return jax.vmap(_warp_one)(images, matrix, shift)


def _matrix(yy, yx, xy, xx) -> jax.Array:
    """[..., 2, 2] from four entries of shape [] or [N]."""
    yy, yx, xy, xx = jnp.broadcast_arrays(yy, yx, xy, xx)
    return jnp.stack([jnp.stack([yy, yx], -1), jnp.stack([xy, xx], -1)], -2).astype(jnp.float32)


def _shift(shift_y, shift_x) -> jax.Array:
    return jnp.stack(jnp.broadcast_arrays(shift_y, shift_x), -1).astype(jnp.float32)


def _translation(shift_y, shift_x):
    ones, zeros = jnp.ones_like(shift_y, jnp.float32), jnp.zeros_like(shift_y, jnp.float32)
    return _matrix(ones, zeros, zeros, ones), _shift(shift_y, shift_x)


def _flipping(flip):
    ones, zeros = jnp.ones_like(flip, jnp.float32), jnp.zeros_like(flip, jnp.float32)
    return _matrix(ones, zeros, zeros, jnp.where(flip, -1.0, 1.0)), _shift(zeros, zeros)


def _scaling(factor_y, factor_x):
    zeros = jnp.zeros_like(factor_y, jnp.float32)
    return _matrix(factor_y, zeros, zeros, factor_x), _shift(zeros, zeros)


def _rotation(angle, height: int, width: int):
    # affine_grid rotates normalised coordinates ([-1, 1] on each axis): in pixels the off-diagonal
    # terms carry the aspect ratio.
    cos, sin = jnp.cos(angle), jnp.sin(angle)
    zeros = jnp.zeros_like(angle, jnp.float32)
    return _matrix(cos, sin * (height / width), -sin * (width / height), cos), _shift(zeros, zeros)


@jax.jit
def translate(images: jax.Array, shift_y: jax.Array, shift_x: jax.Array) -> jax.Array:
    """Integer translation with zero fill: ``out[i, j] = images[i + shift_y, j + shift_x]``.

    The reference's ``rand_crop`` (zero-pad by one pixel, then index with clamped shifted indices).
    """
    return warp(images, *_translation(shift_y, shift_x))


@jax.jit
def flip_horizontal(images: jax.Array, flip: jax.Array) -> jax.Array:
    """Reverses the columns (W axis) of the images where the boolean ``flip`` is true."""
    return warp(images, *_flipping(flip))


@jax.jit
def scale(images: jax.Array, factor_y: jax.Array, factor_x: jax.Array) -> jax.Array:
    """Scales about the centre: the output samples the source at ``c + factor (p - c)``.

    A factor > 1 shows a larger field of view (the content shrinks), as ``affine_grid`` with
    ``theta = [[factor_x, 0, 0], [0, factor_y, 0]]`` does.
    """
    return warp(images, *_scaling(factor_y, factor_x))


@jax.jit
def rotate(images: jax.Array, angle: jax.Array) -> jax.Array:
    """Rotates by ``angle`` radians about the centre (positive: anticlockwise as displayed).

    ``affine_grid`` with ``theta = [[cos, -sin, 0], [sin, cos, 0]]``: the rotation acts on normalised
    coordinates, so a non-square image is sheared by its aspect ratio, as in the reference; on a
    square image 90 degrees equals ``rot90``.
    """
    return warp(images, *_rotation(angle, *images.shape[1:3]))


@functools.partial(jax.jit, static_argnames="size")
def cut_out(
    images: jax.Array, centre_y: jax.Array, centre_x: jax.Array, *, size: tuple[int, int]
) -> jax.Array:
    """Zeroes rows [centre_y - size_y // 2, + size_y) x the same for columns (clipped to the image)."""
    _, h, w, _ = images.shape
    top = _expand(centre_y, 2) - size[0] // 2
    left = _expand(centre_x, 2) - size[1] // 2
    i, j = jnp.arange(h)[:, None], jnp.arange(w)[None, :]
    hole = (i >= top) & (i < top + size[0]) & (j >= left) & (j < left + size[1])
    return images * (~hole).astype(images.dtype)[..., None]


# ---- op groups: each draws its parameters (shape [] siamese, [N] per image) for one stage ----


class _Draw(NamedTuple):
    """Parameters of all three stages; an op sets those of its own stage and leaves the rest."""

    colour: jax.Array  # [..., 3]: brightness offset, saturation factor, contrast factor
    matrix: jax.Array  # [..., 2, 2] warp matrix
    shift: jax.Array  # [..., 2] warp shift
    centre: jax.Array  # [..., 2] int32 cutout centre


def _identity(shape: tuple[int, ...]) -> _Draw:
    zeros = jnp.zeros(shape)
    return _Draw(
        jnp.stack([zeros, zeros + 1, zeros + 1], -1),
        *_translation(zeros, zeros),
        jnp.zeros((*shape, 2), jnp.int32),
    )


def _round_half_up(x: float) -> int:
    return math.floor(x + 0.5)


def _hole(height: int, width: int, params: DSAParams) -> tuple[int, int]:
    return _round_half_up(height * params.cutout), _round_half_up(width * params.cutout)


def _color(key, shape, size, params):
    k_b, k_s, k_c = jax.random.split(key, 3)
    colour = jnp.stack(
        [
            (jax.random.uniform(k_b, shape) - 0.5) * params.brightness,
            jax.random.uniform(k_s, shape) * params.saturation,
            jax.random.uniform(k_c, shape) + params.contrast,
        ],
        -1,
    )
    return _identity(shape)._replace(colour=colour)


def _crop(key, shape, size, params):
    k_y, k_x = jax.random.split(key)
    max_y, max_x = (_round_half_up(n * params.crop) for n in size)
    shift_y = jax.random.randint(k_y, shape, -max_y, max_y + 1)
    shift_x = jax.random.randint(k_x, shape, -max_x, max_x + 1)
    matrix, shift = _translation(shift_y, shift_x)
    return _identity(shape)._replace(matrix=matrix, shift=shift)


def _flip(key, shape, size, params):
    matrix, shift = _flipping(jax.random.uniform(key, shape) < params.flip)
    return _identity(shape)._replace(matrix=matrix, shift=shift)


def _scale(key, shape, size, params):
    k_y, k_x = jax.random.split(key)
    low, high = 1.0 / params.scale, params.scale
    factor_y = jax.random.uniform(k_y, shape, minval=low, maxval=high)
    factor_x = jax.random.uniform(k_x, shape, minval=low, maxval=high)
    matrix, shift = _scaling(factor_y, factor_x)
    return _identity(shape)._replace(matrix=matrix, shift=shift)


def _rotate(key, shape, size, params):
    limit = math.radians(params.rotate)
    matrix, shift = _rotation(jax.random.uniform(key, shape, minval=-limit, maxval=limit), *size)
    return _identity(shape)._replace(matrix=matrix, shift=shift)


def _cutout(key, shape, size, params):
    hole = _hole(*size, params)
    # The reference's centre range: [0, H] for an even hole, [0, H - 1] for an odd one.
    centre = [
        jax.random.randint(k, shape, 0, n + 1 - side % 2)
        for k, n, side in zip(jax.random.split(key), size, hole, strict=True)
    ]
    return _identity(shape)._replace(centre=jnp.stack(centre, -1))


def _apply_colour(images, draw, params):
    images = adjust_brightness(images, draw.colour[..., 0])
    images = adjust_saturation(images, draw.colour[..., 1])
    return adjust_contrast(images, draw.colour[..., 2])


def _apply_warp(images, draw, params):
    return warp(images, draw.matrix, draw.shift)


def _apply_cutout(images, draw, params):
    hole = _hole(*images.shape[1:3], params)
    return cut_out(images, draw.centre[..., 0], draw.centre[..., 1], size=hole)


# op group -> (parameter draw, stage that applies it)
OPS = {
    "color": (_color, _apply_colour),
    "crop": (_crop, _apply_warp),
    "cutout": (_cutout, _apply_cutout),
    "flip": (_flip, _apply_warp),
    "scale": (_scale, _apply_warp),
    "rotate": (_rotate, _apply_warp),
}


def parse_strategy(strategy: str) -> tuple[str, ...]:
    """Splits a DSA strategy such as ``'color_crop_cutout_flip_scale_rotate'`` into op names.

    ``'none'`` or ``''`` gives ``()`` (no augmentation). A repeated op is kept: like the reference,
    each call draws uniformly among the listed entries, so a repeat weighs that op more.

    Raises:
      UserError: naming the unknown op and the valid ones.
    """
    if not isinstance(strategy, str):
        raise UserError(f"DSA strategy must be a string such as {STRATEGY_RGB!r}, got {strategy!r}.")
    text = strategy.strip()
    if text.lower() in ("", "none"):
        return ()
    names = tuple(text.split("_"))
    unknown = [name for name in names if name not in OPS]
    if unknown:
        raise UserError(
            f"DSA strategy {strategy!r}: unknown op(s) {', '.join(map(repr, unknown))}. Valid ops: "
            f"{', '.join(OPS)}, joined by '_' (e.g. {STRATEGY_RGB!r}), or 'none'."
        )
    return names


def default_strategy(dataset: str) -> str:
    """The strategy the DSA authors used: no flip for digit datasets (MNIST, SVHN, sklearn digits).

    Decided by name, not channel count: Fashion-MNIST (1 channel) keeps flip, SVHN (3) drops it.
    """
    key = dataset.lower().replace("-", "").replace("_", "")
    return STRATEGY_DIGITS if key in _DIGIT_DATASETS else STRATEGY_RGB


def resolve_strategy(value: str, dataset: str) -> str:
    """A config's strategy key as applied: 'dsa' is the dataset's `default_strategy`, anything else (a
    strategy string, 'none') is taken as it is."""
    return default_strategy(dataset) if value == "dsa" else value


def check_strategy_key(key: str, value) -> None:
    """UserError unless `value` is 'dsa', 'none' or a valid strategy string; '' was jaxdd's older spelling
    of 'dsa' in gm/dm and is refused rather than read as either."""
    if value == "":
        raise UserError(
            f"{key}='' is ambiguous (it once meant the dataset's default strategy): write {key}=dsa for "
            f"that, {key}=none for no augmentation, or a strategy such as {STRATEGY_RGB!r}."
        )
    if value != "dsa":
        parse_strategy(value)


@functools.partial(jax.jit, static_argnames=("strategy", "siamese", "params"))
def augment(
    images: jax.Array,
    key: jax.Array,
    *,
    strategy: str,
    siamese: bool,
    params: DSAParams = DSAParams(),
) -> jax.Array:
    """Applies one randomly drawn DSA op group to a batch (the reference ``DiffAugment``, mode 'S').

    Args:
      images: [N, H, W, C] float images.
      key: PRNG key. It alone decides the op; with ``siamese=True`` it also decides the parameters,
        so batches of any size given the same key get the same transform.
      strategy: op groups joined by '_' (see ``parse_strategy``); static.
      siamese: one parameter set for the whole batch (matching) or one per image (training).
      params: ranges of the random parameters.

    Returns:
      [N, H, W, C] augmented images, differentiable w.r.t. ``images``.

    Jitted: one program per shape and strategy. A ``lax.switch`` over the listed ops draws a small
    parameter set, a second one applies it with its stage (colour, affine warp or cutout). Under
    ``vmap`` over keys a switch evaluates all its branches, so the image work is at most the three
    stages, one warp serving crop, flip, scale and rotate.
    """
    names = parse_strategy(strategy)
    if not names:
        return images
    if images.ndim != 4:
        raise ValueError(f"augment expects images [N, H, W, C], got shape {images.shape}.")
    shape, size = (() if siamese else images.shape[:1]), images.shape[1:3]
    draws = [functools.partial(OPS[name][0], shape=shape, size=size, params=params) for name in names]
    stages = tuple(dict.fromkeys(OPS[name][1] for name in names))
    key_op, key_params = jax.random.split(key)
    entry = jax.random.randint(key_op, (), 0, len(names))
    draw = jax.lax.switch(entry, draws, key_params) if len(draws) > 1 else draws[0](key_params)
    if len(stages) == 1:
        return stages[0](images, draw, params)
    stage = jnp.asarray([stages.index(OPS[name][1]) for name in names])[entry]
    return jax.lax.switch(stage, [functools.partial(f, params=params) for f in stages], images, draw)
