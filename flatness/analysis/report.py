"""Writes the analysis of many runs: CSV and Markdown tables, a report, PNG figures.

Files under ``out_dir``:

  table.csv, table.md          one row per (run, checkpoint step): loss gap, flatness
                               measures, downstream accuracies
  correlations.csv             every `flatness.analysis.correlation.Correlation`
  paired_effects.csv           `analysis.paired_effects`: last vs first checkpoint per run
  lookup_effects.csv           `analysis.lookup_effects`: each checkpoint vs the lookup table
  seed_summary.csv, group_differences.csv   `analysis.seed_summary`
  report.md                    all tables in Markdown, each with what its intervals cover
  figures/loss_gap.png         loss gap vs step per run, the tolerance band shaded
  figures/trace.png            tr(H) +- s.e. vs step per run (and the enlarged model's)
  figures/flatness.png         the other flatness measures +- s.e. vs step (when present)
  figures/accuracy.png         per task: probe accuracy [95% interval] vs step per run, the
                               lookup-table baseline dashed
  figures/accuracy_vs_trace.png  per task: accuracy against tr(H), both with error bars,
                               coloured by loss gap
  figures/seeds.png            across-seed mean [95% t-interval] vs step per recipe (when
                               some recipe has >= 2 seeds)

Axes are labelled in words with units (`label`), never with metric tags.
"""
import csv
import dataclasses
import math
import os
import re
import textwrap

import matplotlib
matplotlib.use("Agg")   # files only; no display on TPU VMs and CI
import matplotlib.lines  # pylint: disable=g-import-not-at-top
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top

from flatness.analysis import correlation as analysis  # pylint: disable=g-import-not-at-top

_BASE = ("run", "experiment", "group", "seed", "num_params", "step", "eval/loss_gap",
         "eval/expected_ce")
_CURV = "nats / unit² of parameters"
LABELS = {
    "step": "pre-training step",
    "num_params": "parameters",
    "eval/loss_gap": "loss gap to the exact optimum (nats / masked token)",
    "eval/expected_ce": "expected cross-entropy (nats / masked token)",
    "eval/loss": "evaluation loss (nats / masked token)",
    "curvature/loss": "loss on the curvature set (nats / masked token)",
    "curvature/trace": f"Hessian trace tr(H) ({_CURV})",
    "curvature/trace_enlarged": f"Hessian trace of the enlarged model ({_CURV})",
    "curvature/top_eigenvalue": f"largest Hessian eigenvalue ({_CURV})",
    "curvature/fisher": f"Fisher trace tr(F) ({_CURV})",
    "curvature/ggn": f"Gauss-Newton trace tr(G) ({_CURV})",
    "curvature/sharpness": "worst-case sharpness (nats)",
    "curvature/sharpness_adaptive": "adaptive worst-case sharpness (nats)",
    "curvature/sharpness_avg": "average-case sharpness (nats)",
}
_ACC_WORDS = {"probe_acc": "linear-probe accuracy", "finetune_acc": "fine-tuned accuracy",
              "lookup_acc": "lookup-table accuracy"}
_ACC_UNIT = "fraction of test sentences"


def label(tag: str) -> str:
  """Axis label in words with units for a metric tag."""
  if tag in LABELS:
    return LABELS[tag]
  m = re.fullmatch(r"downstream/(.+)/(probe_acc|finetune_acc|lookup_acc)", tag)
  if m:
    return f"{_ACC_WORDS[m.group(2)]} on task {m.group(1)} ({_ACC_UNIT})"
  return tag.rsplit("/", 1)[-1].replace("_", " ")


def _short(tag: str) -> str:
  return tag.replace("downstream/", "").replace("curvature/", "").replace("eval/", "")


def table_columns(rows) -> list[str]:
  flat, acc = analysis.measure_names(rows)
  extra = sorted({k for r in rows for k in r if k.endswith(analysis.LOOKUP_SUFFIX)})
  return [c for c in _BASE if any(c in r for r in rows)] + flat + acc + extra


def _fmt(v) -> str:
  if isinstance(v, (float, np.floating)):
    return "" if math.isnan(v) else f"{v:.4g}"
  return str(v)


def _ci(lo, hi) -> str:
  return "" if not (np.isfinite(lo) and np.isfinite(hi)) else f"[{lo:.3g}, {hi:.3g}]"


def markdown(header, rows) -> str:
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]
  return "\n".join(lines) + "\n"


def _write_csv(path, header, rows):
  with open(path, "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(header)
    w.writerows([[_fmt(v) for v in row] for row in rows])


def _dataclass_csv(path, cls, items):
  cols = [f.name for f in dataclasses.fields(cls)]
  _write_csv(path, cols, [[getattr(c, k) for k in cols] for c in items])


# ----------------------------------------------------------------------------- Markdown


def _tolerance_words(tolerance) -> str:
  return ("all checkpoints" if tolerance is None
          else f"checkpoints with loss gap <= {tolerance} nats / masked token")


def _correlation_section(correlations, tolerance) -> str:
  text = (f"Spearman's rho (Kendall's tau for `all` and `size=`) over "
          f"{_tolerance_words(tolerance)}. "
          "`partial_gap` correlates the ranks of both variables after regressing out the rank of "
          "the loss gap; `partial_size` the same for the parameter count, `partial_gap_size` for "
          "both; `within_size` pools ranks taken within each size, `size=<n>` is one size. The "
          "95% interval is a percentile bootstrap over runs (whole runs resampled with their "
          "checkpoints), so it covers run-to-run variation; with few runs it is too narrow. It "
          f"is blank when fewer than {analysis.MIN_RUNS_FOR_INTERVAL} runs are present, because "
          "checkpoints of one run are autocorrelated and give no honest interval.\n\n")
  rows = [[_short(c.flatness), _short(c.accuracy), c.scope, c.n, c.n_runs, c.spearman,
           _ci(c.spearman_lo, c.spearman_hi), c.kendall, c.interval, c.note]
          for c in correlations]
  return text + markdown(["flatness", "accuracy", "scope", "n", "runs", "rho", "95% interval",
                          "tau", "interval", "note"], rows)


def _paired_section(effects) -> str:
  text = ("Last checkpoint within tolerance minus the first, per run. Trace change: "
          "s.e. = sqrt(se_a² + se_b²) of the two estimates (conservative: estimates sharing "
          "evaluation batches covary positively), z = change / s.e. Accuracy change: mean of "
          "per-seed paired differences (the same labelled draws at both checkpoints) with its 95% "
          "Student-t interval, which covers probe-seed noise at these two fixed checkpoints, not "
          "pre-training-seed variation; `method` says when the unpaired fallback was used.\n\n")
  per_run = {(e.experiment, e.run): e for e in effects}
  out = text + markdown(["run", "steps", "Δ loss gap", "Δ trace", "s.e.", "z"],
                        [[e.run, f"{e.step_a} -> {e.step_b}", e.d_loss_gap, e.d_trace,
                          e.d_trace_se, e.d_trace_z] for e in per_run.values()])
  acc = [[e.run, f"{e.step_a} -> {e.step_b}", _short(e.accuracy), e.acc_a, e.acc_b, e.d_acc,
          _ci(e.d_acc_lo, e.d_acc_hi), e.acc_method] for e in effects if e.accuracy]
  if acc:
    out += "\n" + markdown(["run", "steps", "accuracy", "acc a", "acc b", "Δ acc", "95% interval",
                            "method"], acc)
  return out


def _lookup_section(effects) -> str:
  last = {}
  for e in effects:   # the last checkpoint of each run, per accuracy
    k = (e.experiment, e.run, e.accuracy)
    if k not in last or e.step > last[k].step:
      last[k] = e
  text = ("Accuracy minus the lookup-table baseline at the last checkpoint within tolerance of "
          "each run (every checkpoint in lookup_effects.csv): mean of per-seed differences on the "
          "same labelled draws, 95% Student-t interval over probe seeds.\n\n")
  rows = [[e.run, e.step, _short(e.accuracy), e.acc, e.lookup, e.diff, _ci(e.lo, e.hi), e.method]
          for e in last.values()]
  return text + markdown(["run", "step", "accuracy", "acc", "lookup", "acc - lookup",
                          "95% interval", "method"], rows)


def _seed_section(summary: analysis.SeedSummary) -> str:
  if not summary.stats:
    return "No recipe has two or more pre-training seeds.\n"
  last = {}
  for s in summary.stats:   # the last shared step (or the final checkpoints) per group
    k = (s.experiment, s.group)
    rank = math.inf if s.step < 0 else s.step
    if k not in last or rank > last[k][0]:
      last[k] = (rank, s.at)
  text = ("Across-seed mean of each recipe at its last step shared by all seeds (every step in "
          "seed_summary.csv); s.e. = sd / sqrt(seeds), 95% Student-t interval with seeds - 1 df. "
          "It covers everything that differs between pre-training seeds (initialisation, data "
          "order, curvature-estimate and probe noise).\n\n")
  rows = [[s.group, s.at, _short(s.metric), s.n_seeds, s.mean, s.se, _ci(s.lo, s.hi)]
          for s in summary.stats if last[(s.experiment, s.group)][1] == s.at]
  out = text + markdown(["group", "at", "metric", "seeds", "mean", "s.e.", "95% interval"], rows)
  if summary.differences:
    out += ("\nDifference between recipes (b - a) at each seed's final checkpoint: paired by "
            "seed index when both recipes have the same seeds (t-interval of per-seed "
            "differences), otherwise Welch's unequal-variance t-interval; it covers "
            "pre-training-seed variation.\n\n")
    out += markdown(["a", "b", "metric", "n_a", "n_b", "mean a", "mean b", "b - a", "s.e.", "df",
                     "95% interval", "method"],
                    [[d.group_a, d.group_b, _short(d.metric), d.n_a, d.n_b, d.mean_a, d.mean_b,
                      d.diff, d.se, d.df, _ci(d.lo, d.hi), d.method]
                     for d in summary.differences])
  return out


def summary(rows, correlations, *, tolerance=None, effects=None, lookups=None,
            seeds=None) -> str:
  """The analysis tables in Markdown (what report.md holds before the checkpoint table)."""
  effects = analysis.paired_effects(rows, tolerance=tolerance) if effects is None else effects
  lookups = analysis.lookup_effects(rows, tolerance=tolerance) if lookups is None else lookups
  seeds = analysis.seed_summary(rows, tolerance=tolerance) if seeds is None else seeds
  kept = analysis.within_tolerance(rows, tolerance)
  exps = sorted({r.get("experiment") or "" for r in rows} - {""})
  no_gap = sum(not np.isfinite(analysis.value(r, analysis.GAP)) for r in rows)
  head = ("Experiment " + ", ".join(exps) + ": " if exps else "") + (
      f"{analysis.plural(len({analysis.run_key(r) for r in rows}), 'run')}, "
      f"{analysis.plural(len(rows), 'checkpoint')}, {len(kept)} within tolerance "
      f"({_tolerance_words(tolerance)})")
  if no_gap:
    head += f"; {no_gap} lack a loss gap and enter no gap-controlled analysis" + (
        "" if tolerance is None else " nor any within-tolerance one")
  out = [head + ".\n"]
  if not rows:
    out.append("No checkpoint has curvature or downstream metrics yet "
               "(`flatness.curvature.measure`, `flatness.transfer.downstream` write them).\n")
  out.append("## Correlations\n\n" + _correlation_section(correlations, tolerance))
  out.append("## Paired effects: last vs first checkpoint of each run\n\n"
             + _paired_section(effects))
  if lookups:
    out.append("## Against the lookup-table baseline\n\n" + _lookup_section(lookups))
  out.append("## Across pre-training seeds\n\n" + _seed_section(seeds))
  return "\n".join(out)


# ----------------------------------------------------------------------------- figures


def _title(rows) -> str:
  """Which experiment and runs a figure or table shows."""
  exps = sorted({r.get("experiment") or "" for r in rows} - {""})
  runs = sorted({r["run"] for r in rows})
  names = ", ".join(runs) if len(runs) <= 4 else f"{len(runs)} runs"
  return (f"experiment {', '.join(exps)}: " if exps else "") + names


def _run_styles(rows):
  keys = sorted({analysis.run_key(r) for r in rows})
  cmap = plt.get_cmap("tab10" if len(keys) <= 10 else "tab20")
  return {k: (cmap(i % cmap.N), "os^Dv<>pP*X"[i % 11]) for i, k in enumerate(keys)}


def _series(rows, key):
  """{run key: (steps, values, rows)} of the rows that have ``key``, step-sorted."""
  out = {}
  for k, run_rows in analysis.by_run(rows).items():
    sel = [r for r in run_rows if np.isfinite(analysis.value(r, key))]
    if sel:
      out[k] = (np.array([r["step"] for r in sel]),
                np.array([analysis.value(r, key) for r in sel]), sel)
  return out


def _yerr(rows_, key):
  """Error bars for ``key``: its [lo, hi] interval, else +-1.96 s.e., else none."""
  v = np.array([analysis.value(r, key) for r in rows_])
  lo = np.array([analysis.value(r, f"{key}_lo") for r in rows_])
  hi = np.array([analysis.value(r, f"{key}_hi") for r in rows_])
  if np.isfinite(lo).all() and np.isfinite(hi).all():
    return np.stack([np.maximum(v - lo, 0), np.maximum(hi - v, 0)]), "95% interval over probe seeds"
  se = np.array([analysis.value(r, f"{key}_stderr") for r in rows_])
  if np.isfinite(se).all():
    return 1.96 * se, "+-1.96 s.e. over probe seeds"
  return None, "no interval recorded"


def _wrap(text, width=48):
  return textwrap.fill(text, width)


def _panels(n, width=4.8, height=3.8):
  """A figure with n axes (at most 3 a row), laid out so that labels never overlap."""
  cols = min(n, 3)
  nrows = math.ceil(n / cols)
  fig, axes = plt.subplots(nrows, cols, figsize=(width * cols + 2.0, height * nrows + 0.8),
                           squeeze=False, layout="constrained")
  for ax in axes.flat[n:]:
    ax.set_visible(False)
  return fig, list(axes.flat[:n])


def _figure_legend(fig, axes, title=None):
  """One legend for the whole figure, outside the panels (runs are the same in each)."""
  seen = {}
  for ax in axes:
    for h, lab in zip(*ax.get_legend_handles_labels()):
      seen.setdefault(lab, h)
  if seen:
    fig.legend(list(seen.values()), list(seen), loc="outside right center", fontsize="small",
               title=title, title_fontsize="small")


def _suptitle(fig, what, rows, bars=None):
  text = what + (f"\nerror bars: {bars}" if bars else "") + f"\n{_title(rows)}"
  fig.suptitle(text, fontsize="medium")


def _task(key):
  return key.split("/")[1] if key.startswith("downstream/") else ""


def _save(fig, path):
  fig.savefig(path, dpi=110)
  plt.close(fig)


def plot_loss_gap(rows, path, *, tolerance=None):
  """Loss gap vs step per run; the band [0, tolerance] of the correlated checkpoints shaded."""
  styles = _run_styles(rows)
  fig, ax = plt.subplots(figsize=(7.5, 4.5), layout="constrained")
  series = _series(rows, analysis.GAP)
  notes = set()
  for k, (steps, vals, sel) in series.items():
    color, marker = styles[k]
    se = np.array([analysis.value(r, f"{analysis.GAP}_stderr") for r in sel])
    ok = np.isfinite(se).all()
    notes.add("+-1 s.e. over evaluation sentences" if ok
              else "none (no s.e. recorded for the loss gap)")
    ax.errorbar(steps, vals, yerr=se if ok else None, marker=marker, color=color, capsize=3,
                label=k[1])
  vals = np.concatenate([v for _, v, _ in series.values()]) if series else np.array([])
  # Gaps span decades during training; a log axis keeps the near-optimum end readable.
  if len(vals) and (vals > 0).all() and vals.max() / vals.min() > 30:
    ax.set_yscale("log")
  if tolerance is not None:
    log, (bottom, top) = ax.get_yscale() == "log", ax.get_ylim()
    ax.axhspan(bottom if log else 0.0, tolerance, color="tab:green", alpha=0.15,
               label=f"tolerance band (0 to {tolerance:g} nats)")
    if log:   # 0 is off a log axis: the band runs to the bottom edge
      ax.set_ylim(bottom, max(top, tolerance))
  ax.set_xlabel(label("step"))
  ax.set_ylabel(_wrap(label(analysis.GAP)))
  if ax.get_legend_handles_labels()[0]:
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1), fontsize="small")
  _suptitle(fig, "Loss gap during pre-training", rows, "; ".join(sorted(notes)))
  _save(fig, path)


def plot_vs_step(rows, keys, path, *, title):
  """One panel per flatness measure: value +- 1 s.e. vs step per run."""
  styles = _run_styles(rows)
  fig, axes = _panels(len(keys))
  notes = set()
  for ax, key in zip(axes, keys):
    for k, (steps, vals, sel) in _series(rows, key).items():
      color, marker = styles[k]
      se = np.array([analysis.value(r, f"{key}_stderr") for r in sel])
      ok = np.isfinite(se).all()
      notes.add("+-1 s.e. of the estimate" if ok else "none recorded")
      ax.errorbar(steps, vals, yerr=se if ok else None, marker=marker, color=color, capsize=3,
                  label=k[1])
    ax.set_xlabel(label("step"))
    ax.set_ylabel(_wrap(label(key)))
  _figure_legend(fig, axes)
  _suptitle(fig, title, rows, "; ".join(sorted(notes)))
  _save(fig, path)


def _lookup_line(ax, rows, key):
  """The lookup-table baseline of ``key``'s task as a dashed line (+ its interval, shaded)."""
  lk = analysis.lookup_key(key)
  vals = [analysis.value(r, lk) for r in rows if np.isfinite(analysis.value(r, lk))]
  if not vals:
    return
  if np.ptp(vals) < 1e-9:   # independent of the checkpoint and run, as designed
    r0 = next(r for r in rows if np.isfinite(analysis.value(r, lk)))
    lo, hi = analysis.value(r0, f"{lk}_lo"), analysis.value(r0, f"{lk}_hi")
    ax.axhline(vals[0], ls="--", color="black", lw=1.3, label="lookup-table baseline")
    if np.isfinite(lo) and np.isfinite(hi):
      ax.axhspan(lo, hi, color="black", alpha=0.08, label="baseline's 95% interval")
  else:     # runs drew different labelled sets: their mean, and the range shaded
    ax.axhline(float(np.mean(vals)), ls="--", color="black", lw=1.3,
               label="lookup-table baseline (mean over runs)")
    ax.axhspan(min(vals), max(vals), color="black", alpha=0.08, label="baseline's range over runs")


def plot_accuracy(rows, acc_keys, path):
  """Per task: accuracy [95% interval] vs step per run, the lookup-table baseline dashed."""
  styles = _run_styles(rows)
  fig, axes = _panels(len(acc_keys))
  notes = set()
  for ax, key in zip(axes, acc_keys):
    for k, (steps, vals, sel) in _series(rows, key).items():
      color, marker = styles[k]
      err, how = _yerr(sel, key)
      notes.add(how)
      ax.errorbar(steps, vals, yerr=err, marker=marker, color=color, capsize=3, label=k[1])
    _lookup_line(ax, rows, key)
    ax.set_title(f"task {_task(key)}", fontsize="medium")
    ax.set_xlabel(label("step"))
    ax.set_ylabel(_wrap(label(key).replace(f" on task {_task(key)}", "")))
  _figure_legend(fig, axes)
  _suptitle(fig, "Downstream accuracy during pre-training", rows, "; ".join(sorted(notes)))
  _save(fig, path)


def plot_accuracy_vs_flatness(rows, x_key, acc_keys, path, *, tolerance=None):
  """Per task: accuracy against a flatness measure, error bars on both, coloured by loss gap."""
  kept = analysis.within_tolerance(rows, tolerance)
  scope = _tolerance_words(tolerance)
  if not kept:
    kept, scope = rows, "all checkpoints (none within tolerance)"
  c_key = (analysis.GAP if all(np.isfinite(analysis.value(r, analysis.GAP)) for r in kept)
           else "step")

  def colour_of(r):
    return float(r["step"]) if c_key == "step" else analysis.value(r, c_key)

  c_all = np.array([colour_of(r) for r in kept])
  norm = matplotlib.colors.Normalize(c_all.min(), c_all.max())
  styles = _run_styles(kept)
  fig, axes = _panels(len(acc_keys))
  mappable, notes = None, set()
  for ax, key in zip(axes, acc_keys):
    for k, run_rows in analysis.by_run(kept).items():
      sel = [r for r in run_rows
             if np.isfinite(analysis.value(r, x_key)) and np.isfinite(analysis.value(r, key))]
      if not sel:
        continue
      x = np.array([analysis.value(r, x_key) for r in sel])
      y = np.array([analysis.value(r, key) for r in sel])
      xerr = np.array([analysis.value(r, f"{x_key}_stderr") for r in sel])
      yerr, how = _yerr(sel, key)
      notes.add(how)
      ax.errorbar(x, y, xerr=xerr if np.isfinite(xerr).all() else None, yerr=yerr, fmt="none",
                  ecolor="0.65", elinewidth=0.8, capsize=2, zorder=1)
      mappable = ax.scatter(x, y, c=[colour_of(r) for r in sel], cmap="viridis", norm=norm,
                            marker=styles[k][1], edgecolors="black", linewidths=0.4, s=42,
                            zorder=2)
    ax.set_title(f"task {_task(key)}", fontsize="medium")
    ax.set_xlabel(_wrap(label(x_key)))
    ax.set_ylabel(_wrap(label(key).replace(f" on task {_task(key)}", "")))
  if mappable is not None:
    fig.colorbar(mappable, ax=axes, label=_wrap(label(c_key), 40), shrink=0.9)
  # Markers tell runs apart (colour is the loss gap): grey proxies for the legend.
  proxies = [matplotlib.lines.Line2D([], [], ls="", marker=m, color="0.7", markeredgecolor="black",
                                     label=k[1]) for k, (_, m) in styles.items()]
  if len(proxies) > 1:
    fig.legend(handles=proxies, loc="outside right center", fontsize="small")
  _suptitle(fig, f"Accuracy against {label(x_key).split(' (')[0]}, {scope}", rows,
            f"+-1 s.e. of the trace; accuracy: {'; '.join(sorted(notes))}")
  _save(fig, path)


def plot_seeds(summary: analysis.SeedSummary, metrics, path, rows):
  """Per metric: across-seed mean [95% t-interval] vs step, one line per recipe."""
  fig, axes = _panels(len(metrics))
  groups = sorted({s.group for s in summary.stats})
  cmap = plt.get_cmap("tab10")
  for ax, m in zip(axes, metrics):
    for i, g in enumerate(groups):
      pts = sorted((s.step, s.mean, s.lo, s.hi, s.n_seeds) for s in summary.stats
                   if s.group == g and s.metric == m and s.step >= 0)
      if not pts:
        continue
      st, mean, lo, hi, n = map(np.array, zip(*pts))
      # Recipes side by side rather than on top of each other at a shared step.
      dodge = (i - (len(groups) - 1) / 2) * 0.012 * max(np.ptp(st), 1)
      ax.errorbar(st + dodge, mean, yerr=np.stack([mean - lo, hi - mean]), marker="o", capsize=3,
                  color=cmap(i % 10), label=f"{g} ({int(n.max())} seeds)")
    if _task(m):
      ax.set_title(f"task {_task(m)}", fontsize="medium")
    ax.set_xlabel(label("step"))
    ax.set_ylabel(_wrap(label(m).replace(f" on task {_task(m)}", "")))
  _figure_legend(fig, axes, title="recipe")
  _suptitle(fig, "Across pre-training seeds: mean per recipe", rows,
            "95% t-interval over seeds")
  _save(fig, path)


# ----------------------------------------------------------------------------- write


def write(rows, correlations, out_dir: str, *, tolerance=None) -> dict[str, str]:
  """Writes every file listed in the module docstring; returns {name: path}."""
  fig_dir = os.path.join(out_dir, "figures")
  os.makedirs(fig_dir, exist_ok=True)
  effects = analysis.paired_effects(rows, tolerance=tolerance)
  lookups = analysis.lookup_effects(rows, tolerance=tolerance)
  seeds = analysis.seed_summary(rows, tolerance=tolerance)
  cols = table_columns(rows)
  table = [[r.get(c, float("nan")) for c in cols] for r in rows]
  files = dict(table_csv="table.csv", table_md="table.md", correlations_csv="correlations.csv",
               paired_effects_csv="paired_effects.csv", lookup_effects_csv="lookup_effects.csv",
               seed_summary_csv="seed_summary.csv", group_differences_csv="group_differences.csv",
               report="report.md")
  paths = {k: os.path.join(out_dir, v) for k, v in files.items()}
  _write_csv(paths["table_csv"], cols, table)
  _dataclass_csv(paths["correlations_csv"], analysis.Correlation, correlations)
  _dataclass_csv(paths["paired_effects_csv"], analysis.PairedEffect, effects)
  _dataclass_csv(paths["lookup_effects_csv"], analysis.LookupEffect, lookups)
  _dataclass_csv(paths["seed_summary_csv"], analysis.SeedStat, seeds.stats)
  _dataclass_csv(paths["group_differences_csv"], analysis.GroupDifference, seeds.differences)
  with open(paths["table_md"], "w") as f:
    f.write(markdown(cols, table))
  with open(paths["report"], "w") as f:
    f.write("# Flatness versus downstream accuracy\n\n")
    f.write(summary(rows, correlations, tolerance=tolerance, effects=effects, lookups=lookups,
                    seeds=seeds))
    f.write("\n## Checkpoints\n\nOne row per (run, checkpoint); all checkpoints.\n\n")
    f.write(markdown([_short(c) for c in cols], table))
  flat, acc = analysis.measure_names(rows)
  paths["loss_gap"] = os.path.join(fig_dir, "loss_gap.png")
  plot_loss_gap(rows, paths["loss_gap"], tolerance=tolerance)
  traces = [k for k in (analysis.TRACE, "curvature/trace_enlarged") if k in flat] or flat[:1]
  paths["trace"] = os.path.join(fig_dir, "trace.png")
  plot_vs_step(rows, traces or [analysis.TRACE], paths["trace"], title="Hessian trace")
  others = [k for k in flat if k not in traces]
  if others:
    paths["flatness"] = os.path.join(fig_dir, "flatness.png")
    plot_vs_step(rows, others, paths["flatness"], title="Other flatness measures")
  if acc:
    paths["accuracy"] = os.path.join(fig_dir, "accuracy.png")
    plot_accuracy(rows, acc, paths["accuracy"])
    if traces:
      paths["accuracy_vs_trace"] = os.path.join(fig_dir, "accuracy_vs_trace.png")
      plot_accuracy_vs_flatness(rows, traces[0], acc, paths["accuracy_vs_trace"],
                                tolerance=tolerance)
  if any(s.step >= 0 for s in seeds.stats):
    paths["seeds"] = os.path.join(fig_dir, "seeds.png")
    shown = [m for m in [analysis.GAP, analysis.TRACE] + acc
             if any(s.metric == m for s in seeds.stats)]
    plot_seeds(seeds, shown, paths["seeds"], rows)
  return paths


def print_table(rows, keys=None) -> str:
  """A compact Markdown table of ``keys`` (default: the main columns) for the terminal."""
  keys = keys or table_columns(rows)
  return markdown([k.replace("downstream/", "").replace("curvature/", "") for k in keys],
                  [[r.get(k, float("nan")) for k in keys] for r in rows])
