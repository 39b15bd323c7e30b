r"""The main job: the paper's phenomenon on a laptop CPU, in about ten minutes.

  python -m experiments.quickstart [--workdir=runs/quickstart]

On a small random PCFG (`data_gen`, nothing to download) it pre-trains a 2-layer
MLM until its loss is near the exact optimum, keeps training with the loss flat
(experiment (a), `experiments/configs/continue_training.py:pcfg_small`), and at
every kept checkpoint measures the Hessian trace (`flatness.trace`) and the
linear-probe accuracy on the grammar's tasks A, B, C (`flatness.downstream`),
plus the lookup-table baseline. It prints the table, the time of each stage and
where the report, figures and TensorBoard logs are. Rerunning continues; any
field can be overridden, e.g. --config.pretrain.train.num_steps=20000.
"""
import os
import time

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from flatness import analysis
from flatness import experiment
from flatness import logs
from flatness import report

_CONFIG = config_flags.DEFINE_config_file(
    "config", "experiments/configs/continue_training.py:pcfg_small", "Experiment config.")
_WORKDIR = flags.DEFINE_string("workdir", "runs/quickstart", "Where everything is written.")

_COLUMNS = ("step", "eval/loss_gap", "curvature/trace", "curvature/trace_stderr")


def main(argv):
  del argv
  logs.quiet_libraries()
  logging.set_verbosity(logging.INFO)
  config, root = _CONFIG.value, _WORKDIR.value
  start = time.perf_counter()
  (run,) = experiment.expand(config)[:1]
  workdir = os.path.join(root, run.name)
  stages = {}
  for stage in ("pretrain", "measure", "downstream"):
    print(f"== {stage} ({workdir})", flush=True)
    stages.update(experiment.run_one(run, workdir, stages=(stage,)))
  t0 = time.perf_counter()
  result = experiment.analyze(config, [workdir], os.path.join(root, "report"))
  stages["analysis"] = time.perf_counter() - t0
  rows, paths = result.rows, result.paths
  _, accs = analysis.measure_names(rows)
  lookups = sorted({k for r in rows for k in r if k.endswith("/lookup_acc")})
  print("\n" + report.print_table(rows, list(_COLUMNS) + accs + lookups[:3]))
  corr = [c for c in result.correlations if c.scope == "all"]
  print("\nSpearman correlation across checkpoints (95% bootstrap interval):")
  if not corr:
    print("  (needs at least 3 checkpoints with both metrics)")
  for c in corr:
    print(f"  {c.flatness} vs {c.accuracy}: {c.spearman:+.2f} [{c.spearman_lo:+.2f}, "
          f"{c.spearman_hi:+.2f}], n={c.n}")
  total = time.perf_counter() - start
  print("time: " + ", ".join(f"{k} {v:.0f} s" for k, v in stages.items())
        + f"; total {total:.0f} s")
  print(f"report: {paths['report']}\nfigures: {os.path.dirname(paths['trace'])}\n"
        f"tensorboard: tensorboard --logdir={workdir}/tensorboard")


if __name__ == "__main__":
  app.run(main)
