r"""Runs an experiment: its sweep of pre-training runs, their evaluation and the analysis.

  python -m experiments.run --config=experiments/configs/algorithm.py:pcfg_small \
      --workdir=runs/algorithm [--runs=adamw,sgd] [--noanalyze]

Each run lives in <workdir>/<run name>; rerunning continues where it stopped
(finished training is not repeated; the evaluation pass of ``config.evals`` visits
only checkpoints that lack its metrics, so ``--config.evals=...`` adds evaluators
to finished runs).
The report (tables, correlations, figures) goes to <workdir>/report. See
`experiments.sweep` (the config's fields), `experiments.runner` (what runs) and the
configs' docstrings.
"""
from absl import flags
from ml_collections import config_flags

from experiments import runner
from flatness.runtime import cli
from flatness.runtime import distributed
from flatness.runtime import logs

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file:variant.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Experiment directory.")
_RUNS = flags.DEFINE_list("runs", [], "Only these runs of the sweep (default: all).")
_ANALYZE = flags.DEFINE_bool("analyze", True, "Write the report after the runs.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  logs.quiet_libraries()
  distributed.initialize()
  timings, paths = runner.run_experiment(_CONFIG.value, _WORKDIR.value, only=_RUNS.value,
                                         analyze_after=_ANALYZE.value)
  for name, t in timings.items():
    print(f"{name}: " + ", ".join(f"{k} {v:.1f} s" for k, v in t.items()))
  for k, v in paths.items():
    print(f"{k}: {v}")


if __name__ == "__main__":
  cli.run(main)
