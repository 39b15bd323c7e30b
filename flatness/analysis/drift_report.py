"""The mechanism experiment's report: label-noise drift of tr(H) at the optimum.

Input: the run directories of `experiments/configs/mechanism.py` (each run's
``config.json`` gives its optimizer, learning rate eta, batch B and targets;
``metrics.jsonl`` its loss gap, tr(H) and probe accuracies per checkpoint). Runs
of one sweep entry (``group``) over pre-training seeds form an ARM.

Per arm (`arm_summary`):
  * the loss gap over all its checkpoints, in % of the exact optimum, and the
    fraction of checkpoints within the tolerance ("same loss");
  * tr(H) at the start and the end, and the change end - start: per seed on the
    same evaluation draws (paired; `measure_seed_per_run` gives each seed its own
    draws), then a Student-t interval over seeds, which covers the training
    sentences and masks, the evaluation batches and the probes;
  * the initial drift rate (`flatness.analysis.drift.drift_rate`): each seed's
    least-squares slope of tr(H) over its checkpoints up to ``window`` steps, in
    units of tr(H) per 1,000 steps, mean and t-interval over seeds; and that rate
    divided by eta^2 / B (per unit of eta^2 t / B), which the theory predicts is
    the same for every SGD arm;
  * the change of each probe accuracy from the start (one probe of the shared
    start checkpoint) to the arm's end, in points: per run the mean over probe
    seeds of end - start on the same labelled draws, then over runs; its standard
    error adds the start's own probe-seed error, shared by every run, to the
    across-run one (conservative: the pairing already removes part of it).

Across arms: `drift.rate_law` of the sampled-label SGD arms' rates on eta^2 / B;
`drift.collapse_fit`, one curve through all SGD arms' changes of tr(H) against
eta^2 t / B and against the alternative time variables (`drift.SCALINGS`);
`collapse_pairs`, arms at the same eta^2 / B and different eta / B, whose changes
of tr(H) the theory predicts equal (differences paired by seed index); the
exact-target arm's rate (predicted 0) against the sampled-label arm with the
same eta and B (paired by seed), and Spearman's correlation over runs between the
change of tr(H) and the change of each accuracy, raw and with the run's mean loss
gap partialled out (percentile bootstrap over runs).

Also per arm, the change of each parameter block's share of tr(H) (embedding,
each layer, head), the same way.

Files: ``drift.md`` (the tables, with what each interval covers), ``drift.csv``
(one row per arm), ``figures/collapse.png`` (the change of tr(H) from the start,
paired per seed, against steps and against eta^2 t / B, and the loss gap),
``figures/rate_law.png``.
"""
import csv
import dataclasses
import json
import math
import os

import numpy as np
from absl import logging
from scipy import stats

from flatness.analysis import correlation as analysis
from flatness.analysis import drift
from flatness.analysis import report

RATE_UNIT = 1000          # rates are reported per this many steps


@dataclasses.dataclass(frozen=True)
class Arm:
  """One sweep entry over its pre-training seeds."""
  group: str
  optimizer: str
  targets: str
  lr: float
  batch: int
  runs: tuple[str, ...]                 # run names, by seed
  seeds: tuple[int, ...] = ()           # their pre-training seeds

  @property
  def noise_scale(self) -> float:
    """eta^2 / B: the theory's drift rate per step, up to a constant (SGD only)."""
    return self.lr ** 2 / self.batch if self.optimizer == "sgd" else math.nan

  @property
  def label(self) -> str:
    if self.optimizer != "sgd":
      return f"{self.group} ({self.optimizer}, {self.targets} targets)"
    return f"{self.group}"


def read_arms(workdirs) -> list[Arm]:
  """Arms from the runs' ``config.json``, in the order their groups first appear."""
  by_group: dict[str, list] = {}
  for w in workdirs:
    with open(os.path.join(w, "config.json")) as f:
      c = json.load(f)
    key = (c["group"] or c["name"], c["optimizer"]["name"], c["targets"],
           float(c["optimizer"]["learning_rate"]), int(c["train"]["batch_size"]))
    by_group.setdefault(key, []).append((int(c["seed"]), c["name"]))
  arms = [Arm(*key, runs=tuple(n for _, n in sorted(runs)),
              seeds=tuple(k for k, _ in sorted(runs))) for key, runs in by_group.items()]
  # Sampled-label SGD by (eta, B), then the exact-target arms, then the other optimizers.
  return sorted(arms, key=lambda a: (a.optimizer != "sgd", a.targets == "exact", a.lr, a.batch))


@dataclasses.dataclass(frozen=True)
class Interval:
  mean: float
  se: float
  lo: float
  hi: float

  @classmethod
  def over(cls, values) -> "Interval":
    return cls(*analysis.t_interval(values))

  def text(self, fmt: str = "{:+.1f}") -> str:
    if not np.isfinite(self.lo):
      return fmt.format(self.mean)
    return f"{fmt.format(self.mean)} [{fmt.format(self.lo)}, {fmt.format(self.hi)}]"


@dataclasses.dataclass(frozen=True)
class ArmSummary:
  arm: Arm
  seeds: tuple[int, ...]                # the seeds of the runs below, in order
  gap_pct: tuple[float, float]          # min, max over seeds and checkpoints (% of optimum)
  within: float                         # fraction of checkpoints within the tolerance
  trace_start: Interval
  trace_end: Interval
  d_trace: Interval                     # end - start, paired per seed
  rate: drift.DriftRate                 # tr(H) per step, first `window` steps
  accuracy: dict                        # task -> Interval of end - start (points)
  steps: tuple[int, ...]                # checkpoint steps of the curve
  change_curve: tuple[Interval, ...]    # tr(H) minus its step-0 value, paired per seed
  per_seed_change: tuple[tuple[float, ...], ...]   # [seed][step index] of that change
  gap_curve: tuple[float, ...]          # mean loss gap per step (% of optimum)
  d_modules: dict                       # module -> Interval of its trace's end - start


def _series(rows, key):
  steps = [r["step"] for r in rows if np.isfinite(analysis.value(r, key))]
  vals = [analysis.value(r, key) for r in rows if np.isfinite(analysis.value(r, key))]
  return np.asarray(steps), np.asarray(vals)


def _gap_pct(r) -> float:
  return 100 * analysis.value(r, analysis.GAP) / analysis.value(r, "eval/optimal_loss")


def _accuracy_keys(rows) -> list[str]:
  return [k for k in analysis.measure_names(rows)[1] if k.endswith("/probe_acc")]


def _start_probe(rows):
  """The probed step-0 row. The report assumes one start for every arm (the mechanism
  experiment's ``phase1_seed``): the step-0 probe of any run is every run's start."""
  starts = [r for r in rows if r["step"] == 0 and _accuracy_keys([r])]
  return starts[0] if starts else None


def _accuracy_change(run_rows, start, key) -> Interval:
  """End - start of ``key`` in points over the arm's runs (see the module docstring)."""
  if start is None:
    return Interval(math.nan, math.nan, math.nan, math.nan)
  s = analysis.seed_values(start, key)
  per_run = []
  for rows in run_rows:
    probed = [r for r in rows if analysis.seed_values(r, key) and r["step"] > 0]
    if probed:
      diff = analysis.seed_difference(probed[-1], key, start, key)[0]   # paired over seeds
      if np.isfinite(diff):
        per_run.append(100 * diff)
  if not per_run:
    return Interval(math.nan, math.nan, math.nan, math.nan)
  mean, se_runs, _, _ = analysis.t_interval(per_run)
  start_vals = 100 * np.asarray(list(s.values()))
  se_start = start_vals.std(ddof=1) / math.sqrt(len(start_vals)) if len(start_vals) > 1 else 0
  se = math.hypot(se_runs, se_start) if np.isfinite(se_runs) else math.nan
  half = float(stats.t.ppf(0.5 + analysis.LEVEL / 2, max(len(per_run) - 1, 1))) * se
  return Interval(float(mean), se, mean - half, mean + half)


def _curves(arm: Arm, by_run: dict, window: float):
  """(seeds, curves): the runs with tr(H) at step 0 and at >= 2 steps within ``window``
  (others, e.g. runs still being measured, are left out with a warning)."""
  seeds, curves = [], []
  for seed, name in zip(arm.seeds, arm.runs):
    steps, values = _series(by_run.get(name, []), analysis.TRACE)
    if len(steps) and steps[0] == 0 and np.sum(steps <= window) >= 2:
      seeds.append(seed)
      curves.append((steps, values))
    else:
      logging.warning("drift report: run %s left out (tr(H) not measured at step 0 and at "
                      "two steps <= %g)", name, window)
  return tuple(seeds), curves


def _module_changes(run_rows) -> dict:
  """Per parameter block (`hessian.module_of`: embed, layer_<i>, head, ...), the change of
  its share of tr(H) from step 0 to the run's last measured step, t-interval over runs."""
  prefix = analysis.TRACE + "/"
  modules = sorted({k[len(prefix):] for rows in run_rows for r in rows for k in r
                    if k.startswith(prefix) and "/" not in k[len(prefix):]})
  out = {}
  for m in modules:
    changes = []
    for rows in run_rows:
      steps, values = _series(rows, prefix + m)
      if len(steps) and steps[0] == 0:
        changes.append(values[-1] - values[0])
    out[m] = Interval.over(changes)
  return out


def arm_summary(arm: Arm, by_run: dict, *, window: float, tolerance: float | None,
                start=None) -> ArmSummary:
  run_rows = [by_run[r] for r in arm.runs if r in by_run]
  seeds, curves = _curves(arm, by_run, window)
  if not curves:
    raise ValueError(f"drift report: arm {arm.group} has no run with tr(H) at step 0 and at "
                     f"two steps <= {window:g}; measure its checkpoints or widen the window")
  gaps = [_gap_pct(r) for rows in run_rows for r in rows if np.isfinite(_gap_pct(r))]
  within = [analysis.value(r, analysis.GAP) <= tolerance for rows in run_rows for r in rows
            if tolerance is not None and np.isfinite(analysis.value(r, analysis.GAP))]
  steps = sorted({int(s) for st, _ in curves for s in st})
  per_seed = np.array([[v[list(st).index(x)] - v[0] if x in st else np.nan for x in steps]
                       for st, v in curves])                     # [seed, step]
  gap_at = [np.nanmean([_gap_pct(r) for rows in run_rows for r in rows if r["step"] == s])
            for s in steps]
  accs = {k.split("/")[1]: _accuracy_change(run_rows, start, k)
          for k in _accuracy_keys([start] if start else [])}
  return ArmSummary(
      arm=arm, seeds=seeds, gap_pct=(min(gaps, default=math.nan), max(gaps, default=math.nan)),
      within=float(np.mean(within)) if within else math.nan,
      trace_start=Interval.over([v[0] for _, v in curves]),
      trace_end=Interval.over([v[-1] for _, v in curves]),
      d_trace=Interval.over([v[-1] - v[0] for _, v in curves]),
      rate=drift.drift_rate(curves, window=window), accuracy=accs, steps=tuple(steps),
      change_curve=tuple(Interval.over(col[np.isfinite(col)]) for col in per_seed.T),
      per_seed_change=tuple(tuple(float(x) for x in row) for row in per_seed),
      gap_curve=tuple(gap_at),
      d_modules=_module_changes([by_run[arm.runs[arm.seeds.index(k)]] for k in seeds]))


def _scaled(rate: drift.DriftRate, scale: float = RATE_UNIT) -> Interval:
  return Interval(rate.rate * scale, rate.stderr * scale, rate.lo * scale, rate.hi * scale)


@dataclasses.dataclass(frozen=True)
class Control:
  """The exact-target arm against the sampled-label arm with the same eta and B."""
  exact: str
  sampled: str
  difference: Interval                  # rate (exact - sampled) per RATE_UNIT steps, paired


def _by_seed(a: "ArmSummary", b: "ArmSummary", values_a, values_b):
  """(a's value, b's value) for each seed both arms have, in seed order."""
  ia, ib = dict(zip(a.seeds, values_a)), dict(zip(b.seeds, values_b))
  return [(ia[k], ib[k]) for k in sorted(set(ia) & set(ib))]


def controls(summaries) -> list[Control]:
  out = []
  for e in summaries:
    if e.arm.targets != "exact":
      continue
    for s in summaries:
      a, b = e.arm, s.arm
      if (b.targets != "exact" and (b.optimizer, b.lr, b.batch) == (a.optimizer, a.lr, a.batch)):
        d = [RATE_UNIT * (x - y) for x, y in _by_seed(e, s, e.rate.per_run, s.rate.per_run)]
        out.append(Control(a.group, b.group, Interval.over(d)))
  return out


@dataclasses.dataclass(frozen=True)
class Pair:
  """Two sampled-label SGD arms with the same eta^2 / B and different eta / B."""
  a: str
  b: str
  noise_scale: float
  step: int                             # the last step both measured
  d_change: Interval                    # change of tr(H) a - b at ``step``, paired by seed
  d_rate: Interval                      # initial rate a - b per RATE_UNIT steps, by seed


def collapse_pairs(summaries) -> list[Pair]:
  """The collapse's direct test: arms at equal eta^2 / B should drift alike. Seed k of
  both arms measures on the same evaluation draws, so differences pair by seed index."""
  sgd = [s for s in summaries if s.arm.optimizer == "sgd" and s.arm.targets != "exact"]
  out = []
  for i, a in enumerate(sgd):
    for b in sgd[i + 1:]:
      if not math.isclose(a.arm.noise_scale, b.arm.noise_scale, rel_tol=1e-9):
        continue
      step = max(set(a.steps) & set(b.steps))
      ia, ib = a.steps.index(step), b.steps.index(step)
      changes = _by_seed(a, b, [c[ia] for c in a.per_seed_change],
                         [c[ib] for c in b.per_seed_change])
      rates = _by_seed(a, b, a.rate.per_run, b.rate.per_run)
      out.append(Pair(a.arm.group, b.arm.group, a.arm.noise_scale, step,
                      Interval.over([x - y for x, y in changes if np.isfinite(x - y)]),
                      Interval.over([RATE_UNIT * (x - y) for x, y in rates])))
  return out


@dataclasses.dataclass(frozen=True)
class Correlation:
  """Spearman over runs of the change of tr(H) and the change of one accuracy."""
  rho: float
  lo: float
  hi: float
  partial: float                        # with the run's mean loss gap partialled out
  partial_lo: float
  partial_hi: float
  runs: int


@dataclasses.dataclass(frozen=True)
class DriftAnalysis:
  summaries: list[ArmSummary]
  law: drift.RateLaw | None             # over the sampled-label SGD arms
  law_arms: list[ArmSummary]
  controls: list[Control]
  pairs: list[Pair]
  collapse: list[drift.CollapseFit]     # one per drift.SCALINGS, sampled-label SGD arms
  correlations: dict                    # task -> Correlation
  window: float
  tolerance: float | None
  tolerance_pct: float                  # the tolerance in % of the mean exact optimum


def _correlations(summaries, by_run, start) -> dict:
  """Spearman over runs of (change of tr(H), change of accuracy), raw and partial on the
  run's mean loss gap after the start (larger eta / B holds the model further from the
  optimum, which alone can move accuracy); percentile bootstrap over runs."""
  out = {}
  if start is None:
    return out
  for key in _accuracy_keys([start]):
    s = analysis.value(start, key)
    xs, ys, gaps = [], [], []
    for summ in summaries:
      for name in summ.arm.runs:
        rows = by_run.get(name, [])
        _, tr = _series(rows, analysis.TRACE)
        probed = [r for r in rows if r["step"] > 0 and np.isfinite(analysis.value(r, key))]
        if len(tr) and probed:
          xs.append(tr[-1] - tr[0])
          ys.append(100 * (analysis.value(probed[-1], key) - s))
          gaps.append(np.nanmean([_gap_pct(r) for r in rows if r["step"] > 0]))
    if len(xs) >= analysis.MIN_RUNS_FOR_INTERVAL:
      x, y, g = np.asarray(xs), np.asarray(ys), np.asarray(gaps)
      out[key.split("/")[1]] = Correlation(
          analysis.spearman(x, y), *analysis.bootstrap(analysis.spearman, (x, y)),
          analysis.partial_spearman(x, y, g),
          *analysis.bootstrap(analysis.partial_spearman, (x, y, g)), len(xs))
  return out


def analyze(workdirs, *, window: float, tolerance: float | None,
            rows=None) -> DriftAnalysis:
  """The drift analysis of the runs in ``workdirs`` (``rows``: their `analysis.gather`,
  when the caller has read them already)."""
  rows = analysis.gather(workdirs) if rows is None else rows
  by_run = {}
  for r in rows:
    by_run.setdefault(r["run"], []).append(r)
  by_run = {k: sorted(v, key=lambda r: r["step"]) for k, v in by_run.items()}
  start = _start_probe(rows)
  summaries = [arm_summary(a, by_run, window=window, tolerance=tolerance, start=start)
               for a in read_arms(workdirs)]
  law_arms = [s for s in summaries if s.arm.optimizer == "sgd" and s.arm.targets != "exact"]
  law = None
  if len({s.arm.noise_scale for s in law_arms}) >= 2 and len(law_arms) >= 3:
    law = drift.rate_law([s.arm.noise_scale for s in law_arms],
                         [s.rate.rate * RATE_UNIT for s in law_arms])
  optimum = np.nanmean([analysis.value(r, "eval/optimal_loss") for r in rows] or [np.nan])
  tol_pct = 100 * tolerance / optimum if tolerance is not None else np.nan
  fits = []
  if len(law_arms) >= 2:
    curves = [(s.steps, [c.mean for c in s.change_curve], s.arm.lr, s.arm.batch)
              for s in law_arms]
    for name in drift.SCALINGS:
      try:
        fits.append(drift.collapse_fit(curves, name))
      except (ValueError, RuntimeError) as e:     # too few points, or no convergence
        logging.warning("drift report: no collapse fit in %s: %s", name, e)
  return DriftAnalysis(summaries, law, law_arms, controls(summaries), collapse_pairs(summaries),
                       fits,
                       _correlations(summaries, by_run, start), window, tolerance, tol_pct)


# ----------------------------------------------------------------------------- writing


def _fmt(v, spec="{:.3g}") -> str:
  return spec.format(v) if np.isfinite(v) else "n/a"


def arms_table(a: DriftAnalysis) -> str:
  head = ["arm", "eta", "B", "eta/B", "eta^2/B", "loss gap, % of optimum (min-max)",
          "within tol.", "tr(H) start", "tr(H) end", "change end - start",
          f"initial rate per {RATE_UNIT} steps", "rate / (eta^2/B), per unit of eta^2 t/B"]
  rows = []
  for s in a.summaries:
    arm, scale = s.arm, s.arm.noise_scale
    per_s = (Interval(*(np.asarray([s.rate.rate, s.rate.stderr, s.rate.lo, s.rate.hi]) / scale))
             if np.isfinite(scale) else None)
    cells = [arm.label, f"{arm.lr:g}", str(arm.batch),
             _fmt(arm.lr / arm.batch, "{:.2e}") if arm.optimizer == "sgd" else "",
             _fmt(scale, "{:.2e}") if np.isfinite(scale) else "",
             f"{s.gap_pct[0]:.2f}-{s.gap_pct[1]:.2f}",
             f"{100 * s.within:.0f}%" if np.isfinite(s.within) else "",
             s.trace_start.text("{:.1f}"), s.trace_end.text("{:.1f}"), s.d_trace.text(),
             _scaled(s.rate).text("{:+.2f}"), per_s.text("{:+.0f}") if per_s else ""]
    rows.append(cells)
  return report.markdown(head, rows).rstrip("\n")


def law_text(a: DriftAnalysis) -> str:
  if a.law is None:
    return "No rate law: fewer than 3 sampled-label SGD arms with distinct eta^2 / B.\n"
  law = a.law
  lines = [f"Least squares over {len(a.law_arms)} sampled-label SGD arms of the initial rate "
           f"(tr(H) per {RATE_UNIT} steps) on x = eta^2 / B:", "",
           f"* slope {law.slope:+.4g} +- {law.slope_stderr:.2g} (tr(H) per {RATE_UNIT} steps "
           f"per unit of eta^2 / B; that is, {law.slope / RATE_UNIT:+.1f} +- "
           f"{law.slope_stderr / RATE_UNIT:.1f} tr(H) per unit of eta^2 t / B)",
           f"* intercept {law.intercept:+.3f} +- {law.intercept_stderr:.3f} "
           "(predicted 0)", f"* R^2 {law.r2:.3f}", "",
           "| arm | eta^2/B | rate | fitted | residual |", "|---|---|---|---|---|"]
  for s, res in zip(a.law_arms, law.residuals):
    r = s.rate.rate * RATE_UNIT
    lines.append(f"| {s.arm.group} | {s.arm.noise_scale:.2e} | {r:+.2f} | {r - res:+.2f} | "
                 f"{res:+.2f} |")
  return "\n".join(lines) + "\n"


def modules_table(a: DriftAnalysis) -> str:
  modules = sorted({m for s in a.summaries for m in s.d_modules})
  head = ["arm", "tr(H)"] + modules
  return report.markdown(head, [[s.arm.label, s.d_trace.text()] + [
      s.d_modules[m].text() if m in s.d_modules else "" for m in modules]
                                for s in a.summaries]).rstrip("\n")


def accuracy_table(a: DriftAnalysis) -> str:
  tasks = sorted({t for s in a.summaries for t in s.accuracy})
  if not tasks:
    return "No probes at both ends (analysis.probe).\n"
  head = ["arm", "change of tr(H)"] + [f"{t} probe, points" for t in tasks]
  return report.markdown(head, [[s.arm.label, s.d_trace.text()] + [
      s.accuracy[t].text() if t in s.accuracy else "" for t in tasks]
                                for s in a.summaries]).rstrip("\n")


def markdown(a: DriftAnalysis) -> str:
  tol = ("" if a.tolerance is None else
         f" Within tol.: the share of checkpoints (all seeds) whose loss gap is within the "
         f"tolerance, {a.tolerance:g} nats ({a.tolerance_pct:.2f}% of the mean exact optimum).")
  parts = [
      "# Label-noise drift at the optimum", "",
      "Per arm over its pre-training seeds (every run starts from the same converged "
      "checkpoint). tr(H): mean over seeds [95% Student-t interval over seeds]; each seed "
      "measures every checkpoint on the same evaluation batches and probes, its own per "
      "seed, so the interval covers training sentences and masks, evaluation batches and "
      f"probes. Initial rate: each seed's least-squares slope of tr(H) over checkpoints at "
      f"steps <= {a.window:g}, then over seeds.{tol}", "", arms_table(a), "", "## Rate law", "",
      law_text(a)]
  parts += ["## Where tr(H) changes", "",
            "Each parameter block's share of tr(H): change from the start to the last "
            "checkpoint, mean over seeds [95% t-interval].", "", modules_table(a), ""]
  if a.collapse:
    parts += ["## The collapse, quantified", "",
              "One curve, change = -A log(1 + x / x0), through the seed-mean change of tr(H) "
              f"at every checkpoint after the start of all {len(a.law_arms)} sampled-label SGD "
              "arms, with x each arm's steps rescaled as named. The curve's two parameters "
              "absorb any constant factor, so the scalings compete on how well the arms fall "
              "on one curve. The theory's is eta^2 t / B.", "",
              "| time variable | A | x0 | R^2 | rms residual | points |", "|---|---|---|---|---|---|"]
    for f in a.collapse:
      parts.append(f"| {f.scaling} | {f.amplitude:.1f} | {f.scale:.3g} | {f.r2:.3f} | "
                   f"{f.rms:.2f} | {f.num_points} |")
    parts.append("")
  if a.pairs:
    parts += ["## The collapse: arms with the same eta^2 / B", "",
              "Differences a - b, paired by seed index (seed k of both arms measures on the "
              "same evaluation draws); 95% t-intervals over seeds. The theory predicts 0.", ""]
    for p in a.pairs:
      parts.append(f"* {p.a} - {p.b} (eta^2/B {p.noise_scale:.2e}): change of tr(H) at step "
                   f"{p.step} {p.d_change.text()}; initial rate "
                   f"{p.d_rate.text('{:+.2f}')} per {RATE_UNIT} steps")
    parts.append("")
  if a.controls:
    parts += ["## Exact targets (no label noise)", ""]
    for c in a.controls:
      parts.append(f"* {c.exact} - {c.sampled}: rate difference {c.difference.text('{:+.2f}')} "
                   f"per {RATE_UNIT} steps (paired by seed)")
    parts.append("")
  parts += ["## Downstream: end - start", "",
            "Probe accuracy change from the shared start to each arm's last checkpoint, in "
            "points: per run the mean over probe seeds on the same labelled draws, then a "
            "t-interval over runs whose standard error also carries the start's probe-seed "
            "error.", "", accuracy_table(a), ""]
  for task, c in a.correlations.items():
    parts.append(f"* Spearman over {c.runs} runs, change of tr(H) vs change of {task} "
                 f"accuracy: {c.rho:+.2f} [{c.lo:+.2f}, {c.hi:+.2f}]; with the run's mean "
                 f"loss gap partialled out {c.partial:+.2f} [{c.partial_lo:+.2f}, "
                 f"{c.partial_hi:+.2f}] (bootstrap over runs)")
  return "\n".join(parts) + "\n"


def write_csv(a: DriftAnalysis, path: str) -> None:
  tasks = sorted({t for s in a.summaries for t in s.accuracy})
  with open(path, "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["arm", "optimizer", "targets", "lr", "batch", "noise_scale", "gap_pct_min",
                "gap_pct_max", "within", "trace_start", "trace_end", "d_trace", "d_trace_lo",
                "d_trace_hi", "rate", "rate_stderr", "rate_lo", "rate_hi"]
               + [f"d_{t}_acc{x}" for t in tasks for x in ("", "_lo", "_hi")])
    for s in a.summaries:
      r = s.arm
      w.writerow([r.group, r.optimizer, r.targets, r.lr, r.batch, r.noise_scale, *s.gap_pct,
                  s.within, s.trace_start.mean, s.trace_end.mean, s.d_trace.mean, s.d_trace.lo,
                  s.d_trace.hi, s.rate.rate, s.rate.stderr, s.rate.lo, s.rate.hi]
                 + [getattr(s.accuracy.get(t), x, math.nan) if t in s.accuracy else math.nan
                    for t in tasks for x in ("mean", "lo", "hi")])


def write(workdirs, out_dir: str, *, window: float, tolerance: float | None,
          rows=None) -> dict[str, str]:
  """Analyses the runs and writes the files of the module docstring; returns their paths."""
  # Imported here: drift_figures imports this module.
  from flatness.analysis import drift_figures  # pylint: disable=g-import-not-at-top
  a = analyze(workdirs, window=window, tolerance=tolerance, rows=rows)
  os.makedirs(os.path.join(out_dir, "figures"), exist_ok=True)
  paths = dict(drift=os.path.join(out_dir, "drift.md"),
               drift_csv=os.path.join(out_dir, "drift.csv"),
               collapse=os.path.join(out_dir, "figures", "collapse.png"),
               rate_law=os.path.join(out_dir, "figures", "rate_law.png"))
  with open(paths["drift"], "w") as f:
    f.write(markdown(a))
  write_csv(a, paths["drift_csv"])
  drift_figures.collapse(a, paths["collapse"])
  drift_figures.rate_law(a, paths["rate_law"])
  return paths
