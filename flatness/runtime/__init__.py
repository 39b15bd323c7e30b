"""What every part runs on: devices, processes, files, logs and errors.

  sharding         the 1-D data mesh, batch shardings, `global_batch`
  distributed      `jax.distributed` start-up on multi-host machines
  metric_writers   scalars to TensorBoard and ``metrics.jsonl``
  checkpointing    orbax checkpoints with the data position; damaged ones set aside
  checkpoint_walk  one evaluation pass over a run's checkpoints
  compile_cache    the persistent compilation cache
  fn_cache         compiled programs cached per function, with a warning on fresh closures
  config_types     config sections into frozen dataclasses, once, at the boundary
  cli, logs        entry points' one-line errors and quiet logging

Imports: nothing else of flatness.
"""
