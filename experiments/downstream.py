r"""Downstream accuracy (linear probe, fine-tuning, lookup baseline) of every checkpoint.

  python -m experiments.downstream --workdir=DIR[,DIR...] \
      --config=experiments/configs/downstream.py[:variant] [--config.x=...]

Writes `downstream/<task>/*` scalars next to the training metrics of each run
(TensorBoard and metrics.jsonl); checkpoints already evaluated are skipped.
"""
from absl import app
from absl import flags
from ml_collections import config_flags

from flatness import distributed
from flatness import downstream
from flatness import logs

_CONFIG = config_flags.DEFINE_config_file("config", "experiments/configs/downstream.py",
                                          "Downstream config file[:variant].")
_WORKDIR = flags.DEFINE_list("workdir", None, "Run directories, comma-separated.")
_STEPS = flags.DEFINE_list("steps", [], "Only these checkpoint steps (default: all).")
flags.mark_flags_as_required(["workdir"])


def main(argv):
  del argv
  logs.quiet_libraries()
  distributed.initialize()
  for workdir in _WORKDIR.value:
    downstream.evaluate_run(workdir, _CONFIG.value, steps=[int(s) for s in _STEPS.value])


if __name__ == "__main__":
  app.run(main)
