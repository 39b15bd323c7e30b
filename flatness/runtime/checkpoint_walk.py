"""Evaluate something at every checkpoint of a run, once: shared by measure and downstream.

`walk` restores each checkpoint of a training run, calls an evaluator on its
params and writes the returned scalars under a tag prefix next to the run's
training metrics (TensorBoard and ``metrics.jsonl``, at the checkpoint's step).
A step whose metrics are all there already is skipped, so an interrupted
evaluation continues where it stopped and new checkpoints of a still-running
training job are picked up by rerunning. A checkpoint whose files do not read
is skipped with a warning naming the file.
"""
import os
from typing import Callable

from absl import logging

from flatness.runtime import checkpointing
from flatness.runtime import metric_writers
from flatness.training import trainer


def done_steps(workdir: str, tags) -> set[int]:
  """Steps at which every one of ``tags`` has been written to ``metrics.jsonl``."""
  path = os.path.join(workdir, metric_writers.JSONL)
  if not os.path.exists(path):
    return set()
  have: dict[int, set] = {}
  for rec in metric_writers.read_jsonl(path):
    have.setdefault(rec["step"], set()).update(rec)
  return {s for s, keys in have.items() if all(t in keys for t in tags)}


def walk(workdir: str, prefix: str, make_evaluator: Callable, *, steps=None, force=False,
         mesh=None) -> dict[int, dict]:
  """Runs ``make_evaluator(setup) -> (required_tags, evaluate(params, step) -> dict)``.

  Tags are written as ``{prefix}/{name}``; ``required_tags`` (without prefix)
  decide whether a step was already done. Returns {step: metrics} of the steps
  evaluated now.
  """
  setup = trainer.build(trainer.load_run_config(workdir), mesh=mesh)
  ckpt = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"))
  available = ckpt.all_steps()
  if not available:
    ckpt.close()
    raise FileNotFoundError(f"{workdir}/checkpoints holds no checkpoint")
  wanted = available if not steps else [s for s in available if s in set(steps)]
  required, evaluate = make_evaluator(setup)
  done = set() if force else done_steps(workdir, [f"{prefix}/{t}" for t in required])
  writer = metric_writers.MetricWriter(workdir)
  results = {}
  try:
    for step in wanted:
      if step in done:
        logging.info("%s step %d: already done", prefix, step)
        continue
      try:
        state = ckpt.restore(step, setup.abstract_state()).state
      except checkpointing.DamagedCheckpointError as e:
        logging.warning("%s step %d: skipped, the checkpoint does not read: %s", prefix, step, e)
        continue
      metrics = evaluate(state.params, step)
      writer.write_scalars(step, {f"{prefix}/{k}": v for k, v in metrics.items()})
      writer.flush()
      logging.info("%s step %d: %s", prefix, step,
                   " ".join(f"{k}={v:.4g}" for k, v in metrics.items() if k.count("/") < 2))
      results[step] = metrics
  finally:
    writer.close()
    ckpt.close()
  return results
