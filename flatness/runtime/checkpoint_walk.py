"""One evaluation pass over a run's checkpoints: params restored once, every evaluator run.

An evaluator is any object with

  prefix     the tag prefix its metrics are written under (``eval``, ``curvature``, ...)
  required   the tags (without prefix) whose presence marks a step as done
  __call__(params, step) -> {tag: value}

(`flatness.training.evaluation.LossEvaluator`, `flatness.curvature.measure.Measurer`,
`flatness.transfer.downstream.Evaluator`). `walk` visits each kept checkpoint,
restores its params only (no optimizer state: `Checkpointer.restore_params`) when
some evaluator still has work there, and runs the evaluators in their order,
writing each one's metrics under its prefix next to the run's training metrics
(TensorBoard and ``metrics.jsonl``, at the checkpoint's step) as soon as they
are computed. An `Entry` may restrict its evaluator to some steps, or make it
depend on what is known at the step (e.g. only checkpoints whose loss gap, just
computed by the evaluator before it, is within a tolerance). A step whose
metrics are all there already is skipped, so an interrupted pass continues where
it stopped and new checkpoints of a still-running training job are picked up by
rerunning. A checkpoint whose files do not read is skipped with a warning naming
the file.
"""
import dataclasses
import os
from typing import Any, Callable, Collection, Sequence

from absl import logging

from flatness.runtime import checkpointing
from flatness.runtime import metric_writers


@dataclasses.dataclass
class Entry:
  """An evaluator in the pass, and at which checkpoints it runs.

  steps: only these steps (None: every kept checkpoint);
  when: ``(step, row) -> bool``, where ``row`` holds every metric known at the step
    (from ``metrics.jsonl`` and from the evaluators before this one in the pass);
  force: run it also where its metrics are there already.
  """
  evaluator: Any
  steps: Collection[int] | None = None
  when: Callable[[int, dict], bool] | None = None
  force: bool = False

  def tags(self) -> list[str]:
    return [f"{self.evaluator.prefix}/{t}" for t in self.evaluator.required]


def known_rows(workdir: str) -> dict[int, dict]:
  """{step: every metric written at that step} from the run's ``metrics.jsonl``."""
  path = os.path.join(workdir, metric_writers.JSONL)
  rows: dict[int, dict] = {}
  if os.path.exists(path):
    for rec in metric_writers.read_jsonl(path):
      rows.setdefault(int(rec["step"]), {}).update(rec)
  return rows


def walk(workdir: str, abstract_params, entries: Sequence[Entry], *, steps=None,
         force: bool = False) -> dict[int, dict]:
  """Runs every entry's evaluator at every kept checkpoint of the run (or ``steps``).

  ``abstract_params``: shapes, dtypes and shardings of the model's params. ``force``
  redoes steps already done. Returns {step: metrics with prefixes} computed now.
  """
  ckpt = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"))
  available = ckpt.all_steps()
  if not available:
    ckpt.close()
    raise FileNotFoundError(f"{workdir}/checkpoints holds no checkpoint")
  wanted = available if not steps else [s for s in available if s in set(steps)]
  rows = known_rows(workdir)
  writer = metric_writers.MetricWriter(workdir)
  results: dict[int, dict] = {}
  try:
    for step in wanted:
      row = dict(rows.get(step, {}))
      todo = [e for e in entries if (e.steps is None or step in e.steps)
              and (force or e.force or not all(t in row for t in e.tags()))]
      if not todo:
        logging.info("step %d: already evaluated", step)
        continue
      params = None       # restored at the first evaluator that runs here
      for entry in todo:
        if entry.when is not None and not entry.when(step, row):
          continue
        if params is None:
          try:
            params = ckpt.restore_params(step, abstract_params)
          except checkpointing.DamagedCheckpointError as e:
            logging.warning("step %d: skipped, the checkpoint does not read: %s", step, e)
            break
        metrics = {f"{entry.evaluator.prefix}/{k}": v
                   for k, v in entry.evaluator(params, step).items()}
        writer.write_scalars(step, metrics)
        writer.flush()
        row.update(metrics)
        results.setdefault(step, {}).update(metrics)
        logging.info("step %d: %s", step, " ".join(
            f"{k}={v:.4g}" for k, v in metrics.items() if k.count("/") < 3))
  finally:
    writer.close()
    ckpt.close()
  return results
