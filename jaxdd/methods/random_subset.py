"""The random-real baseline: `ipc` random real training images per class, no optimisation."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from jaxdd import synthetic
from jaxdd.data.real import RealData
from jaxdd.methods.base import DistillState, Method


def init(config: ml_collections.ConfigDict, real: RealData, key: jax.Array) -> DistillState:
    """A random real subset with `config.ipc` distinct images per class, drawn with `key`."""
    synset = synthetic.init_real(real, config.ipc, key)
    return DistillState(
        images=synset.images, labels=synset.labels, opt_state=(), key=key, step=jnp.zeros((), jnp.int32)
    )


METHOD = Method(init=init)
