"""Figures of the mechanism report (`flatness.analysis.drift_report`).

``collapse``: three panels per arm, mean over seeds with 95% t-intervals: the
change of tr(H) from the start (each seed's own draws at every checkpoint, so the
change is paired and the seed-to-seed spread of the level drops out) against
steps; the same against eta^2 t / B (sampled-label SGD arms, symmetric-log axis
so that t = 0 shows), where the theory predicts one curve; the loss gap in % of
the exact optimum against steps, with the tolerance. ``rate_law``: each arm's
initial rate against eta^2 / B with its interval, the fitted line, and the
exact-target arm.
"""
import matplotlib
matplotlib.use("Agg")   # files only
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top

from flatness.analysis import drift  # pylint: disable=g-import-not-at-top
from flatness.analysis import drift_report  # pylint: disable=g-import-not-at-top


def _style(summaries):
  """Colour by eta^2 / B (SGD), marker by batch; other arms grey/black."""
  scales = sorted({s.arm.noise_scale for s in summaries if np.isfinite(s.arm.noise_scale)})
  cmap = plt.get_cmap("viridis")
  batches = sorted({s.arm.batch for s in summaries})
  markers = dict(zip(batches, "os^Dv<>"))
  out = {}
  for s in summaries:
    a = s.arm
    if a.targets == "exact":
      out[a.group] = ("tab:red", "X", "--")
    elif a.optimizer != "sgd":
      out[a.group] = ("black", "*", ":")
    else:
      i = scales.index(a.noise_scale) / max(len(scales) - 1, 1)
      out[a.group] = (cmap(0.9 * i), markers[a.batch], "-")
  return out


def _errorbar(ax, x, curve, style, label):
  color, marker, ls = style
  m = np.array([c.mean for c in curve])
  lo = np.array([c.lo for c in curve])
  hi = np.array([c.hi for c in curve])
  err = (np.stack([m - lo, hi - m]) if np.isfinite(lo).all() else None)
  ax.errorbar(x, m, yerr=err, color=color, marker=marker, ls=ls, ms=4, capsize=2, lw=1.2,
              label=label)


def collapse(a: "drift_report.DriftAnalysis", path: str) -> None:
  styles = _style(a.summaries)
  fig, axes = plt.subplots(1, 3, figsize=(17, 5), layout="constrained")
  for s in a.summaries:
    label = f"{s.arm.label}" + (f"  (eta^2/B {s.arm.noise_scale:.1e})"
                                if np.isfinite(s.arm.noise_scale) else "")
    _errorbar(axes[0], s.steps, s.change_curve, styles[s.arm.group], label)
    if np.isfinite(s.arm.noise_scale) and s.arm.targets != "exact":
      _errorbar(axes[1], drift.collapse_time(s.steps, s.arm.lr, s.arm.batch), s.change_curve,
                styles[s.arm.group], None)
    axes[2].plot(s.steps, s.gap_curve, color=styles[s.arm.group][0],
                 marker=styles[s.arm.group][1], ls=styles[s.arm.group][2], ms=4)
  axes[0].set(xlabel="phase-2 step",
              ylabel="change of tr(H) from the start, nats per unit² of parameters",
              title="Hessian trace, change from the start (paired per seed)")
  scales = [s.arm.noise_scale for s in a.law_arms]
  axes[1].set_xscale("symlog", linthresh=min(scales) * 500 if scales else 1e-3)
  axes[1].set(xlabel="eta² t / B (symmetric log)", ylabel="change of tr(H) from the start",
              title="Sampled-label SGD against eta² t / B\n(theory: one curve)")
  if np.isfinite(a.tolerance_pct):
    axes[2].axhline(a.tolerance_pct, color="0.5", ls="--", lw=1)
  axes[2].set_title("Loss gap" + (" (dashed: the tolerance)" if np.isfinite(a.tolerance_pct)
                                  else ""))
  axes[2].set(xlabel="phase-2 step", ylabel="loss gap, % of the exact optimum")
  fig.legend(loc="outside right center", fontsize="small")
  fig.suptitle("Label-noise drift from one converged checkpoint; error bars: 95% t-interval "
               "over seeds", fontsize="medium")
  fig.savefig(path, dpi=110)
  plt.close(fig)


def rate_law(a: "drift_report.DriftAnalysis", path: str) -> None:
  styles = _style(a.summaries)
  fig, ax = plt.subplots(figsize=(7.5, 5), layout="constrained")
  unit = drift_report.RATE_UNIT
  for s in a.summaries:
    if not np.isfinite(s.arm.noise_scale):
      continue
    r = s.rate
    err = (np.array([[r.rate - r.lo], [r.hi - r.rate]]) * unit if np.isfinite(r.lo) else None)
    color, marker, _ = styles[s.arm.group]
    ax.errorbar([s.arm.noise_scale], [r.rate * unit], yerr=err, color=color, marker=marker,
                capsize=3, ls="", ms=6, label=s.arm.label)
  if a.law is not None:
    x = np.linspace(0, max(s.arm.noise_scale for s in a.law_arms) * 1.05, 50)
    ax.plot(x, a.law.slope * x + a.law.intercept, color="0.4", lw=1,
            label=f"fit: R² {a.law.r2:.2f}")
  ax.axhline(0, color="0.7", lw=0.8)
  ax.set(xlabel="eta² / B", ylabel=f"initial d tr(H)/dt, per {unit} steps",
         title=f"Initial drift rate (steps <= {a.window:g}); error bars: 95% t over seeds")
  ax.legend(fontsize="small", loc="best")
  fig.savefig(path, dpi=110)
  plt.close(fig)
