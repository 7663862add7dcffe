"""Work over several devices (DESIGN §7): classes, and their synthetic images, sharded over a 1-D mesh.

Per-class work in jaxdd is independent across classes and draws its randomness from `fold_in(key, c)`,
so splitting the classes over devices changes nothing but where each class is computed: a run's result
does not depend on the device count (tests/test_sharding.py runs 1, 2 and 4 forced host devices).
Networks, the real data and the PRNG key are replicated. `jax.shard_map` expresses this directly (the
per-class function runs unchanged on each device's block of classes); `pmap` would need the class axis
reshaped to [devices, classes per device] and a separate program per device count with nothing gained.

Multi-host runs call `jax.distributed.initialize()` first (see README); the mesh then spans every
process's devices.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import numpy as np
from jax.sharding import Mesh, PartitionSpec

from jaxdd.errors import UserError

CLASS_AXIS = "classes"


def resolve_devices(requested: int, num_classes: int, available: int | None = None) -> int:
    """The number of devices the classes are sharded over.

    requested 0: the largest count ≤ the available devices that divides `num_classes` (10 classes on 4
    devices: 2); otherwise `requested`, which must divide the classes and be available (UserError).
    """
    available = jax.device_count() if available is None else available
    if requested == 0:
        return max(d for d in range(1, available + 1) if num_classes % d == 0)
    if not isinstance(requested, int) or requested < 0:
        raise UserError(f"devices={requested!r} must be an integer ≥ 0 (0: as many as divide the classes).")
    if requested > available:
        raise UserError(
            f"devices={requested} but only {available} device(s) are visible: set --config.devices to at "
            f"most {available}, or 0 to use as many as divide the {num_classes} classes."
        )
    if num_classes % requested:
        divisors = [d for d in range(1, available + 1) if num_classes % d == 0]
        raise UserError(
            f"devices={requested} does not divide the {num_classes} classes (each device takes whole "
            f"classes): set --config.devices to one of {divisors}, or 0 to choose automatically."
        )
    return requested


def class_mesh(num_devices: int) -> Mesh:
    """A 1-D mesh named `CLASS_AXIS` over the first `num_devices` devices."""
    return Mesh(np.asarray(jax.devices()[:num_devices]), (CLASS_AXIS,))


def over_class_shards(fn: Callable, num_devices: int) -> Callable:
    """fn(labels [C], syn [C, ...]) -> pytree with a leading class axis, run with the classes split over
    `num_devices` devices (identity for one). Whatever `fn` closes over is replicated."""
    if num_devices == 1:
        return fn
    spec = PartitionSpec(CLASS_AXIS)
    # check_vma=False: DSA's lax.switch mixes per-class (varying) and constant branch outputs, which the
    # varying-axes check rejects although every output here is per class
    return jax.shard_map(
        fn, mesh=class_mesh(num_devices), in_specs=(spec, spec), out_specs=spec, check_vma=False
    )
