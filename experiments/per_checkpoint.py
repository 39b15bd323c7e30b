"""The shared command line of the per-checkpoint evaluators (measure, downstream).

``--workdir=DIR[,DIR...]`` names training runs; ``--config`` the evaluator's
config file[:variant]; ``--steps`` optionally restricts the checkpoints.
"""
from typing import Callable

from absl import flags
from ml_collections import config_flags

from flatness.runtime import cli
from flatness.runtime import distributed
from flatness.runtime import logs


def run(default_config: str, evaluate_run: Callable, what: str) -> None:
  """Defines the flags and runs ``evaluate_run(workdir, config, steps=...)`` per workdir."""
  config = config_flags.DEFINE_config_file("config", default_config,
                                           f"{what} config file[:variant].")
  workdirs = flags.DEFINE_list("workdir", None, "Run directories, comma-separated.")
  steps = flags.DEFINE_list("steps", [], "Only these checkpoint steps (default: all).")
  flags.mark_flags_as_required(["workdir"])

  def main(argv):
    del argv
    logs.quiet_libraries()
    distributed.initialize()
    for workdir in workdirs.value:
      evaluate_run(workdir, config.value, steps=[int(s) for s in steps.value])

  cli.run(main)
