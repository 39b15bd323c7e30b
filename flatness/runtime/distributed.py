"""Multi-process start-up through `jax.distributed`.

`initialize()` is called first by every entry point. It does nothing for a
single process; it calls `jax.distributed.initialize` when the run is
multi-process, which it detects from:

* explicit variables ``JAX_COORDINATOR_ADDRESS`` (host:port of process 0),
  ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID`` (local multi-process runs, any
  cluster);
* SLURM with more than one task (``SLURM_NTASKS > 1``): JAX reads the
  coordinator, process count and id from SLURM's environment;
* a multi-host TPU VM slice (``TPU_WORKER_HOSTNAMES`` lists more than one
  worker): JAX reads them from the TPU metadata.
"""
import os

import jax
from absl import logging

_initialized = False


def _multi_process_env() -> str | None:
  if os.environ.get("JAX_COORDINATOR_ADDRESS"):
    return "explicit"
  if int(os.environ.get("SLURM_NTASKS", "1")) > 1:
    return "slurm"
  if len([h for h in os.environ.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]) > 1:
    return "tpu"
  return None


def initialize() -> None:
  global _initialized
  if _initialized:
    return
  kind = _multi_process_env()
  if kind == "explicit":
    jax.distributed.initialize(
        coordinator_address=os.environ["JAX_COORDINATOR_ADDRESS"],
        num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
        process_id=int(os.environ["JAX_PROCESS_ID"]))
  elif kind is not None:
    jax.distributed.initialize()
  _initialized = True
  logging.info("JAX process %d of %d (%s); %d local / %d global devices: %s",
               jax.process_index(), jax.process_count(), kind or "single process",
               jax.local_device_count(), jax.device_count(), jax.devices()[0].platform)
