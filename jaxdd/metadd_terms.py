"""MetaDD's terms over stacked per-architecture outputs (DESIGN §4.6), pure functions of arrays.

cams [M, N, H, W]: the M auxiliary networks' normalised CAMs of the N synthetic images
(`jaxdd.cam.normalise_maps`); logits [M, N, K]; labels [N]. The CAM terms measure how much the
architectures disagree about WHERE the evidence is; the agreement term how much they disagree about
WHAT the image is (and whether each recognises it).

- `remove_low_confidence`: the paper's removal of low-confidence regions, pixels below a threshold set to 0.
- `cam_variance`: L_var = mean_{n,h,w} Var_m cams[m, n, h, w] (the paper's variance over the maps);
  with `threshold` > 0 over the maps with their low-confidence pixels removed.
- `cam_misalignment`: 1 − the mean pairwise cosine of the centred maps (c − mean_{h,w} c): a
  scale-free alternative to the variance, 0 when every architecture's map is the same up to an
  affine change.
- `agreement_loss`: L_ai = Σ_m [CE(f_m(S), y) + KL(target ‖ p_m)], the KL to the auxiliaries' mean
  prediction p̄ ('mean'), to the base method's own network ('backbone'), or no KL ('none': CE only).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxdd import losses

KL_TARGETS = ("mean", "backbone", "none")
META_THRESHOLD = 0.5  # the paper's definition of a (meta) feature pixel


def remove_low_confidence(cams: jax.Array, threshold: float) -> jax.Array:
    """cams [..., H, W] with every pixel below `threshold` set to 0 (no gradient there); 0: unchanged."""
    return jnp.where(cams >= threshold, cams, 0.0) if threshold else cams


def cam_variance(cams: jax.Array, threshold: float = 0.0) -> jax.Array:
    """L_var of cams [M, N, H, W]: the per-pixel (population) variance over the M maps, averaged; with
    `threshold` > 0 the pixels of a map below it count as 0 (the paper's low-confidence removal)."""
    return jnp.mean(jnp.var(remove_low_confidence(cams, threshold), axis=0))


def cam_misalignment(cams: jax.Array, epsilon: float = 1e-8) -> jax.Array:
    """1 − mean over images and pairs m < m' of cos(c̃_m, c̃_m'), c̃ = c − mean_{h,w} c, for cams
    [M, N, H, W] (M ≥ 2); in [0, 2]. `epsilon` keeps a constant map's cosine finite (it counts as 0)."""
    centred = cams - jnp.mean(cams, axis=(2, 3), keepdims=True)
    flat = centred.reshape(*centred.shape[:2], -1)
    unit = flat / (jnp.linalg.norm(flat, axis=-1, keepdims=True) + epsilon)
    cosines = jnp.einsum("mnp,lnp->nml", unit, unit)  # [N, M, M]
    m = cams.shape[0]
    upper = jnp.triu(jnp.ones((m, m), bool), k=1)
    return 1.0 - jnp.sum(jnp.where(upper, cosines, 0.0)) / (cams.shape[1] * m * (m - 1) / 2)


def agreement_loss(
    logits: jax.Array, labels: jax.Array, kl_target: str = "mean", backbone_logits: jax.Array | None = None
) -> jax.Array:
    """L_ai = Σ_m [CE(logits_m, y) + KL(target ‖ p_m)] for logits [M, N, K], labels [N]; means over
    images. `kl_target`: 'mean' (p̄ = mean_m p_m), 'backbone' (`backbone_logits` [N, K], the base
    method's network on the same images) or 'none'."""
    log_p = jax.nn.log_softmax(logits, axis=-1)
    ce = -jnp.take_along_axis(log_p, jnp.broadcast_to(labels[None, :, None], (*logits.shape[:2], 1)), -1)
    total = jnp.sum(jnp.mean(ce[..., 0], axis=1))
    if kl_target == "none":
        return total
    if kl_target == "mean":
        target = jax.nn.logsumexp(log_p, axis=0) - jnp.log(logits.shape[0])  # log p̄ [N, K]
    elif kl_target == "backbone":
        if backbone_logits is None:
            raise ValueError("kl_target='backbone' needs the base method's network's logits")
        target = backbone_logits
    else:
        raise ValueError(f"unknown kl_target {kl_target!r}; choose one of {', '.join(KL_TARGETS)}")
    return total + sum(losses.kl_divergence(log_p[m], target) for m in range(logits.shape[0]))


def feature_fractions(cams: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(meta, heterogeneous) pixel fractions of cams [M, N, H, W] in [0, 1]: every map ≥ 0.5; some but
    not all (the paper's analysis; not a measure of success)."""
    above = cams >= META_THRESHOLD
    every, some = jnp.all(above, axis=0), jnp.any(above, axis=0)
    return jnp.mean(every), jnp.mean(some & ~every)
