"""Flatness versus transfer across runs: one table, rank correlations with bootstrap CIs.

`gather` reads the ``metrics.jsonl`` (and ``run_info.json``) of many runs into
one row per (run, checkpoint step) that has curvature or downstream metrics.
`correlate` then asks the paper's question among the rows whose pre-training
loss is within ``tolerance`` nats of the optimum (``eval/loss_gap``):

* Spearman's rho and Kendall's tau between each flatness measure and each
  downstream accuracy, with percentile bootstrap 95% intervals (rows resampled
  with replacement);
* the partial Spearman correlation controlling for model size: ranks of both
  variables are regressed on the rank of the parameter count and the residuals
  correlated (the reviewers' question: is flatness more than a proxy for size?);
* Spearman within each model size (rows of one parameter count), and the
  stratified estimate that pools the within-size ranks.

The paper's claim predicts negative correlations (flatter = lower trace =
better transfer) that survive the control for size.
"""
import dataclasses
import json
import os

import numpy as np
from scipy import stats

from flatness import metric_writers

RUN_INFO = "run_info.json"   # written by flatness.trainer
FLATNESS_PREFIX = "curvature/"
ACCURACY_SUFFIXES = ("/probe_acc", "/finetune_acc")
SKIP = ("_stderr", "_std")


def read_run(workdir: str) -> list[dict]:
  """Rows of one run: metrics merged per step, with run name, experiment and size."""
  path = os.path.join(workdir, metric_writers.JSONL)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{workdir}: no {metric_writers.JSONL}")
  info = {}
  if os.path.exists(os.path.join(workdir, RUN_INFO)):
    with open(os.path.join(workdir, RUN_INFO)) as f:
      info = json.load(f)
  by_step: dict[int, dict] = {}
  for rec in metric_writers.read_jsonl(path):
    by_step.setdefault(int(rec["step"]), {}).update(rec)
  rows = []
  for step in sorted(by_step):
    rec = by_step[step]
    if not any(k.startswith(("curvature/", "downstream/")) for k in rec):
      continue
    rows.append(dict(rec, run=info.get("name", os.path.basename(os.path.normpath(workdir))),
                     experiment=info.get("experiment", ""),
                     num_params=info.get("num_params", np.nan), step=step))
  return rows


def gather(workdirs) -> list[dict]:
  return [row for w in workdirs for row in read_run(w)]


def measure_names(rows) -> tuple[list[str], list[str]]:
  """(flatness measures, downstream accuracies) present in ``rows``."""
  keys = sorted({k for r in rows for k in r})
  flat = [k for k in keys if k.startswith(FLATNESS_PREFIX) and not k.endswith(SKIP)
          and "/" not in k[len(FLATNESS_PREFIX):] and k != "curvature/loss"]
  acc = [k for k in keys if k.startswith("downstream/") and k.endswith(ACCURACY_SUFFIXES)]
  return flat, acc


def _spearman(x, y):
  if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
    return np.nan
  return float(stats.spearmanr(x, y).statistic)


def _kendall(x, y):
  if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
    return np.nan
  return float(stats.kendalltau(x, y).statistic)


def _partial(x, y, z):
  """Spearman correlation of x and y controlling for z (residuals of ranks on rank(z))."""
  if len(x) < 4 or np.ptp(z) == 0:
    return _spearman(x, y)
  rz = stats.rankdata(z)
  design = np.stack([np.ones_like(rz), rz], 1)
  res = [r - design @ np.linalg.lstsq(design, r, rcond=None)[0]
         for r in (stats.rankdata(x), stats.rankdata(y))]
  if np.ptp(res[0]) < 1e-12 or np.ptp(res[1]) < 1e-12:
    return np.nan
  return float(np.corrcoef(res[0], res[1])[0, 1])


def _stratified(x, y, z):
  """Spearman of ranks taken within each z group (pooled within-size correlation)."""
  rx, ry = np.empty(len(x)), np.empty(len(y))
  for g in np.unique(z):
    m = z == g
    rx[m] = stats.rankdata(x[m]) - (m.sum() + 1) / 2
    ry[m] = stats.rankdata(y[m]) - (m.sum() + 1) / 2
  if np.ptp(rx) == 0 or np.ptp(ry) == 0:
    return np.nan
  return float(np.corrcoef(rx, ry)[0, 1])


def bootstrap(stat, arrays, *, num: int = 1000, seed: int = 0, level: float = 0.95):
  """Percentile bootstrap interval of ``stat(*arrays)`` over resampled rows."""
  n = len(arrays[0])
  rng = np.random.default_rng(seed)
  vals = [stat(*(a[idx] for a in arrays)) for idx in rng.integers(0, n, (num, n))]
  vals = np.asarray([v for v in vals if np.isfinite(v)])
  if len(vals) < num // 2:
    return np.nan, np.nan
  return tuple(float(q) for q in np.quantile(vals, [(1 - level) / 2, (1 + level) / 2]))


@dataclasses.dataclass
class Correlation:
  flatness: str
  accuracy: str
  scope: str          # all | partial_size | within_size | size=<n>
  n: int
  spearman: float
  spearman_lo: float
  spearman_hi: float
  kendall: float = np.nan


def correlate(rows, *, tolerance: float | None = 0.05, num_bootstrap: int = 1000,
              seed: int = 0) -> list[Correlation]:
  """Correlations of every flatness measure with every accuracy (module docstring)."""
  if tolerance is not None:
    rows = [r for r in rows if r.get("eval/loss_gap", np.inf) <= tolerance]
  flat_names, acc_names = measure_names(rows)
  out = []
  for f in flat_names:
    for a in acc_names:
      sel = [r for r in rows if np.isfinite(r.get(f, np.nan)) and np.isfinite(r.get(a, np.nan))]
      if len(sel) < 3:
        continue
      x, y = np.array([r[f] for r in sel]), np.array([r[a] for r in sel])
      z = np.array([r.get("num_params", np.nan) for r in sel], float)
      z = np.where(np.isfinite(z), z, -1.0)
      boot = dict(num=num_bootstrap, seed=seed)
      out.append(Correlation(f, a, "all", len(sel), _spearman(x, y),
                             *bootstrap(_spearman, (x, y), **boot), _kendall(x, y)))
      if len(np.unique(z)) > 1:
        out.append(Correlation(f, a, "partial_size", len(sel), _partial(x, y, z),
                               *bootstrap(_partial, (x, y, z), **boot)))
        out.append(Correlation(f, a, "within_size", len(sel), _stratified(x, y, z),
                               *bootstrap(_stratified, (x, y, z), **boot)))
        for g in np.unique(z):
          m = z == g
          if m.sum() >= 3:
            out.append(Correlation(f, a, f"size={int(g)}", int(m.sum()), _spearman(x[m], y[m]),
                                   *bootstrap(_spearman, (x[m], y[m]), **boot),
                                   _kendall(x[m], y[m])))
  return out
