"""Flatness versus transfer across runs: correlations, paired effects, seed summaries.

`gather` reads the ``metrics.jsonl`` (and ``run_info.json``) of many runs into
one row per (run, checkpoint step) that has curvature or downstream metrics,
with the run's ``group`` (its recipe, shared by its pre-training seeds) and
``seed``. Three analyses then ask the paper's question among the rows whose
pre-training loss is within ``tolerance`` nats of the optimum
(``eval/loss_gap`` <= tolerance; rows without a loss gap cannot be judged and
are left out, with a warning):

`correlate`: Spearman's rho (and Kendall's tau) between each flatness measure
  and each downstream accuracy over all rows ("all"); the partial Spearman
  correlation controlling for the loss gap ("partial_gap": ranks of both
  variables residualised on the rank of ``eval/loss_gap``, then correlated),
  since the gap predicts accuracy better than any curvature measure; with
  several model sizes, the same controlling for size ("partial_size"), for both
  ("partial_gap_size"), and within each size ("within_size" pools the
  within-size ranks, "size=<n>" is one size). Intervals: percentile bootstrap
  over RUNS (whole runs resampled with replacement, all their checkpoints
  kept), because checkpoints of one run are autocorrelated and resampling them
  as if independent gives intervals that are far too narrow. With fewer than
  `MIN_RUNS_FOR_INTERVAL` runs no interval is given. With G runs the
  cluster bootstrap still under-covers (its variance is about (G-1)/G of the
  true one and it has few distinct resamples): read intervals over < 10 runs as
  optimistic.

`paired_effects`: what one run can honestly report. The last checkpoint within
  tolerance against the first: change in loss gap, change in the Hessian trace
  against its standard error, change in probe accuracy as the mean of per-seed
  paired differences (every checkpoint is probed on the same labelled draws for
  seed k, so the pairing removes the draw-to-draw noise) with a Student-t
  interval. `lookup_effects` compares each checkpoint with the lookup-table
  baseline the same way.

`seed_summary`: for recipes pre-trained with several seeds, the across-seed
  mean, standard error and t-interval of each metric (this spread is the whole
  run-to-run variability: pre-training seed, curvature estimate, probes), and
  the difference between recipes at their final checkpoints (paired by seed
  index when both recipes have the same seeds, Welch otherwise).

The paper's claim predicts negative trace-accuracy correlations (flatter =
lower trace = better transfer) that survive the controls for the loss gap and
size.
"""
import dataclasses
import itertools
import json
import math
import numbers
import os
import re

import numpy as np
from absl import logging
from scipy import stats

from flatness.runtime import metric_writers

RUN_INFO = "run_info.json"   # written by flatness.training.trainer
GAP = "eval/loss_gap"
TRACE = "curvature/trace"
FLATNESS_PREFIX = "curvature/"
ACCURACY_SUFFIXES = ("/probe_acc", "/finetune_acc")
LOOKUP_SUFFIX = "/lookup_acc"
SKIP = ("_stderr", "_std", "_lo", "_hi")     # uncertainty of a measure, not a measure
SEED_KEY = re.compile(r"/seed(\d+)$")        # one probe seed's value, not a measure
MIN_RUNS_FOR_INTERVAL = 3    # fewer runs: no interval (a 2-run bootstrap has 3 resamples)
LEVEL = 0.95
NO_INTERVAL_WHY = "checkpoints of one run are autocorrelated"


def read_run(workdir: str) -> list[dict]:
  """Rows of one run: metrics merged per step, with run name, experiment, group, seed, size."""
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
  name = info.get("name", os.path.basename(os.path.normpath(workdir)))
  rows = []
  for step in sorted(by_step):
    rec = by_step[step]
    if not any(k.startswith(("curvature/", "downstream/")) for k in rec):
      continue
    rows.append(dict(rec, run=name, experiment=info.get("experiment", ""),
                     group=info.get("group") or name, seed=int(info.get("seed", 0)),
                     num_params=info.get("num_params", np.nan), step=step))
  return rows


def gather(workdirs) -> list[dict]:
  return [row for w in workdirs for row in read_run(w)]


def measure_names(rows) -> tuple[list[str], list[str]]:
  """(flatness measures, downstream accuracies) present in ``rows``."""
  keys = sorted({k for r in rows for k in r if not SEED_KEY.search(k)})
  flat = [k for k in keys if k.startswith(FLATNESS_PREFIX) and not k.endswith(SKIP)
          and "/" not in k[len(FLATNESS_PREFIX):] and k != "curvature/loss"]
  acc = [k for k in keys if k.startswith("downstream/") and k.endswith(ACCURACY_SUFFIXES)]
  return flat, acc


def value(row, key) -> float:
  """``row[key]`` as a float; NaN when absent or not a number."""
  v = row.get(key)
  return float(v) if isinstance(v, numbers.Real) and not isinstance(v, bool) else math.nan


def run_key(row) -> tuple[str, str]:
  return (row.get("experiment", ""), row["run"])


def within_tolerance(rows, tolerance: float | None, *, warn: bool = False) -> list[dict]:
  """Rows with ``eval/loss_gap <= tolerance`` (every row when None).

  Rows without a finite loss gap cannot be placed relative to the tolerance
  and are left out; with ``warn`` (as `correlate` does, once per analysis)
  their number and runs are logged, and the report states the count.
  """
  if tolerance is None:
    return list(rows)
  missing = [r for r in rows if not np.isfinite(value(r, GAP))]
  if missing and warn:
    logging.warning("%d of %d rows lack %s and cannot be judged against tolerance %g; left "
                    "out (runs: %s)", len(missing), len(rows), GAP, tolerance,
                    sorted({r["run"] for r in missing}))
  return [r for r in rows if value(r, GAP) <= tolerance]


def by_run(rows) -> dict[tuple[str, str], list[dict]]:
  """{(experiment, run): its rows in step order}."""
  out: dict[tuple[str, str], list[dict]] = {}
  for r in rows:
    out.setdefault(run_key(r), []).append(r)
  return {k: sorted(v, key=lambda r: r["step"]) for k, v in out.items()}


# ----------------------------------------------------------------------------- correlations


def spearman(x, y):
  """Spearman's rho: Pearson correlation of mid-ranks (= scipy's spearmanr, faster)."""
  if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
    return np.nan
  return float(np.corrcoef(stats.rankdata(x), stats.rankdata(y))[0, 1])


def _kendall(x, y):
  if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
    return np.nan
  return float(stats.kendalltau(x, y).statistic)


def partial_spearman(x, y, *controls):
  """Partial Spearman correlation of x and y given ``controls``.

  Pearson correlation of the residuals of rank(x) and rank(y) after least
  squares on [1, rank(c) for c in controls]. A constant control drops out
  (it is collinear with the intercept), leaving plain Spearman.
  """
  if len(x) < 3 + len(controls):
    return np.nan
  design = np.column_stack([np.ones(len(x))] + [stats.rankdata(c) for c in controls])
  res = [r - design @ np.linalg.lstsq(design, r, rcond=None)[0]
         for r in (stats.rankdata(x), stats.rankdata(y))]
  # Ranks are O(n); residuals this small are round-off of an exact fit.
  if np.ptp(res[0]) < 1e-9 * len(x) or np.ptp(res[1]) < 1e-9 * len(x):
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


def _percentiles(vals, num, level):
  vals = np.asarray([v for v in vals if np.isfinite(v)])
  if len(vals) < num // 2:   # the statistic is undefined in most resamples
    return np.nan, np.nan
  return tuple(float(q) for q in np.quantile(vals, [(1 - level) / 2, (1 + level) / 2]))


def bootstrap(stat, arrays, *, num: int = 1000, seed: int = 0, level: float = LEVEL):
  """Percentile bootstrap interval of ``stat(*arrays)`` over resampled ROWS.

  Valid only for independent rows; checkpoints of one run are not, so
  `correlate` uses `cluster_bootstrap`. Kept as the naive reference.
  """
  n = len(arrays[0])
  rng = np.random.default_rng(seed)
  vals = [stat(*(a[idx] for a in arrays)) for idx in rng.integers(0, n, (num, n))]
  return _percentiles(vals, num, level)


def cluster_bootstrap(stat, arrays, clusters, *, num: int = 1000, seed: int = 0,
                      level: float = LEVEL):
  """Percentile bootstrap interval of ``stat(*arrays)`` resampling whole clusters.

  Each resample draws G clusters (runs) with replacement out of the G present
  and keeps every row of each draw, so the within-run dependence of
  checkpoints is carried into the resamples and the interval reflects
  run-to-run variability. Its variance is about (G-1)/G of the sampling
  variance, so with few runs the interval is too narrow.
  """
  _, codes = np.unique(np.asarray(clusters), return_inverse=True)
  members = [np.flatnonzero(codes == g) for g in range(codes.max() + 1)]
  rng = np.random.default_rng(seed)
  vals = []
  for pick in rng.integers(0, len(members), (num, len(members))):
    idx = np.concatenate([members[g] for g in pick])
    vals.append(stat(*(a[idx] for a in arrays)))
  return _percentiles(vals, num, level)


def plural(n: int, word: str) -> str:
  return f"{n} {word}{'' if n == 1 else 's'}"


@dataclasses.dataclass
class Correlation:
  """A rank correlation between one flatness measure and one accuracy.

  ``spearman_lo``/``spearman_hi`` is the 95% percentile bootstrap interval
  over runs (NaN when ``interval`` starts with "none").
  """
  flatness: str
  accuracy: str
  scope: str          # all | partial_gap | partial_size | partial_gap_size | within_size | size=<n>
  n: int              # rows (checkpoints) used
  spearman: float
  spearman_lo: float
  spearman_hi: float
  kendall: float = np.nan     # "all" and "size=<n>" only
  n_runs: int = 0
  interval: str = ""          # how the interval was obtained, or why there is none
  note: str = ""              # rows left out of this scope, if any


def _interval(stat, arrays, clusters, num, seed):
  n_runs = len(np.unique(clusters))
  if n_runs < MIN_RUNS_FOR_INTERVAL:
    return np.nan, np.nan, (f"none: {plural(n_runs, 'run')} ({NO_INTERVAL_WHY}; "
                            f"needs >= {MIN_RUNS_FOR_INTERVAL} runs)")
  lo, hi = cluster_bootstrap(stat, arrays, clusters, num=num, seed=seed)
  if not np.isfinite(lo):
    return lo, hi, f"none: undefined in most resamples of {n_runs} runs"
  return lo, hi, f"bootstrap over {n_runs} runs"


def _scope(scope, mask, stat, arrays, *, flatness, accuracy, runs, num, seed, kendall=False,
           note="") -> list[Correlation]:
  """``stat`` over the rows in ``mask`` with its run-bootstrap interval ([] under 3 rows)."""
  if mask.sum() < 3:
    return []
  sub = [v[mask] for v in arrays]
  lo, hi, how = _interval(stat, sub, runs[mask], num, seed)
  return [Correlation(flatness, accuracy, scope, int(mask.sum()), stat(*sub), lo, hi,
                      _kendall(sub[0], sub[1]) if kendall else np.nan,
                      len(np.unique(runs[mask])), how, note)]


def correlate(rows, *, tolerance: float | None = 0.05, num_bootstrap: int = 1000,
              seed: int = 0) -> list[Correlation]:
  """Correlations of every flatness measure with every accuracy (module docstring).

  Args:
    rows: from `gather`.
    tolerance: keep rows with ``eval/loss_gap <= tolerance`` nats; None: every row.
    num_bootstrap: cluster-bootstrap resamples per interval.
    seed: of the resampling.

  Returns:
    One `Correlation` per (measure, accuracy, scope) with >= 3 rows.
  """
  rows = within_tolerance(rows, tolerance, warn=True)
  flat_names, acc_names = measure_names(rows)
  no_gap = sum(not np.isfinite(value(r, GAP)) for r in rows)
  if no_gap:
    logging.warning("%d of %d rows lack %s: they are left out of the gap-controlled "
                    "correlations", no_gap, len(rows), GAP)
  out = []
  for f in flat_names:
    for a in acc_names:
      sel = [r for r in rows if np.isfinite(value(r, f)) and np.isfinite(value(r, a))]
      if len(sel) < 3:
        continue
      x, y = np.array([value(r, f) for r in sel]), np.array([value(r, a) for r in sel])
      gap = np.array([value(r, GAP) for r in sel])
      z = np.array([value(r, "num_params") for r in sel])
      z = np.where(np.isfinite(z), z, -1.0)
      runs = np.array(["\0".join(run_key(r)) for r in sel])
      has_gap = np.isfinite(gap)
      gap_note = (f"{int((~has_gap).sum())} rows lacking {GAP} left out"
                  if not has_gap.all() else "")

      one = dict(flatness=f, accuracy=a, runs=runs, num=num_bootstrap, seed=seed)
      every = np.ones(len(sel), bool)
      out += _scope("all", every, spearman, (x, y), kendall=True, **one)
      out += _scope("partial_gap", has_gap, partial_spearman, (x, y, gap), note=gap_note, **one)
      if len(np.unique(z)) > 1:
        out += _scope("partial_size", every, partial_spearman, (x, y, z), **one)
        out += _scope("partial_gap_size", has_gap, partial_spearman, (x, y, gap, z),
                      note=gap_note, **one)
        out += _scope("within_size", every, _stratified, (x, y, z), **one)
        for g in np.unique(z):
          out += _scope(f"size={int(g)}", z == g, spearman, (x, y), kendall=True, **one)
  return out


# ----------------------------------------------------------------------------- paired effects


def seed_values(row, key: str) -> dict[int, float]:
  """Per-seed values ``{k: row[f"{key}/seed{k}"]}`` of ``key`` (finite ones only)."""
  out = {}
  for k in row:
    m = SEED_KEY.search(k)
    if m and k[:m.start()] == key and np.isfinite(value(row, k)):
      out[int(m.group(1))] = value(row, k)
  return out


def t_interval(values, level: float = LEVEL) -> tuple[float, float, float, float]:
  """(mean, standard error, lo, hi): Student-t interval of the mean of ``values``.

  se = sd / sqrt(n) with the n-1 sample sd; the half-width is
  t_{(1+level)/2, n-1} * se. NaN interval for n < 2.
  """
  v = np.asarray(values, float)
  if len(v) == 0:
    return (np.nan,) * 4
  mean = float(v.mean())
  if len(v) < 2:
    return mean, np.nan, np.nan, np.nan
  se = float(v.std(ddof=1) / math.sqrt(len(v)))
  half = float(stats.t.ppf((1 + level) / 2, len(v) - 1)) * se
  return mean, se, mean - half, mean + half


def seed_difference(row_b, key_b: str, row_a, key_a: str):
  """``row_b[key_b] - row_a[key_a]`` with a 95% interval; returns (est, se, lo, hi, n, method).

  Paired (preferred): both rows carry per-seed values (``<key>/seed<k>``) on
  the same labelled draws; the estimate is the mean over the common seeds of
  d_k = b_k - a_k, its variance var(d)/n, and the interval Student-t with
  n-1 degrees of freedom. Pairing removes the draw-to-draw variance the two
  accuracies share. Fallback (no per-seed values): the difference of the
  means with se = sqrt(se_a^2 + se_b^2) from ``<key>_stderr`` and a normal
  interval (the seed count, hence the t quantile, is unknown). It ignores the
  positive covariance of shared draws, which makes it conservative; with very
  few seeds the normal quantile works the other way.
  """
  sa, sb = seed_values(row_a, key_a), seed_values(row_b, key_b)
  common = sorted(set(sa) & set(sb))
  n = len(common)
  if n >= 2:
    mean, se, lo, hi = t_interval([sb[k] - sa[k] for k in common])
    return mean, se, lo, hi, n, f"paired over {n} seeds (t, {n - 1} df)"
  est = value(row_b, key_b) - value(row_a, key_a)
  se = math.hypot(value(row_a, f"{key_a}_stderr"), value(row_b, f"{key_b}_stderr"))
  if np.isfinite(se):
    half = float(stats.norm.ppf((1 + LEVEL) / 2)) * se
    return est, se, est - half, est + half, 0, "unpaired: sqrt(se_a^2 + se_b^2), normal"
  return est, np.nan, np.nan, np.nan, 0, "none: no per-seed values or standard errors"


@dataclasses.dataclass
class PairedEffect:
  """Checkpoint b against checkpoint a (b - a) for one accuracy.

  ``d_trace_se`` = sqrt(se_a^2 + se_b^2) treats the two trace estimates as
  independent; when they share evaluation batches or probe vectors their
  covariance is positive and the true se is smaller, so it is conservative.
  ``d_acc_lo``/``d_acc_hi``: 95% interval of the accuracy change, computed as
  ``acc_method`` says (see `seed_difference`).
  """
  experiment: str
  run: str
  accuracy: str        # downstream key; "" when the rows have no accuracy
  step_a: int
  step_b: int
  loss_gap_a: float    # nats / masked token
  loss_gap_b: float
  d_loss_gap: float
  trace_a: float       # nats / unit^2 of parameters
  trace_b: float
  d_trace: float
  d_trace_se: float
  d_trace_z: float     # d_trace / d_trace_se
  acc_a: float         # fraction of test sentences
  acc_b: float
  d_acc: float
  d_acc_se: float
  d_acc_lo: float
  d_acc_hi: float
  n_seeds: int         # seeds paired; 0 when unpaired
  acc_method: str


def compare(row_a, row_b, *, flatness: str = TRACE) -> list[PairedEffect]:
  """``row_b`` against ``row_a`` (any two rows): one `PairedEffect` per shared accuracy."""
  run = row_b["run"] if run_key(row_a) == run_key(row_b) else f"{row_a['run']} -> {row_b['run']}"
  ga, gb = value(row_a, GAP), value(row_b, GAP)
  ta, tb = value(row_a, flatness), value(row_b, flatness)
  se = math.hypot(value(row_a, f"{flatness}_stderr"), value(row_b, f"{flatness}_stderr"))
  z = (tb - ta) / se if se > 0 else np.nan
  common = dict(experiment=row_b.get("experiment", ""), run=run, step_a=int(row_a["step"]),
                step_b=int(row_b["step"]), loss_gap_a=ga, loss_gap_b=gb, d_loss_gap=gb - ga,
                trace_a=ta, trace_b=tb, d_trace=tb - ta, d_trace_se=se, d_trace_z=z)
  accs = sorted(set(measure_names([row_a])[1]) & set(measure_names([row_b])[1]))
  if not accs:
    return [PairedEffect(accuracy="", acc_a=np.nan, acc_b=np.nan, d_acc=np.nan, d_acc_se=np.nan,
                         d_acc_lo=np.nan, d_acc_hi=np.nan, n_seeds=0, acc_method="", **common)]
  out = []
  for a in accs:
    est, s, lo, hi, n, how = seed_difference(row_b, a, row_a, a)
    out.append(PairedEffect(accuracy=a, acc_a=value(row_a, a), acc_b=value(row_b, a), d_acc=est,
                            d_acc_se=s, d_acc_lo=lo, d_acc_hi=hi, n_seeds=n, acc_method=how,
                            **common))
  return out


def paired_effects(rows, *, tolerance: float | None = None,
                   flatness: str = TRACE) -> list[PairedEffect]:
  """Per run: its last checkpoint within tolerance against its first one (`compare`)."""
  out = []
  for key, run_rows in by_run(within_tolerance(rows, tolerance)).items():
    if len(run_rows) < 2:
      logging.info("paired_effects: run %s has %d checkpoint(s) within tolerance; skipped",
                   key[1], len(run_rows))
      continue
    out += compare(run_rows[0], run_rows[-1], flatness=flatness)
  return out


def lookup_key(accuracy: str) -> str:
  """``downstream/T/lookup_acc`` for an accuracy key ``downstream/T/<x>_acc``."""
  return accuracy.rsplit("/", 1)[0] + LOOKUP_SUFFIX


@dataclasses.dataclass
class LookupEffect:
  """One checkpoint's accuracy minus the lookup-table baseline's (same labelled draws)."""
  experiment: str
  run: str
  step: int
  accuracy: str
  loss_gap: float
  acc: float
  lookup: float
  diff: float          # acc - lookup (fraction of test sentences)
  se: float
  lo: float
  hi: float
  n_seeds: int
  method: str


def lookup_effects(rows, *, tolerance: float | None = None) -> list[LookupEffect]:
  """Every checkpoint within tolerance against the lookup table, per accuracy (paired by seed)."""
  out = []
  for r in within_tolerance(rows, tolerance):
    for a in measure_names([r])[1]:
      lk = lookup_key(a)
      if not np.isfinite(value(r, lk)):
        continue
      est, se, lo, hi, n, how = seed_difference(r, a, r, lk)
      out.append(LookupEffect(r.get("experiment", ""), r["run"], int(r["step"]), a,
                              value(r, GAP), value(r, a), value(r, lk), est, se, lo, hi, n, how))
  return out


# ----------------------------------------------------------------------------- seed summaries


@dataclasses.dataclass
class SeedStat:
  """Across-seed mean of one metric for one recipe (group) at one step.

  se = sd / sqrt(n_seeds); [lo, hi] is the 95% Student-t interval with
  n_seeds - 1 df. It covers everything that differs between pre-training
  seeds: initialisation and data order, curvature-estimate noise, probe noise.
  """
  experiment: str
  group: str
  step: int            # the step shared by all seeds; -1: each seed's final checkpoint
  at: str              # "step 1000" or "final (steps 900, 1000)"
  metric: str
  n_seeds: int
  mean: float
  se: float
  lo: float
  hi: float


@dataclasses.dataclass
class GroupDifference:
  """Recipe b minus recipe a at each seed's final checkpoint, for one metric.

  method "paired by seed": both recipes have the same seed indices (seed k of
  each shares what the seed fixes); mean and t-interval (n-1 df) of the
  per-seed differences. method "Welch": unequal-variance two-sample t-interval
  with Welch-Satterthwaite df.
  """
  experiment: str
  metric: str
  group_a: str
  group_b: str
  n_a: int
  n_b: int
  mean_a: float
  mean_b: float
  diff: float          # b - a, in the metric's units
  se: float
  df: float
  lo: float
  hi: float
  method: str


@dataclasses.dataclass
class SeedSummary:
  """What `seed_summary` returns: per-recipe statistics and between-recipe differences."""
  stats: list[SeedStat]
  differences: list[GroupDifference]


def welch_interval(a, b, level: float = LEVEL) -> tuple[float, float, float, float, float]:
  """(mean(b) - mean(a), se, df, lo, hi): Welch's t-interval of a difference of means.

  se^2 = s_a^2/n_a + s_b^2/n_b; df by Welch-Satterthwaite.
  """
  a, b = np.asarray(a, float), np.asarray(b, float)
  va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
  diff, se = float(b.mean() - a.mean()), float(math.sqrt(va + vb))
  if se == 0:
    return diff, 0.0, float(len(a) + len(b) - 2), diff, diff
  df = float((va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1)))
  half = float(stats.t.ppf((1 + level) / 2, df)) * se
  return diff, se, df, diff - half, diff + half


def _group_label(experiment, group, multi):
  return f"{experiment}/{group}" if multi and experiment else group


def seed_summary(rows, *, tolerance: float | None = None) -> SeedSummary:
  """Across-seed statistics of each recipe with >= 2 seeds, and differences between recipes.

  For each group: a `SeedStat` per metric (loss gap, flatness measures,
  accuracies) at every step that all its seeds reached within tolerance, and
  at each seed's final checkpoint when those steps differ. For each pair of
  such groups: a `GroupDifference` per metric at the final checkpoints.
  """
  rows = within_tolerance(rows, tolerance)
  flat, acc = measure_names(rows)
  metrics = [GAP] + flat + acc
  groups: dict[tuple[str, str], dict[tuple[str, str], list[dict]]] = {}
  for key, run_rows in by_run(rows).items():
    groups.setdefault((key[0], run_rows[0].get("group", key[1])), {})[key] = run_rows
  multi = len({e for e, _ in groups}) > 1
  out, finals = [], {}
  for (exp, group), runs in sorted(groups.items()):
    if len(runs) < 2:
      continue
    label = _group_label(exp, group, multi)
    seeds = {k: int(v[-1].get("seed", 0)) for k, v in runs.items()}
    if len(set(seeds.values())) < len(seeds):
      logging.warning("group %s: runs %s share seed indices %s", label, sorted(k[1] for k in runs),
                      sorted(seeds.values()))
    shared = sorted(set.intersection(*({r["step"] for r in v} for v in runs.values())))
    last = {k: v[-1] for k, v in runs.items()}
    points = [(s, f"step {s}", {k: next(r for r in v if r["step"] == s) for k, v in runs.items()})
              for s in shared]
    if not shared or any(r["step"] != shared[-1] for r in last.values()):
      points.append((-1, "final (steps " + ", ".join(str(s) for s in sorted(
          {r["step"] for r in last.values()})) + ")", last))
    for step, at, chosen in points:
      for m in metrics:
        vals = [value(r, m) for r in chosen.values() if np.isfinite(value(r, m))]
        if len(vals) >= 2:
          out.append(SeedStat(exp, label, step, at, m, len(vals), *t_interval(vals)))
    finals[label] = (exp, [(seeds[k], r) for k, r in last.items()])
  diffs = []
  for la, lb in itertools.combinations(sorted(finals), 2):
    (ea, fa), (eb, fb) = finals[la], finals[lb]
    exp = ea if ea == eb else f"{ea} vs {eb}"
    for m in metrics:
      va = [(s, value(r, m)) for s, r in fa if np.isfinite(value(r, m))]
      vb = [(s, value(r, m)) for s, r in fb if np.isfinite(value(r, m))]
      if len(va) < 2 or len(vb) < 2:
        continue
      xa, xb = [v for _, v in va], [v for _, v in vb]
      sa, sb = [s for s, _ in va], [s for s, _ in vb]
      # Pair only when each recipe has distinct seed indices and both have the same ones.
      if len(set(sa)) == len(sa) and sorted(sa) == sorted(sb):
        pa, pb = dict(va), dict(vb)
        d, se, lo, hi = t_interval([pb[s] - pa[s] for s in sorted(pa)])
        diffs.append(GroupDifference(exp, m, la, lb, len(xa), len(xb), float(np.mean(xa)),
                                     float(np.mean(xb)), d, se, float(len(xa) - 1), lo, hi,
                                     f"paired by seed ({len(xa)} seeds)"))
      else:
        d, se, df, lo, hi = welch_interval(xa, xb)
        diffs.append(GroupDifference(exp, m, la, lb, len(xa), len(xb), float(np.mean(xa)),
                                     float(np.mean(xb)), d, se, df, lo, hi, "Welch"))
  return SeedSummary(out, diffs)
