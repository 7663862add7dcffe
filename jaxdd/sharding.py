"""Work over several devices (DESIGN §7): classes (matching) or networks (evaluation) over a 1-D mesh.

Per-class work in jaxdd is independent across classes and draws its randomness from `fold_in(key, c)`,
so splitting the classes over devices changes nothing but where each class is computed: a run's result
does not depend on the device count (tests/test_sharding.py runs 1, 2 and 4 forced host devices).
Gradient matching and DM split per-class work, SRe2L's recover a class-major batch (`over_class_shards`;
the recover pools the shares' BatchNorm moments exactly).
Networks, the real data and the PRNG key are replicated. `jax.shard_map` expresses this directly (the
per-class function runs unchanged on each device's block of classes); `pmap` would need the class axis
reshaped to [devices, classes per device] and a separate program per device count with nothing gained.

Evaluation splits its N networks the same way: network i is trained from `keys[i]` whatever device
trains it, so its accuracy does not depend on the device count either. N not divisible by the device
count is padded with extra keys whose results are dropped (`pad_rows`): the devices train in rounds of one
network each anyway, so padding costs no wall time, whereas refusing would force N or the device count.

Multi-host runs call `jax.distributed.initialize()` first (`jaxdd.distributed`, README); a mesh then takes
the same number of devices from every process (`mesh_devices`), so every process computes its share, and
the per-class inputs and outputs are replicated over the mesh, so every process can read the whole
synthetic set and the metrics (tests/test_multiprocess.py: two processes equal one).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxdd.errors import UserError, is_int

CLASS_AXIS = "classes"
NET_AXIS = "nets"


def resolve_devices(
    requested: int, num_classes: int, available: int | None = None, *, processes: int | None = None
) -> int:
    """The number of devices the classes are sharded over.

    requested 0: the largest count ≤ the available devices that divides `num_classes` and is a multiple of
    the process count (10 classes on 4 devices: 2, of one process or of two); otherwise `requested`, which
    must be such a count and be available (UserError). Every process of a multi-process run must hold a
    share of the class mesh: a process outside it could not read the results.
    """
    available = jax.device_count() if available is None else available
    processes = jax.process_count() if processes is None else processes
    _check_requested(requested, available, f"as many as divide the {num_classes} classes")
    counts = [d for d in range(processes, available + 1, processes) if num_classes % d == 0]
    if requested == 0 and counts:
        return counts[-1]
    if requested in counts:
        return requested
    across = f" and is a multiple of the {processes} processes" if processes > 1 else ""
    if not counts:
        raise UserError(
            f"No device count divides the {num_classes} classes{across} (each device takes whole classes, "
            f"every process the same number of them): run a number of processes that divides {num_classes}."
        )
    raise UserError(
        f"devices={requested} does not divide the {num_classes} classes{across} (each device takes whole "
        f"classes): set --config.devices to one of {counts}, or 0 to choose automatically."
    )


def resolve_net_devices(requested: int, *, available: int | None = None, processes: int | None = None) -> int:
    """The number of devices evaluation splits its networks over: `requested`, or every visible device
    (of every process) for 0. Any count works for any number of networks (`pad_rows`).

    A multi-process run needs every process in the mesh (each reads the accuracies from its own devices),
    so there `requested` must be 0 or all devices (UserError otherwise).
    """
    available = jax.device_count() if available is None else available
    processes = jax.process_count() if processes is None else processes
    _check_requested(requested, available, "all of them")
    if processes > 1 and requested not in (0, available):
        raise UserError(
            f"devices={requested} in a run of {processes} processes ({available} devices): evaluation "
            "shards its networks over every process's devices; set --config.devices=0."
        )
    return requested or available


def _check_requested(requested, available: int, automatic: str) -> None:
    if not is_int(requested) or requested < 0:
        raise UserError(f"devices={requested!r} must be an integer ≥ 0 (0: {automatic}).")
    if requested > available:
        raise UserError(
            f"devices={requested} but only {available} device(s) are visible: set --config.devices to at "
            f"most {available}, or 0 to use {automatic}."
        )


def mesh_devices(num_devices: int, devices: list | None = None) -> list:
    """`num_devices` devices (a multiple of the process count P): the first `num_devices / P` of each
    process, in process order; one process's first `num_devices`. `devices`: `jax.devices()` (every
    process's) by default."""
    devices = jax.devices() if devices is None else devices
    processes = sorted({d.process_index for d in devices})
    per_process = num_devices // len(processes)
    by_process = [[d for d in devices if d.process_index == p][:per_process] for p in processes]
    return [d for group in by_process for d in group]


def device_mesh(num_devices: int, axis: str) -> Mesh:
    """A 1-D mesh with axis name `axis` over `num_devices` devices, as many from each process
    (`mesh_devices`)."""
    return Mesh(np.asarray(mesh_devices(num_devices)), (axis,))


def class_mesh(num_devices: int) -> Mesh:
    """A 1-D mesh named `CLASS_AXIS` over the first `num_devices` devices."""
    return device_mesh(num_devices, CLASS_AXIS)


def over_class_shards(fn: Callable, num_devices: int) -> Callable:
    """fn(*args) -> pytree, every argument and output with a leading class-major axis (labels [C] and
    syn [C, ...] for matching; a class-major batch [B, ...] for SRe2L's recover), run with that axis split
    into `num_devices` equal contiguous blocks (whole classes per device) and the outputs concatenated
    along it; identity for one device. Whatever `fn` closes over is replicated.

    The arguments and outputs are constrained to be replicated over the mesh, so whatever a step computes
    from them (the synthetic set it returns, its metrics) is whole on every device: in a multi-process run
    every process can then read and export it, not only its own devices' classes.
    """
    if num_devices == 1:
        return fn
    mesh = class_mesh(num_devices)
    spec = PartitionSpec(CLASS_AXIS)  # a prefix of the argument tuple: every argument is split
    # check_vma=False: DSA's lax.switch mixes per-class (varying) and constant branch outputs, and the
    # convolutions' custom VJP returns kernel cotangents that vary over devices although the closed-over
    # kernels are replicated; the varying-axes check rejects both although every output here is per class
    split = jax.shard_map(fn, mesh=mesh, in_specs=spec, out_specs=spec, check_vma=False)
    whole = NamedSharding(mesh, PartitionSpec())
    replicated = lambda tree: jax.lax.with_sharding_constraint(tree, whole)
    return lambda *args: replicated(split(*replicated(args)))


def pad_rows(rows: jax.Array, num_devices: int) -> jax.Array:
    """rows [N, ...] followed by copies of rows[0] up to a multiple of `num_devices` rows; the caller drops
    the results of rows N and after."""
    missing = -rows.shape[0] % num_devices
    return jnp.concatenate([rows, jnp.repeat(rows[:1], missing, axis=0)]) if missing else rows


def over_net_shards(fn: Callable, num_devices: int) -> Callable:
    """fn(keys [n, ...], *shared) -> [n, ...], run with the keys (n a multiple of `num_devices`) split
    over `num_devices` devices and `shared` (any pytrees) replicated; identity for one device.

    The result is gathered onto every device, so every process can read all of it.
    """
    if num_devices == 1:
        return fn
    mesh = device_mesh(num_devices, NET_AXIS)

    def gathered(keys, *shared):
        return jax.lax.all_gather(fn(keys, *shared), NET_AXIS, tiled=True)

    def sharded(keys, *shared):
        in_specs = (PartitionSpec(NET_AXIS),) + (PartitionSpec(),) * len(shared)
        # check_vma=False as in over_class_shards: DSA's lax.switch mixes varying and constant branches
        run = jax.shard_map(
            gathered, mesh=mesh, in_specs=in_specs, out_specs=PartitionSpec(), check_vma=False
        )
        return run(keys, *shared)

    return sharded
