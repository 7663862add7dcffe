"""PRNG streams: one root key from `config.seed`, split by purpose, so adding randomness to one part of a
run (say, a baseline) never shifts the randomness of another (the distillation)."""

from __future__ import annotations

import jax

PURPOSES = {"distill": 0, "eval": 1, "baseline": 2, "teacher": 3}


def purpose_key(seed: int, purpose: str) -> jax.Array:
    """The root key of one purpose: `fold_in(PRNGKey(seed), PURPOSES[purpose])`."""
    return jax.random.fold_in(jax.random.PRNGKey(seed), PURPOSES[purpose])
