"""ZCA whitening of a real dataset, as the MTT reference preprocesses CIFAR (its `--zca`).

The reference (GeorgeCazenavette/mtt-distillation, utils.py) skips the mean/std normalisation, fits
kornia's `ZCAWhitening(eps=0.1)` on all training pixels in [0, 1] and applies it to the training and test
images: with X [N, D] the flattened images, μ their mean, Σ = (X − μ)ᵀ(X − μ)/(N − 1) = U diag(S) Uᵀ,

    whiten(x) = (x − μ) W,   W = U diag((S + ε)^(−1/2)) Uᵀ,   unwhiten(y) = y W⁻¹ + μ,

W⁻¹ = U diag((S + ε)^(1/2)) Uᵀ. ε regularises the small eigenvalues: the whitened images keep their
edges without the pixel noise a plain whitening would blow up. The flattening order does not matter
(a permutation of the D pixels permutes Σ, U and W alike), so NHWC here equals the reference's NCHW.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import struct

from jaxdd.data.real import RealData, split_name
from jaxdd.errors import require, require_positive
from jaxdd.settings import from_section, section_config

DEFAULT_EPS = 0.1  # the reference's kornia.enhance.ZCAWhitening(eps=0.1)
# D above this makes W and W⁻¹ (2·D² float32) and the D×D eigendecomposition too big to be a default
# preprocessing step: Tiny ImageNet's 64×64×3 (D 12,288: 1.1 GiB) is refused; the reference never whitens it.
MAX_DIMENSION = 4096


@dataclasses.dataclass(frozen=True)
class ZCASettings:
    """`config.zca` read once: whether the real images are ZCA-whitened (in place of mean/std) and ε."""

    enabled: bool = False
    eps: float = DEFAULT_EPS

    def __post_init__(self):
        require(isinstance(self.enabled, bool), f"zca.enabled={self.enabled!r} must be True or False.")
        require_positive("zca.eps", self.eps, note=f"the eigenvalue regulariser; reference {DEFAULT_EPS}")

    @property
    def split_suffix(self) -> str:
        """What whitening adds to `RealData.split` ('' when off)."""
        return f"+zca{self.eps:g}" if self.enabled else ""


_EXACT = jax.lax.Precision.HIGHEST  # no TF32 / bf16 passes: Σ's small eigenvalues decide W


@struct.dataclass
class Whitening:
    """A fitted ZCA transform of images [H, W, C] flattened to D = H·W·C.

    Attributes:
      mean: [D] float32, the mean training image (pixels in [0, 1]).
      matrix: [D, D] float32, W (symmetric).
      inverse: [D, D] float32, W⁻¹ (symmetric).
      eps: the eigenvalue regulariser ε.
    """

    mean: jax.Array
    matrix: jax.Array
    inverse: jax.Array
    eps: float = struct.field(pytree_node=False)


def fit(images: jax.Array, eps: float = DEFAULT_EPS) -> Whitening:
    """The ZCA transform of `images` [N, H, W, C] (N ≥ 2; pixels in [0, 1] as the reference fits it),
    with the unbiased covariance and the eigenvalue regulariser `eps` > 0."""
    flat = images.reshape(images.shape[0], -1).astype(jnp.float32)
    mean = flat.mean(axis=0)
    centred = flat - mean
    covariance = jnp.matmul(centred.T, centred, precision=_EXACT) / (flat.shape[0] - 1)
    eigenvalues, eigenvectors = jnp.linalg.eigh(covariance)
    eigenvalues = jnp.maximum(eigenvalues, 0.0)  # Σ is PSD; rounding can leave tiny negatives

    def power(exponent: float) -> jax.Array:
        scaled = eigenvectors * jnp.power(eigenvalues + eps, exponent)[None, :]
        return jnp.matmul(scaled, eigenvectors.T, precision=_EXACT)

    return Whitening(mean=mean, matrix=power(-0.5), inverse=power(0.5), eps=float(eps))


def whiten(whitening: Whitening, images: jax.Array) -> jax.Array:
    """(x − μ) W of every image of `images` [N, H, W, C] in [0, 1]: [N, H, W, C] float32."""
    flat = images.reshape(images.shape[0], -1).astype(jnp.float32) - whitening.mean
    return jnp.matmul(flat, whitening.matrix, precision=_EXACT).reshape(images.shape)


def unwhiten(whitening: Whitening, images: jax.Array) -> jax.Array:
    """y W⁻¹ + μ: whitened images [N, H, W, C] back to pixels (≈ [0, 1]; a synthetic image may leave it)."""
    flat = images.reshape(images.shape[0], -1).astype(jnp.float32)
    return (jnp.matmul(flat, whitening.inverse, precision=_EXACT) + whitening.mean).reshape(images.shape)


def _pixels(real: RealData, images: jax.Array) -> jax.Array:
    """`real`'s mean/std-normalised images back in [0, 1]."""
    return images * jnp.asarray(real.std) + jnp.asarray(real.mean)


def whiten_real(real: RealData, settings: ZCASettings) -> RealData:
    """`real` with its training and test images ZCA-whitened by a transform fitted on its training images
    alone (after any hold-out, so validation images never shape it), in place of the mean/std
    normalisation (`mean` 0, `std` 1; the transform is `real.whitening`). `real` itself when off."""
    if not settings.enabled:
        return real
    train_pixels = _pixels(real, real.train_images)
    whitening = fit(train_pixels, settings.eps)
    channels = real.image_shape[-1]
    return real.replace(
        train_images=whiten(whitening, train_pixels),
        test_images=whiten(whitening, _pixels(real, real.test_images)),
        mean=(0.0,) * channels,
        std=(1.0,) * channels,
        split=real.split + settings.split_suffix,
        whitening=whitening,
    )


def default_config():
    """`config.zca`'s default: off, ε 0.1."""
    return section_config(ZCASettings)


def validate(config, info) -> None:
    """UserError for a bad `config.zca` or one too big for the dataset (info: its `DatasetInfo`)."""
    settings = settings_from_config(config)
    dimension = math.prod(info.image_shape)
    require(
        not settings.enabled or dimension <= MAX_DIMENSION,
        f"zca.enabled=True for {info.name!r}: its images have D = {dimension} pixels, and whitening holds "
        f"two D×D matrices ({8 * dimension**2 / 2**30:.1f} GiB) and decomposes one; jaxdd whitens images of "
        f"D ≤ {MAX_DIMENSION} (CIFAR's 3072) only: set --config.zca.enabled=False.",
    )


def settings_from_config(config) -> ZCASettings:
    """`config.zca` as `ZCASettings` (checked)."""
    return from_section(ZCASettings, config.zca)


def training_split(config) -> str:
    """The `RealData.split` the run's training data will have (hold-out and whitening), known before any
    data loads: what the teacher and expert caches are checked against in validation."""
    held_out = split_name(config.holdout.per_class, config.holdout.seed)
    return held_out + settings_from_config(config).split_suffix
