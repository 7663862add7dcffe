"""Multi-host start-up (DESIGN §7): `jax.distributed.initialize` from `config.distributed`, and which
process writes the run folder.

Every process of a multi-host run executes the same program on its own devices; after `initialize` the
device list spans all processes, so the meshes of `jaxdd.sharding` do too. The launcher (`jaxdd.main`)
calls `initialize` before anything touches a device, as JAX requires. Leaving `coordinator_address`,
`num_processes` and `process_id` unset lets JAX detect them on a TPU pod slice and in SLURM or Open MPI
jobs; elsewhere (e.g. hosts started by hand) all three are given. Orbax checkpointing coordinates the
processes itself; every other file of the run folder is written by process 0 only (`is_main_process`).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import ml_collections

from jaxdd.errors import require, require_int


def default_config() -> ml_collections.ConfigDict:
    """`config.distributed`: off; when on, unset values (''/0/-1) are detected by JAX."""
    return ml_collections.ConfigDict(
        {
            "enabled": False,
            "coordinator_address": "",  # 'host:port' of process 0's coordinator; '' = detect
            "num_processes": 0,  # 0 = detect
            "process_id": -1,  # this process's index in [0, num_processes); -1 = detect
        }
    )


def validate(dist: ml_collections.ConfigDict) -> None:
    """Raises UserError naming a bad `config.distributed` value and its fix; touches no device."""
    require(isinstance(dist.enabled, bool), f"distributed.enabled={dist.enabled!r} must be True or False.")
    address, num, index = dist.coordinator_address, dist.num_processes, dist.process_id
    require(
        isinstance(address, str),
        f"distributed.coordinator_address={address!r} must be 'host:port' or '' (detect).",
    )
    require_int("distributed.num_processes", num, minimum=1, marker=0, note="detect")
    require_int("distributed.process_id", index, minimum=0, marker=-1, note="detect")
    if not dist.enabled:
        changed = [k for k, v in default_config().items() if k != "enabled" and dist[k] != v]
        require(
            not changed,
            f"distributed.{changed[0] if changed else ''} is set but distributed.enabled=False: add "
            "--config.distributed.enabled=True to start a multi-process run, or drop the setting.",
        )
        return
    if address:
        host, sep, port = address.rpartition(":")
        require(
            bool(sep and host and port.isdigit()),
            f"distributed.coordinator_address={address!r} is not 'host:port', e.g. '10.0.0.1:1234'.",
        )
    require(
        not (num and index >= num),
        f"distributed.process_id={index} is outside 0..{num - 1} (distributed.num_processes={num}): give "
        "each process its own index below the process count.",
    )


def initialize(
    dist: ml_collections.ConfigDict | None, *, initialize_fn: Callable = jax.distributed.initialize
) -> bool:
    """Calls `initialize_fn` (`jax.distributed.initialize`) with the configured values (None for those
    left to detection) when `dist.enabled`; returns whether it did. Validates `dist` first."""
    if dist is None:
        return False
    validate(dist)
    if not dist.enabled:
        return False
    initialize_fn(
        coordinator_address=dist.coordinator_address or None,
        num_processes=dist.num_processes or None,
        process_id=dist.process_id if dist.process_id >= 0 else None,
    )
    return True


def is_main_process() -> bool:
    """Whether this process writes the run folder's files: process 0 (the only one in a single-process
    run)."""
    return jax.process_index() == 0
