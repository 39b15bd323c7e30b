r"""The main job: the paper's experiment (a), at the optimum, on a laptop CPU.

  python -m experiments.quickstart [--workdir=runs/quickstart]

On a small random PCFG (`data_gen`, nothing to download), phase 1 trains a 2-layer
MLM toward the exact optimum with exact targets (no label noise) and a decaying
learning rate. Phase 2 continues from there at a constant learning rate in two
arms (`experiments/configs/continue_training.py:quickstart`): ``adamw``, the
paper's continued pre-training on sampled labels, and ``exact``, the same on exact
targets, the control without label noise. At every kept phase-2 checkpoint it
measures the Hessian trace (`flatness.curvature.trace`: one probe on each of many fresh
evaluation batches, so its error covers sentences, masks and probes) and the
linear-probe accuracy on the grammar's tasks A, B, C (`flatness.transfer.downstream`:
probes solved to optimality on labelled subsets redrawn per seed), plus the
lookup-table baseline. It prints each arm's table with the loss gap against the
tolerance (1% of the exact optimum), each arm's change from the start of phase 2
to its end against its paired noise, the two arms against each other, what the
run does and does not show, the time of each stage and where the report, figures
and TensorBoard logs are. Rerunning continues; any field can be overridden, e.g.
--config.pretrain.train.num_steps=16000.
"""
import os
import time

import numpy as np
from absl import flags
from absl import logging
from ml_collections import config_flags

from experiments import runner
from experiments import sweep
from flatness.analysis import correlation as analysis
from flatness.runtime import cli
from flatness.runtime import logs

FLAGS = flags.FLAGS


def define_flags():
  """Command-line flags; defined only when run as a script (tests import `findings`)."""
  config_flags.DEFINE_config_file(
      "config", "experiments/configs/continue_training.py:quickstart", "Experiment config.")
  flags.DEFINE_string("workdir", "runs/quickstart", "Where everything is written.")


def _ci(lo, hi) -> str:
  return f"[{lo:.3f}, {hi:.3f}]" if np.isfinite(lo) else ""


def _signed_ci(lo, hi) -> str:
  return f"[{100 * lo:+.1f}, {100 * hi:+.1f}]" if np.isfinite(lo) else ""


def _gap(r) -> str:
  g, opt = analysis.value(r, analysis.GAP), analysis.value(r, "eval/optimal_loss")
  return f"{g:.4f} ({100 * g / opt:.2f}%)"


def checkpoint_table(rows, accs, tolerance) -> str:
  """Loss gap, trace +- s.e. and each probe accuracy with its interval over probe seeds."""
  head = ["step", "loss gap, nats (% of optimum)", "within tol.", "tr(H) +- s.e."] + [
      f"{a.split('/')[1]} probe [95% CI]" for a in accs]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for r in rows:
    within = tolerance is None or analysis.value(r, analysis.GAP) <= tolerance
    cells = [str(r["step"]), _gap(r), "yes" if within else "NO",
             f"{analysis.value(r, analysis.TRACE):.1f} +- "
             f"{analysis.value(r, analysis.TRACE + '_stderr'):.1f}"]
    cells += [f"{analysis.value(r, a):.3f} "
              f"{_ci(analysis.value(r, a + '_lo'), analysis.value(r, a + '_hi'))}" for a in accs]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def _trace_verb(e) -> str:
  return ("fell" if e.d_trace_z < -2 else "rose" if e.d_trace_z > 2 else
          "did not change distinguishably")


def _acc_sentence(effects) -> str:
  parts = []
  for x in effects:
    if x.accuracy:
      sig = "up" if x.d_acc_lo > 0 else "down" if x.d_acc_hi < 0 else "within noise"
      parts.append(f"{x.accuracy.split('/')[1]} {100 * x.d_acc:+.1f} "
                   f"{_signed_ci(x.d_acc_lo, x.d_acc_hi)} ({sig})")
  return "probe accuracy (points, paired over probe seeds): " + ", ".join(parts)


def findings(runs: dict[str, list[dict]], tolerance) -> list[str]:
  """What the numbers support, sentence by sentence, decided from the numbers themselves."""
  start = next(iter(runs.values()))[0]
  opt = analysis.value(start, "eval/optimal_loss")
  tolerance = np.inf if tolerance is None else tolerance
  tol = (f"{tolerance:.4f} nats ({100 * tolerance / opt:.1f}% of the exact optimum {opt:.3f})"
         if np.isfinite(tolerance) else "not set (analysis.tolerance < 0)")
  g0 = analysis.value(start, analysis.GAP)
  out = [f"Phase 1 ended at a loss gap of {_gap(start)}; the tolerance for 'same loss' "
         f"is {tol}: the start of phase 2 is {'within' if g0 <= tolerance else 'OUTSIDE'} it."]
  effects = {}
  for name, rows in runs.items():
    effects[name] = analysis.compare(rows[0], rows[-1])
    out.append(_arm_sentence(name, rows, effects[name], tolerance))
  if len(runs) == 2:
    out += _two_arm_sentences(runs, effects, tolerance)
  return out


def _arm_sentence(name: str, rows, e, tolerance) -> str:
  """One arm over phase 2: its loss-gap range, its trace change and accuracy changes."""
  gaps = [analysis.value(r, analysis.GAP) for r in rows]
  outside = [r["step"] for r, g in zip(rows, gaps) if g > tolerance]
  within = ("every checkpoint is within the tolerance" if not outside else
            f"checkpoints {outside} are OUTSIDE the tolerance")
  return (f"{name}: loss gap {min(gaps):.4f}-{max(gaps):.4f} nats over phase 2 ({within}); "
          f"tr(H) {_trace_verb(e[0])} ({e[0].trace_a:.1f} -> {e[0].trace_b:.1f}, "
          f"{e[0].d_trace:+.1f} +- {e[0].d_trace_se:.1f}, z = {e[0].d_trace_z:+.1f}); "
          f"{_acc_sentence(e)}.")


def _two_arm_sentences(runs, effects, tolerance) -> list[str]:
  """The two arms against each other: the trace (label noise's prediction) and transfer."""
  (na, ra), (nb, rb) = runs.items()
  e = analysis.compare(rb[-1], ra[-1])
  out = [f"{na} against {nb} at step {ra[-1]['step']}: tr(H) {e[0].d_trace:+.1f} +- "
         f"{e[0].d_trace_se:.1f} (z = {e[0].d_trace_z:+.1f}); {_acc_sentence(e)}."]
  fell = {n: x[0].d_trace_z < -2 for n, x in effects.items()}
  all_within = all(analysis.value(r, analysis.GAP) <= tolerance
                   for rows in runs.values() for r in rows)
  if not all_within:
    out.append("Not every checkpoint is at the same loss: read the trace and accuracy "
               "changes beside the loss-gap column, not as flatness alone.")
  elif fell.get(na) and not fell.get(nb):
    out.append(f"At the same loss (within the tolerance), the trace fell under {na} and "
               f"not under {nb}: the direction the paper's label-noise argument predicts.")
  elif fell.get(na):
    out.append(f"The trace fell under both {na} and {nb}: continued training flattens "
               "here with or without label noise, so the fall is not label noise's alone.")
  elif fell.get(nb):
    out.append(f"The trace fell under {nb} and not under {na}: the opposite of the "
               "paper's label-noise argument.")
  else:
    out.append(f"The trace fell under neither {na} nor {nb}: label-noise flattening does "
               "not show at this scale and phase-2 length.")
  g_a = analysis.value(ra[-1], analysis.GAP) - analysis.value(rb[-1], analysis.GAP)
  out.append(f"Downstream, {na} against {nb} at the last checkpoint {_transfer_verdict(e)}; "
             f"its loss gap differs by {g_a:+.4f} nats, which also moves accuracy. One "
             "pre-training seed: experiments/configs/continue_training.py:pcfg_compact runs "
             "three.")
  return out


def _transfer_verdict(e) -> str:
  """Whether the flatter arm transfers better, worse or the same, by the paired intervals."""
  accs = [x for x in e if x.accuracy]
  up = [x.accuracy.split("/")[1] for x in accs if x.d_acc_lo > 0]
  down = [x.accuracy.split("/")[1] for x in accs if x.d_acc_hi < 0]
  flatter = e[0].d_trace_z < -2
  if flatter and up and not down:
    return "agrees with the paper's claim that the flatter model transfers better"
  if flatter and down:
    return ("is the opposite of the paper's claim that the flatter model transfers "
            f"better (worse on {', '.join(down)})")
  if flatter:
    return "does not show the paper's downstream claim (no task differs beyond noise)"
  return "does not test the downstream claim (the trace does not differ)"


def main(argv):
  del argv
  logs.quiet_libraries()
  logging.set_verbosity(logging.INFO)
  config, root = FLAGS.config, FLAGS.workdir
  start = time.perf_counter()
  runs = sweep.expand(config)
  stages: dict[str, float] = {}
  for run in runs:
    print(f"== {run.name} ({os.path.join(root, run.name)}; phase 1: "
          f"{os.path.join(root, run.phase1.name) if run.phase1 else 'none'})", flush=True)
    for k, v in runner.run_one(run, os.path.join(root, run.name),
                               phase1_root=root).items():
      stages[k] = stages.get(k, 0.0) + v
  t0 = time.perf_counter()
  tol = runner.tolerance(config)
  result = runner.analyze(config, [os.path.join(root, r.name) for r in runs],
                          os.path.join(root, "report"))
  stages["analysis"] = time.perf_counter() - t0
  rows = [r for r in result.rows if np.isfinite(analysis.value(r, analysis.TRACE))]
  _, accs = analysis.measure_names(rows)
  accs = [a for a in accs if a.endswith("/probe_acc")]
  per_run = {key[1]: rs for key, rs in analysis.by_run(rows).items()}
  for name, rs in per_run.items():
    print(f"\n{name}:\n" + checkpoint_table(rs, accs, tol))
  last = next(iter(per_run.values()))[-1]
  lookups = [(a.split("/")[1], analysis.value(last, analysis.lookup_key(a)),
              analysis.value(last, analysis.lookup_key(a) + "_lo"),
              analysis.value(last, analysis.lookup_key(a) + "_hi")) for a in accs]
  print("lookup table (true conditionals as features): " + ", ".join(
      f"{t} {v:.3f} {_ci(lo, hi)}" for t, v, lo, hi in lookups))
  print("Intervals: tr(H) s.e. over 1-probe-per-batch estimates on fresh evaluation batches "
        "(covers sentences, masks and probes); probe 95% CIs over seeds that redraw the "
        "labelled training subset. One pre-training seed: no across-seed interval.")
  print("\nWhat this run shows:")
  for line in findings(per_run, tol):
    print("  " + line)
  total = time.perf_counter() - start
  print("\ntime: " + ", ".join(f"{k} {v:.0f} s" for k, v in stages.items())
        + f"; total {total:.0f} s")
  paths = result.paths
  print(f"report: {paths['report']}\nfigures: {os.path.dirname(paths['trace'])}\n"
        f"tensorboard: tensorboard --logdir={root}")


if __name__ == "__main__":
  define_flags()
  cli.run(main)
