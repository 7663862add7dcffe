"""Settings read once: each config section is a frozen dataclass whose fields are the section's keys.

The dataclass states every default once (the section's `ConfigDict` default is derived from it by
`section_config`) and checks its values in `__post_init__`, naming the key and the fix. The run's edge
builds it once (`from_section`) and library code takes the dataclass, never the `ConfigDict`. A section
may hold keys that are not the dataclass's (a run-level switch such as `kd.enabled`); a field may be
derived rather than read (`from_section`'s keyword arguments: a table value, a resolved strategy), and a
field declared with `derived(default)` is not a config key at all (the devices a run's classes span).
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

import ml_collections

T = TypeVar("T")
_DERIVED = {"config_key": False}


def derived(default: Any) -> Any:
    """A dataclass field that the edge computes (`from_section(..., name=value)`), not a config key."""
    return dataclasses.field(default=default, metadata=_DERIVED)


def config_fields(cls: type) -> tuple[dataclasses.Field, ...]:
    """The fields of `cls` that are keys of its config section (all but the `derived` ones)."""
    return tuple(f for f in dataclasses.fields(cls) if f.metadata.get("config_key", True))


def section_config(cls: type, **extra: Any) -> ml_collections.ConfigDict:
    """The `ConfigDict` of `extra` (keys that only the config holds) and `cls`'s field defaults.

    Every field of `cls` needs a default (a section is complete without a recipe); tuples become lists.
    """
    defaults = {}
    for field in config_fields(cls):
        if field.default is dataclasses.MISSING:
            raise TypeError(f"{cls.__name__}.{field.name} has no default, so it cannot be a config key.")
        value = field.default
        defaults[field.name] = list(value) if isinstance(value, tuple) else value
    return ml_collections.ConfigDict({**extra, **defaults})


def from_section(cls: type[T], section, **derived: Any) -> T:
    """`cls` from the keys of `section` (a `ConfigDict` or dict) that are its fields, `derived` over them.

    A field the section lacks keeps its default (a partial config of a tool or an older run); a float
    field given an int (`--config.kd.alpha=1`) is made a float, so equal settings hash equal; lists
    become tuples (hashable). The dataclass's `__post_init__` checks the values.
    """
    values = {}
    for field in config_fields(cls):
        if field.name not in section:
            continue
        value = section[field.name]
        if field.type in ("float", float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        values[field.name] = tuple(value) if isinstance(value, list) else value
    return cls(**{**values, **derived})
