r"""Gathers many runs into one table and correlates flatness with downstream accuracy.

  python -m experiments.analyze --workdirs=runs/exp/adamw,runs/exp/sgd --out=runs/exp/report
  python -m experiments.analyze --workdirs='runs/exp/*' --tolerance=0.02

Writes table.csv/.md, correlations.csv, report.md and figures/*.png to --out
(default: <first workdir's parent>/report); see `flatness.report`.
"""
import glob
import os

from absl import app
from absl import flags

from flatness import analysis
from flatness import report

_WORKDIRS = flags.DEFINE_list("workdirs", None, "Run directories (globs allowed).")
_OUT = flags.DEFINE_string("out", "", "Output directory (default: <parent>/report).")
_TOL = flags.DEFINE_float("tolerance", 0.05, "Max eval/loss_gap (nats) of rows correlated; "
                          "negative: use every row.")
_BOOT = flags.DEFINE_integer("num_bootstrap", 1000, "Bootstrap resamples.")
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
  rows = analysis.gather(dirs)
  paths = report.write(rows, analysis.correlate(rows, tolerance=tol, num_bootstrap=_BOOT.value),
                       out, tolerance=tol)
  print(open(paths["report"]).read())
  print("\n".join(f"{k}: {v}" for k, v in paths.items()))


if __name__ == "__main__":
  app.run(main)
