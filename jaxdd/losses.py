"""Losses shared by the students of the evaluation (plain, KD, soft-label) and the methods."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def kl_divergence(student_logits: jax.Array, teacher_logits: jax.Array, temperature=1.0) -> jax.Array:
    """KL(softmax(z_t/T) ‖ softmax(z_s/T)), a scalar: summed over classes, averaged over the rest.

    student_logits, teacher_logits: [..., K] (PyTorch's `kl_div(log_softmax(z_s/T), softmax(z_t/T),
    reduction='batchmean')` for [B, K]; Hinton et al. 2015, without the T² factor). Classes where the
    teacher's probability underflows to 0 contribute 0 (x·log x → 0), so a small T gives no NaN.
    """
    log_p_teacher = jax.nn.log_softmax(teacher_logits / temperature, axis=-1)
    log_p_student = jax.nn.log_softmax(student_logits / temperature, axis=-1)
    p_teacher = jnp.exp(log_p_teacher)
    terms = jnp.where(p_teacher > 0, p_teacher * (log_p_teacher - log_p_student), 0.0)
    return jnp.sum(terms, axis=-1).mean()
