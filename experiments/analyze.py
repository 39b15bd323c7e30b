r"""Gathers many runs into one table; correlates flatness with downstream accuracy.

  python -m experiments.analyze --workdirs=runs/exp/adamw,runs/exp/sgd --out=runs/exp/report
  python -m experiments.analyze --workdirs='runs/exp/*' --tolerance=0.02

Prints, and writes to --out (default: <first workdir's parent>/report; see
`flatness.analysis.report`), over the checkpoints with loss gap <= --tolerance:

  correlations     Spearman/Kendall of each flatness measure with each accuracy, raw
                   and with the loss gap (and size) partialled out. 95% interval:
                   percentile bootstrap over RUNS (whole runs resampled with all
                   their checkpoints), so it covers run-to-run variation; none with
                   fewer than `analysis.MIN_RUNS_FOR_INTERVAL` runs, since checkpoints
                   of one run are autocorrelated. Few runs give too narrow intervals.
  paired effects   per run, last vs first checkpoint: change in loss gap; change in
                   tr(H) with s.e. sqrt(se_a^2 + se_b^2) (conservative) and z; change in
                   accuracy with a t-interval over probe seeds paired on the same
                   labelled draws. It covers probe noise only, not pre-training seeds.
  lookup table     accuracy minus the lookup-table baseline, paired by probe seed.
  seeds            per recipe with >= 2 pre-training seeds: across-seed mean and
                   t-interval (covers all seed-to-seed variability), and recipe
                   differences at the final checkpoints (paired by seed index when
                   the seeds match, Welch otherwise).

plus table.csv/.md (every checkpoint) and figures/*.png; with --drift_window, the
mechanism experiment's drift.md, drift.csv and figures (`flatness.analysis.drift_report`):

  python -m experiments.analyze --workdirs='runs/mechanism/*' --tolerance=0.017 \
      --drift_window=1500
"""
import glob
import os

from absl import flags

from experiments import runner
from flatness.runtime import cli

_WORKDIRS = flags.DEFINE_list("workdirs", None, "Run directories (globs allowed).")
_OUT = flags.DEFINE_string("out", "", "Output directory (default: <parent>/report).")
_TOL = flags.DEFINE_float("tolerance", 0.05, "Max eval/loss_gap (nats) of rows correlated; "
                          "negative: use every row.")
_BOOT = flags.DEFINE_integer("num_bootstrap", 1000, "Bootstrap resamples (over runs).")
_DRIFT = flags.DEFINE_float("drift_window", 0.0, "> 0: also the mechanism's drift report "
                            "(flatness.analysis.drift_report), initial rates over steps <= this.")
flags.mark_flags_as_required(["workdirs"])


def expand(patterns) -> list[str]:
  dirs = []
  for p in patterns:
    hits = sorted(glob.glob(p)) if any(c in p for c in "*?[") else [p]
    dirs += [d for d in hits if os.path.isdir(d) and os.path.exists(os.path.join(
        d, "metrics.jsonl"))] if len(hits) > 1 or hits != [p] else hits
  if not dirs:
    raise FileNotFoundError(f"--workdirs={','.join(patterns)} matches no run directory")
  return dirs


def main(argv):
  del argv
  dirs = expand(_WORKDIRS.value)
  out = _OUT.value or os.path.join(os.path.dirname(os.path.normpath(dirs[0])), "report")
  tol = None if _TOL.value < 0 else _TOL.value
  paths = runner.analyze_runs(dirs, out, tolerance=tol, num_bootstrap=_BOOT.value,
                              drift_window=_DRIFT.value).paths
  # report.md without its last section, the table of every checkpoint (in table.md).
  print(open(paths["report"]).read().split("\n## Checkpoints")[0])
  if "drift" in paths:
    print(open(paths["drift"]).read())
  print("\n".join(f"{k}: {v}" for k, v in paths.items()))


if __name__ == "__main__":
  cli.run(main)
