"""The main job's verdicts follow the numbers: built from rows with known effects."""
import numpy as np

from experiments import quickstart
from flatness.analysis import correlation as analysis

_ACC = "downstream/A/probe_acc"


def _row(run, step, gap, trace, accs):
  r = {"experiment": "continue_training", "run": run, "step": step, analysis.GAP: gap,
       "eval/optimal_loss": 1.7, analysis.TRACE: trace, analysis.TRACE + "_stderr": 1.0,
       _ACC: float(np.mean(accs))}
  r.update({f"{_ACC}/seed{k}": a for k, a in enumerate(accs)})
  return r


def _runs(gap_end=0.01, trace_end=70.0, acc_shift=-0.02):
  base = [0.80, 0.81, 0.79, 0.80]
  start = dict(noisy=_row("noisy", 0, 0.009, 80.0, base), control=_row("control", 0, 0.009,
                                                                          80.0, base))
  return {"noisy": [start["noisy"], _row("noisy", 8, gap_end, trace_end,
                                         [a + acc_shift for a in base])],
          "control": [start["control"], _row("control", 8, 0.009, 80.5,
                                             [a + 0.001 * k for k, a in enumerate(base)])]}


def test_flatter_and_worse_at_the_same_loss_is_called_the_opposite_of_the_claim():
  text = " ".join(quickstart.findings(_runs(), tolerance=0.017))
  assert "every checkpoint is within the tolerance" in text
  assert "tr(H) fell (80.0 -> 70.0" in text
  assert "label-noise argument predicts" in text
  assert "opposite of the paper's claim" in text and "worse on A" in text


def test_flatter_and_better_agrees_and_no_flattening_is_said_plainly():
  text = " ".join(quickstart.findings(_runs(acc_shift=+0.02), tolerance=0.017))
  assert "agrees with the paper's claim" in text
  text = " ".join(quickstart.findings(_runs(trace_end=79.5), tolerance=0.017))
  assert "fell under neither" in text and "does not test the downstream" in text


def test_a_checkpoint_outside_the_tolerance_is_named_and_blocks_the_same_loss_verdict():
  text = " ".join(quickstart.findings(_runs(gap_end=0.03), tolerance=0.017))
  assert "checkpoints [8] are OUTSIDE the tolerance" in text
  assert "Not every checkpoint is at the same loss" in text
  assert "label-noise argument predicts" not in text
