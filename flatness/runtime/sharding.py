"""Data parallelism over a 1-D ``("data",)`` device mesh.

The same code runs on one CPU, on 8 fake CPU devices
(``XLA_FLAGS=--xla_force_host_platform_device_count=8``), on several processes
(`flatness.runtime.distributed`) and on a TPU pod slice: the mesh spans every device of
every process, parameters are replicated, and each process contributes its
rows of each global batch (`global_batch`).
"""
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def make_mesh(num_devices: int | None = None) -> Mesh:
  devices = jax.devices()
  if num_devices is not None:
    if num_devices > len(devices):
      raise ValueError(f"asked for {num_devices} devices, only {len(devices)} are visible")
    devices = devices[:num_devices]
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def stacked_batch_sharding(mesh: Mesh) -> NamedSharding:
  """Several global batches stacked on a leading axis ``[K, batch, ...]``: rows sharded."""
  return NamedSharding(mesh, P(None, DATA_AXIS))


def process_rows(global_batch_size: int) -> slice:
  """The rows of a global batch that this process feeds."""
  n = jax.process_count()
  if global_batch_size % n:
    raise ValueError(f"batch size {global_batch_size} is not divisible by the "
                     f"{n} processes")
  per = global_batch_size // n
  return slice(jax.process_index() * per, (jax.process_index() + 1) * per)


def global_batch(local: dict, mesh: Mesh) -> dict:
  """Process-local numpy rows -> global `jax.Array`s sharded along the batch axis."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in local.items()}


def global_batches(local: list[dict], mesh: Mesh) -> dict:
  """Several process-local batches -> one dict of global `jax.Array`s ``[K, batch, ...]``
  (`stacked_batch_sharding`): the input of K steps in one call."""
  sharding = stacked_batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(
      sharding, np.stack([np.asarray(b[k]) for b in local])) for k in local[0]}


def shard_batch(batch: dict, mesh: Mesh) -> dict:
  """A global batch that every process holds in full (numpy, rows on axis 0) -> global
  `jax.Array`s sharded along the batch axis, each process contributing its rows."""
  rows = process_rows(len(next(iter(batch.values()))))
  return global_batch({k: np.asarray(v)[rows] for k, v in batch.items()}, mesh)
