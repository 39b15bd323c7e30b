"""The resume property shared by the training tests: K steps, stop, resume == straight."""
import os

import jax
import numpy as np

from experiments import wiring
from flatness.runtime import checkpointing
from flatness.runtime import metric_writers
from flatness.training import trainer


def _without_perf(records):
  return [{k: v for k, v in r.items() if not k.startswith("perf/")} for r in records]


def assert_resume_is_exact(config, root, stop_after: int) -> trainer.TrainResult:
  """Trains ``config`` straight in ``root/a``, and in ``root/b`` to ``stop_after`` then on
  to the end; asserts equal parameters and metrics (throughput aside). Returns run a."""
  a, b = os.path.join(root, "a"), os.path.join(root, "b")
  straight = wiring.train(config, a)
  wiring.train(config, b, stop_after=stop_after)
  assert checkpointing.Checkpointer(os.path.join(b, "checkpoints")).latest_step() == stop_after
  resumed = wiring.train(config, b)
  assert resumed.step == straight.step == int(config.train.num_steps)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(straight.state.params),
               jax.device_get(resumed.state.params))
  assert (_without_perf(metric_writers.read_jsonl(os.path.join(a, metric_writers.JSONL)))
          == _without_perf(metric_writers.read_jsonl(os.path.join(b, metric_writers.JSONL))))
  return straight
