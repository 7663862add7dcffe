"""Distances between two parameter-gradient pytrees, the D of gradient matching.

Zhao, Mopuri & Bilen, "Dataset Condensation with Gradient Matching" (ICLR 2021), eq. 10, and the
reference's `match_loss` / `distance_wb` (VICO-UoE/DatasetCondensation, utils.py):

- 'ours': over every weight tensor with ≥ 2 dims, the per-output-row cosine distance
  Σ_o (1 − <g_r,o, g_s,o> / (‖g_r,o‖ ‖g_s,o‖ + 1e-6)); 1-D tensors (biases, norm scales) count 0.
  Every kernel of the jaxdd zoo keeps its output axis LAST (conv [kh, kw, in, out], dense [in, out],
  the ConvNet LayerNorm scale and bias [H, W, C]), so a row is everything sharing one last-axis index:
  the reference's rows of (out, in·kh·kw) conv weights, (out, in) linear weights and (C, H·W)
  LayerNorm parameters.
- 'mse': Σ (g_s − g_r)² over ALL parameters, biases included (as the reference).
- 'cos': one cosine distance 1 − <r, s> / (‖r‖ ‖s‖ + 1e-6) of all parameters concatenated.

Norms have a zero gradient at a zero vector (PyTorch's convention; plain `sqrt` would give NaN), so a
dead ReLU unit whose gradient row is exactly zero does not poison the pixel gradient.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

METRICS = ("ours", "mse", "cos")
EPS = 1e-6  # the reference's denominator guard


def _safe_norm(sum_of_squares: jax.Array) -> jax.Array:
    """sqrt(s), with derivative 0 (not inf) where s == 0."""
    positive = sum_of_squares > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, sum_of_squares, 1.0)), 0.0)


def row_cosine_distance(g_real: jax.Array, g_syn: jax.Array) -> jax.Array:
    """Σ over output rows (last axis) of 1 − cos(g_real row, g_syn row); 0 for tensors with < 2 dims."""
    if g_real.ndim < 2:
        return jnp.zeros(())
    axes = tuple(range(g_real.ndim - 1))
    dot = jnp.sum(g_real * g_syn, axis=axes)
    norms = _safe_norm(jnp.sum(g_real**2, axis=axes)) * _safe_norm(jnp.sum(g_syn**2, axis=axes))
    return jnp.sum(1.0 - dot / (norms + EPS))


def _flat(tree) -> jax.Array:
    return jnp.concatenate([jnp.ravel(leaf) for leaf in jax.tree.leaves(tree)])


def distance(g_real, g_syn, metric: str = "ours") -> jax.Array:
    """D(g_real, g_syn): a float32 scalar for two gradient pytrees of identical structure.

    Args:
      g_real: gradient of the real batch's loss w.r.t. the network parameters (a constant).
      g_syn: gradient of the synthetic batch's loss, same structure and shapes.
      metric: 'ours' (per-output-row cosine, weights only), 'mse' or 'cos' (see the module docstring).
    """
    if jax.tree.structure(g_real) != jax.tree.structure(g_syn):
        raise ValueError("g_real and g_syn must have the same pytree structure.")
    if metric == "ours":
        terms = jax.tree.leaves(jax.tree.map(row_cosine_distance, g_real, g_syn))
        return sum(terms, jnp.zeros(()))
    real, syn = _flat(g_real), _flat(g_syn)
    if metric == "mse":
        return jnp.sum((syn - real) ** 2)
    if metric == "cos":
        norms = _safe_norm(jnp.sum(real**2)) * _safe_norm(jnp.sum(syn**2))
        return 1.0 - jnp.sum(real * syn) / (norms + EPS)
    raise ValueError(f"unknown metric {metric!r}; valid: {', '.join(METRICS)}")
