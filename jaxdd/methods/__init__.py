"""Distillation methods, one registry: `get_method(name)` returns a function
`distill(config, real, key) -> SyntheticSet` (config read at this edge, math in pure functions)."""

from __future__ import annotations

from jaxdd.errors import UserError
from jaxdd.methods import random_subset

METHODS = {
    "random": random_subset.distill,
}


def method_names() -> tuple[str, ...]:
    return tuple(METHODS)


def get_method(name: str):
    """The distill function registered under `name`; an unknown name lists the valid ones."""
    if name not in METHODS:
        raise UserError(f"Unknown method {name!r}: set --config.method to one of {', '.join(METHODS)}.")
    return METHODS[name]
