"""The random-real baseline: `ipc` random real training images per class, no optimisation."""

from __future__ import annotations

import jax
import ml_collections

from jaxdd import synthetic
from jaxdd.data.real import RealData


def distill(config: ml_collections.ConfigDict, real: RealData, key: jax.Array) -> synthetic.SyntheticSet:
    """A random real subset with `config.ipc` distinct images per class, drawn with `key`."""
    return synthetic.init_real(real, config.ipc, key)
