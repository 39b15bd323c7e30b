r"""The main job: the paper's experiment (a) on a laptop CPU, in about ten minutes.

  python -m experiments.quickstart [--workdir=runs/quickstart]

On a small random PCFG (`data_gen`, nothing to download) it pre-trains a 2-layer
MLM and keeps training (experiment (a), `experiments/configs/continue_training.py:
pcfg_small`), and at every kept checkpoint measures the Hessian trace
(`flatness.trace`: one probe on each of many fresh evaluation batches, so its
error covers the sentences and masks) and the linear-probe accuracy on the
grammar's tasks A, B, C (`flatness.downstream`: probes solved to optimality on
labelled subsets redrawn per seed), plus the lookup-table baseline. It prints
the table with its intervals, the change from the first to the last checkpoint
against its paired noise, the rank correlations (raw and with the loss gap
partialled out), what the run does and does not show, the time of each stage
and where the report, figures and TensorBoard logs are. Rerunning continues;
any field can be overridden, e.g. --config.pretrain.train.num_steps=20000.
"""
import os
import time

import numpy as np
from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from flatness import analysis
from flatness import experiment
from flatness import logs

_CONFIG = config_flags.DEFINE_config_file(
    "config", "experiments/configs/continue_training.py:pcfg_small", "Experiment config.")
_WORKDIR = flags.DEFINE_string("workdir", "runs/quickstart", "Where everything is written.")


def _ci(lo, hi) -> str:
  return f"[{lo:.3f}, {hi:.3f}]" if np.isfinite(lo) else ""


def checkpoint_table(rows, accs) -> str:
  """Loss gap, trace +- s.e. and each probe accuracy with its interval over probe seeds."""
  head = ["step", "loss gap (nats)", "tr(H) +- s.e."] + [
      f"{a.split('/')[1]} probe [95% CI]" for a in accs]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for r in rows:
    cells = [str(r["step"]), f"{analysis.value(r, analysis.GAP):.4f}",
             f"{analysis.value(r, analysis.TRACE):.1f} +- "
             f"{analysis.value(r, analysis.TRACE + '_stderr'):.1f}"]
    cells += [f"{analysis.value(r, a):.3f} {_ci(analysis.value(r, a + '_lo'), analysis.value(r, a + '_hi'))}"
              for a in accs]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def findings(rows, effects, correlations, tolerance) -> list[str]:
  """What the numbers support, sentence by sentence, decided from the numbers themselves."""
  first, last = rows[0], rows[-1]
  opt = analysis.value(last, "eval/optimal_loss")
  g0, g1 = analysis.value(first, analysis.GAP), analysis.value(last, analysis.GAP)
  out = [f"Loss gap {g0:.3f} -> {g1:.3f} nats ({100 * g0 / opt:.1f}% -> {100 * g1 / opt:.1f}% "
         f"of the exact optimum {opt:.3f})."]
  spread = max(analysis.value(r, analysis.GAP) for r in rows) - min(
      analysis.value(r, analysis.GAP) for r in rows)
  if tolerance is not None and all(analysis.value(r, analysis.GAP) <= tolerance for r in rows):
    out.append(f"Every checkpoint is within the tolerance of {tolerance} nats: same loss.")
  else:
    out.append(f"The gap moves by {spread:.3f} nats across checkpoints: these are NOT models at "
               "the same loss, so changes in accuracy cannot be credited to flatness alone.")
  e = effects[0]
  verb = ("fell" if e.d_trace_z < -2 else "rose" if e.d_trace_z > 2 else
          "did not change distinguishably")
  out.append(f"tr(H) {verb} ({e.trace_a:.1f} -> {e.trace_b:.1f}, change {e.d_trace:+.1f} +- "
             f"{e.d_trace_se:.1f}, z = {e.d_trace_z:+.1f}).")
  for x in effects:
    if not x.accuracy:
      continue
    sig = ("up" if x.d_acc_lo > 0 else "down" if x.d_acc_hi < 0 else "unchanged within noise")
    out.append(f"Task {x.accuracy.split('/')[1]}: {x.d_acc:+.3f} {_ci(x.d_acc_lo, x.d_acc_hi)} "
               f"({sig}; paired over {x.n_seeds} probe seeds).")
  part = [c for c in correlations if c.scope == "partial_gap" and "probe" in c.accuracy
          and c.flatness == analysis.TRACE]
  if part:
    out.append("With the loss gap partialled out, Spearman(trace, accuracy): " + ", ".join(
        f"{c.accuracy.split('/')[1]} {c.spearman:+.2f}" for c in part)
               + f" ({part[0].interval}).")
  return out


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
  tol = experiment.tolerance(config)
  result = experiment.analyze(config, [workdir], os.path.join(root, "report"))
  stages["analysis"] = time.perf_counter() - t0
  rows = [r for r in result.rows if np.isfinite(analysis.value(r, analysis.TRACE))]
  _, accs = analysis.measure_names(rows)
  accs = [a for a in accs if a.endswith("/probe_acc")]
  print("\n" + checkpoint_table(rows, accs))
  lookups = [(a.split("/")[1], analysis.value(rows[-1], analysis.lookup_key(a)),
              analysis.value(rows[-1], analysis.lookup_key(a) + "_lo"),
              analysis.value(rows[-1], analysis.lookup_key(a) + "_hi")) for a in accs]
  print("lookup table (true conditionals as features): " + ", ".join(
      f"{t} {v:.3f} {_ci(lo, hi)}" for t, v, lo, hi in lookups))
  print("Intervals: tr(H) s.e. over 1-probe-per-batch estimates on fresh evaluation batches "
        "(covers sentences, masks and probes); probe 95% CIs over seeds that redraw the "
        "labelled training subset. One pre-training seed: no across-seed interval.")
  effects = analysis.paired_effects(rows)
  print("\nWhat this run shows:")
  for line in findings(rows, effects, result.correlations, tol):
    print("  " + line)
  total = time.perf_counter() - start
  print("\ntime: " + ", ".join(f"{k} {v:.0f} s" for k, v in stages.items())
        + f"; total {total:.0f} s")
  paths = result.paths
  print(f"report: {paths['report']}\nfigures: {os.path.dirname(paths['trace'])}\n"
        f"tensorboard: tensorboard --logdir={workdir}/tensorboard")


if __name__ == "__main__":
  app.run(main)
