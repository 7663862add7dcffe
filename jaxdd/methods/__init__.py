"""Distillation methods, one registry: `get_method(name)` returns a `Method` (see `methods.base`):
`init(config, real, key) -> DistillState` and `make_step(config, real) -> step(state, real)`."""

from __future__ import annotations

from jaxdd.errors import UserError
from jaxdd.methods import distribution_matching, gradient_matching, mtt, random_subset, sre2l
from jaxdd.methods.base import DistillState, Method

METHODS: dict[str, Method] = {
    "random": random_subset.METHOD,
    "dc": gradient_matching.METHOD,
    "dsa": gradient_matching.METHOD,
    "dm": distribution_matching.METHOD,
    "sre2l": sre2l.METHOD,
    "mtt": mtt.METHOD,
}


def method_names() -> tuple[str, ...]:
    return tuple(METHODS)


def get_method(name: str) -> Method:
    """The method registered under `name`; an unknown name lists the valid ones."""
    if name not in METHODS:
        raise UserError(f"Unknown method {name!r}: set --config.method to one of {', '.join(METHODS)}.")
    return METHODS[name]


__all__ = ["METHODS", "DistillState", "Method", "get_method", "method_names"]
