"""The device mesh: one data-parallel axis over every device of every process."""
from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from sdr_jax.core.errors import ConfigError

DATA_AXIS = "data"


def make_data_mesh(devices=None) -> Mesh:
    """A 1-D mesh over `devices` (default: all devices of all processes)."""
    devices = jax.devices() if devices is None else list(devices)
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(DATA_AXIS))


def local_batch_size(global_batch_size: int, mesh: Mesh) -> int:
    """The per-process share of a global batch; it must split evenly over the devices."""
    num_devices = mesh.devices.size
    if global_batch_size % num_devices:
        raise ConfigError(f"batch_size={global_batch_size} does not split over {num_devices} devices; "
                          f"use a multiple of {num_devices}.")
    return global_batch_size // jax.process_count()


def shard_batch(batch: dict, mesh: Mesh) -> dict:
    """Assembles each process's local numpy batch into global arrays sharded on the data axis."""
    sharding = batch_sharded(mesh)
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), batch)
