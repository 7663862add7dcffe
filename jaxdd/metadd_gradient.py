"""The MetaDD regularizer's pixel gradient (DESIGN §4.6): its two terms wired from the auxiliary
networks' Grad-CAMs and logits, and their balance against the base method's gradient.

Terms (`jaxdd.metadd_terms`) of the synthetic images S [N, H, W, C], labels y [N], under the M frozen
auxiliary networks of `metadd.Auxiliaries` (cams [M, N, H, W] from `jaxdd.cam`, logits [M, N, K]):

    L_var  the CAM term: the per-pixel variance over the M maps ('variance', the paper's) or their
           centred-cosine misalignment ('alignment'), after the low-confidence removal (`cam_threshold`)
    L_ai   Σ_m [CE(f_m(S), y) + KL(target ‖ p_m)], target the auxiliaries' mean prediction, the base
           method's own network ('backbone', gradient through it too) or none

and the gradient g_R added to the base method's g_base:

    balance='fixed'  g_R = λ_var ∇L_var + λ_ai ∇L_ai, the gradient of R = λ_var L_var + λ_ai L_ai
    balance='ratio'  g_R = Σ_t r_t ‖g_base‖ ∇L_t / ‖∇L_t‖ (r_t: `var_ratio`, `ai_ratio`): each term
                     moves the set by a set fraction of the base step whatever its loss's scale (at equal
                     λ, ‖∇L_var‖ was measured 20-140× below ‖∇L_ai‖, so in the sum L_var never moved)

A weight (λ or r) of 0 switches its term's gradient off (not traced; its value is still reported). Both
gradients come from one forward (`jax.vjp`, then one pullback per term: the two cotangents cost what two
`value_and_grad`s cost under jit, whose CSE merges their forwards, and 1.5x the FLOPs of the sum's
gradient; measured with the four default auxiliaries at 28x28).

Metrics: 'metadd_var', 'metadd_ai' (the terms), 'metadd_{var,ai}_grad_norm' (‖∇L_t‖, unweighted: the
numbers to set λs by), with 'ratio' 'metadd_{var,ai}_weight' (the λ the ratio implied this step), and
'meta_fraction' / 'hetero_fraction' (pixels where every map / some but not all maps are ≥ 0.5: a
diagnostic, not a success measure).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import optax

from jaxdd import cam
from jaxdd import metadd_terms as terms
from jaxdd.errors import UserError

if TYPE_CHECKING:
    from jaxdd.metadd import Auxiliaries, Options

TERMS = ("var", "ai")  # the metric names of L_var and L_ai
Backbone = Callable[[jax.Array], jax.Array]  # images [N, H, W, C] -> logits [N, K]


def stops_weights(options: Options, tap: cam.Tap) -> bool:
    """Whether the Grad-CAM weights of `tap` get no gradient: weight_gradient='auto' on a tap probed
    piecewise linear after it (`cam.probe_linear_head`; exact there)."""
    return options.weight_gradient == "auto" and tap.linear_head


def cams_and_logits(aux: Auxiliaries, images: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(cams [M, N, H, W], logits [M, N, K]) of images [N, H, W, C]; a Python loop over the networks
    (different architectures cannot be vmapped or scanned together). `jax.checkpoint` around each
    network's CAM was measured: it raised XLA CPU's temporary memory, so it is not used."""
    o = aux.options
    options = {"epsilon": o.cam_epsilon, "normalisation": o.normalisation}
    outs = [
        cam.grad_cam(model, variables, images, labels, tap, stop_weights=stops_weights(o, tap), **options)
        for model, variables, tap in zip(aux.models, aux.variables, aux.taps, strict=True)
    ]
    return jnp.stack([c for c, _ in outs]), jnp.stack([z for _, z in outs])


def term_values(
    aux: Auxiliaries, images: jax.Array, labels: jax.Array, backbone: Backbone | None = None
) -> tuple[tuple[jax.Array, jax.Array], dict]:
    """((L_var, L_ai), {'meta_fraction', 'hetero_fraction'}) of images [N, H, W, C], labels [N]."""
    o = aux.options
    cams, logits = cams_and_logits(aux, images, labels)
    kept = terms.remove_low_confidence(cams, o.cam_threshold)
    cam_value = terms.cam_variance(kept) if o.cam_term == "variance" else terms.cam_misalignment(kept)
    target = None
    if o.kl_target == "backbone":
        if backbone is None:
            raise UserError(
                "metadd.kl_target='backbone' needs the base method's own network's logits, and this "
                "method's pixel step supplies none (methods.base.pixel_step's `backbone`): use "
                "metadd.kl_target='mean' or 'none'."
            )
        target = backbone(images)
    agreement = terms.agreement_loss(logits, labels, o.kl_target, target)
    meta, hetero = terms.feature_fractions(jax.lax.stop_gradient(cams))
    return (cam_value, agreement), {"meta_fraction": meta, "hetero_fraction": hetero}


def term_gradients(
    aux: Auxiliaries, images: jax.Array, labels: jax.Array, backbone: Backbone | None = None
) -> tuple[tuple[jax.Array, jax.Array], tuple, dict]:
    """((L_var, L_ai), (∇L_var, ∇L_ai) [N, H, W, C] each, None for a term of weight 0, metrics) of images
    [N, H, W, C]: one forward, one pullback per weighted term."""
    values, pullback, metrics = jax.vjp(lambda x: term_values(aux, x, labels, backbone), images, has_aux=True)
    grads = tuple(
        pullback(tuple(jnp.full_like(v, i == index) for i, v in enumerate(values)))[0] if weight else None
        for index, weight in enumerate(aux.options.weights)
    )
    return values, grads, metrics


def largest_divisor(n: int, at_most: int) -> int:
    """The largest divisor of `n` (≥ 1) that is ≤ `at_most` (≥ 1)."""
    return max(d for d in range(1, min(n, at_most) + 1) if n % d == 0)


def chunked_term_gradients(
    aux: Auxiliaries, images: jax.Array, labels: jax.Array, backbone: Backbone | None = None
) -> tuple[tuple[jax.Array, jax.Array], tuple, dict]:
    """`term_gradients` computed a chunk of images at a time (`lax.map`: one chunk's residuals alive at
    once), the chunk the largest divisor of N not above `options.image_chunk` (0: all at once). Exact:
    every term and metric is a mean over images of a per-image quantity (the auxiliaries are frozen in
    eval mode, and so are DC's and DM's backbones), so the set's is the mean of the chunks'. (MTT's
    backbone is the student in train mode: with a BatchNorm student and kl_target='backbone' its batch
    statistics become the chunk's.)"""
    n = images.shape[0]
    chunk = largest_divisor(n, aux.options.image_chunk) if aux.options.image_chunk else n
    if chunk == n:
        return term_gradients(aux, images, labels, backbone)
    chunks = n // chunk
    split = lambda x: x.reshape(chunks, chunk, *x.shape[1:])
    values, grads, metrics = jax.lax.map(
        lambda xy: term_gradients(aux, xy[0], xy[1], backbone), (split(images), split(labels))
    )
    mean = lambda tree: jax.tree.map(lambda v: jnp.mean(v, axis=0), tree)
    grads = jax.tree.map(lambda g: g.reshape(images.shape) / chunks, grads)
    return mean(values), grads, mean(metrics)


def regularizer_gradient(
    aux: Auxiliaries, images, labels, *, base_norm: jax.Array | None = None, backbone: Backbone | None = None
) -> tuple[jax.Array, jax.Array, dict]:
    """(Σ_t w_t L_t, g_R [N, H, W, C], metrics) of all of `images` (`chunked_term_gradients`); w_t = λ_t
    ('fixed') or r_t ‖g_base‖ / ‖∇L_t‖ ('ratio', 0 where ∇L_t = 0; needs `base_norm`, the base
    gradient's norm)."""
    o = aux.options
    if o.balance == "ratio" and base_norm is None:
        raise ValueError("metadd balance='ratio' needs base_norm, the base pixel gradient's norm")
    values, term_grads, metrics = chunked_term_gradients(aux, images, labels, backbone)
    loss, grad = jnp.zeros_like(values[0]), jnp.zeros_like(images)
    for index, (name, weight) in enumerate(zip(TERMS, o.weights, strict=True)):
        metrics[f"metadd_{name}"] = values[index]
        if not weight:
            continue
        term_grad = term_grads[index]
        norm = optax.tree.norm(term_grad)
        metrics[f"metadd_{name}_grad_norm"] = norm
        if o.balance == "ratio":
            weight = jnp.where(norm > 0, weight * base_norm / jnp.where(norm > 0, norm, 1.0), 0.0)
            metrics[f"metadd_{name}_weight"] = weight
        loss, grad = loss + weight * values[index], grad + weight * term_grad
    return loss, grad, metrics


def metadd_loss_and_grad(
    aux: Auxiliaries, images: jax.Array, labels: jax.Array, key: jax.Array, **kwargs
) -> tuple[jax.Array, jax.Array, dict]:
    """`regularizer_gradient` (kwargs: base_norm, backbone) on `aux.options.images_per_step` images
    drawn with `key` (all when 0 or ≥ N; the others get a zero gradient)."""
    n, subset = images.shape[0], aux.options.images_per_step
    if not subset or subset >= n:
        return regularizer_gradient(aux, images, labels, **kwargs)
    rows = jax.random.choice(key, n, (subset,), replace=False)
    loss, sub_grad, metrics = regularizer_gradient(aux, images[rows], labels[rows], **kwargs)
    return loss, jnp.zeros_like(images).at[rows].set(sub_grad), metrics
