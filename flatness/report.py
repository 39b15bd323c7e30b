"""Writes the analysis of many runs: CSV and Markdown tables, a report, PNG figures.

Files under ``out_dir``:

  table.csv, table.md          one row per (run, checkpoint step): loss gap, flatness
                               measures, downstream accuracies
  correlations.csv             every `flatness.analysis.Correlation`
  report.md                    both tables in Markdown, with the settings used
  figures/loss_gap.png, figures/trace.png, figures/accuracy.png    versus step, per run
  figures/accuracy_vs_trace.png    accuracy against the Hessian trace, coloured by experiment
"""
import csv
import dataclasses
import math
import os

import matplotlib
matplotlib.use("Agg")   # files only; no display on TPU VMs and CI
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

from flatness import analysis

_BASE = ("run", "experiment", "num_params", "step", "eval/loss_gap", "eval/expected_ce")


def table_columns(rows) -> list[str]:
  flat, acc = analysis.measure_names(rows)
  extra = sorted({k for r in rows for k in r if k.endswith("/lookup_acc")})
  return [c for c in _BASE if any(c in r for r in rows)] + flat + acc + extra


def _fmt(v) -> str:
  if isinstance(v, float):
    return "" if math.isnan(v) else f"{v:.4g}"
  return str(v)


def markdown(header, rows) -> str:
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]
  return "\n".join(lines) + "\n"


def _write_csv(path, header, rows):
  with open(path, "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(header)
    w.writerows([[_fmt(v) for v in row] for row in rows])


def _plot_vs_step(rows, key, path, ylabel):
  runs = sorted({r["run"] for r in rows})
  fig, ax = plt.subplots(figsize=(6, 4))
  drawn = False
  for run in runs:
    pts = sorted((r["step"], r[key]) for r in rows if r["run"] == run and key in r)
    if pts:
      ax.plot(*zip(*pts), marker="o", label=run)
      drawn = True
  ax.set_xlabel("step")
  ax.set_ylabel(ylabel)
  if drawn:
    ax.legend(fontsize="small")
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def _plot_scatter(rows, x_key, y_keys, path):
  fig, ax = plt.subplots(figsize=(6, 4))
  experiments = sorted({r["experiment"] or r["run"] for r in rows})
  colors = plt.get_cmap("tab10")
  for i, exp in enumerate(experiments):
    for j, y_key in enumerate(y_keys):
      pts = [(r[x_key], r[y_key]) for r in rows
             if (r["experiment"] or r["run"]) == exp and x_key in r and y_key in r]
      if pts:
        ax.scatter(*zip(*pts), color=colors(i % 10), marker="osd^v<>"[j % 7],
                   label=f"{exp} {y_key.split('/')[1]}")
  ax.set_xlabel(x_key)
  ax.set_ylabel("downstream accuracy")
  ax.legend(fontsize="small")
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def write(rows, correlations, out_dir: str, *, tolerance=None) -> dict[str, str]:
  """Writes every file listed in the module docstring; returns {name: path}."""
  fig_dir = os.path.join(out_dir, "figures")
  os.makedirs(fig_dir, exist_ok=True)
  cols = table_columns(rows)
  table = [[r.get(c, float("nan")) for c in cols] for r in rows]
  corr_cols = [f.name for f in dataclasses.fields(analysis.Correlation)]
  corr = [[getattr(c, k) for k in corr_cols] for c in correlations]
  paths = dict(table_csv=os.path.join(out_dir, "table.csv"),
               table_md=os.path.join(out_dir, "table.md"),
               correlations_csv=os.path.join(out_dir, "correlations.csv"),
               report=os.path.join(out_dir, "report.md"))
  _write_csv(paths["table_csv"], cols, table)
  _write_csv(paths["correlations_csv"], corr_cols, corr)
  with open(paths["table_md"], "w") as f:
    f.write(markdown(cols, table))
  with open(paths["report"], "w") as f:
    f.write("# Flatness versus downstream accuracy\n\n")
    scope = ("all checkpoints" if tolerance is None
             else f"checkpoints with eval/loss_gap <= {tolerance} nats")
    f.write(f"{len({r['run'] for r in rows})} runs, {len(rows)} checkpoints. Correlations use "
            f"{scope}; 95% bootstrap intervals.\n\n")
    f.write("## Correlations\n\n" + markdown(corr_cols, corr) + "\n## Checkpoints\n\n")
    f.write(markdown(cols, table))
  flat, acc = analysis.measure_names(rows)
  for key, name, label in (("eval/loss_gap", "loss_gap", "loss - optimal loss (nats)"),
                           ("curvature/trace", "trace", "tr(Hessian)")):
    paths[name] = os.path.join(fig_dir, f"{name}.png")
    _plot_vs_step(rows, key, paths[name], label)
  if acc:
    paths["accuracy"] = os.path.join(fig_dir, "accuracy.png")
    _plot_vs_step(rows, acc[0], paths["accuracy"], acc[0])
    x_key = "curvature/trace" if "curvature/trace" in flat else (flat[0] if flat else None)
    if x_key:
      paths["accuracy_vs_trace"] = os.path.join(fig_dir, "accuracy_vs_trace.png")
      _plot_scatter(rows, x_key, acc, paths["accuracy_vs_trace"])
  return paths


def print_table(rows, keys=None) -> str:
  """A compact Markdown table of ``keys`` (default: the main columns) for the terminal."""
  keys = keys or table_columns(rows)
  return markdown([k.replace("downstream/", "").replace("curvature/", "") for k in keys],
                  [[r.get(k, float("nan")) for k in keys] for r in rows])

