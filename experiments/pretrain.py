r"""Pre-trains a language model; rerunning with the same workdir resumes.

  python -m experiments.pretrain --config=experiments/configs/pretrain.py:tiny \
      --workdir=/tmp/flatness/tiny [--config.train.num_steps=...]

Exits with `flatness.training.preemption.PREEMPTED_EXIT_CODE` (75) after saving when
stopped by SIGTERM; relaunch the same command to continue.
"""
import sys

from absl import flags
from ml_collections import config_flags

from experiments import wiring
from flatness.runtime import cli
from flatness.runtime import distributed
from flatness.runtime import logs
from flatness.training import preemption

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file[:variant].",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (checkpoints, metrics).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  logs.quiet_libraries()
  distributed.initialize()
  result = wiring.train(_CONFIG.value, _WORKDIR.value)
  if result.preempted:
    sys.exit(preemption.PREEMPTED_EXIT_CODE)


if __name__ == "__main__":
  cli.run(main)
