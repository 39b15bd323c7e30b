"""The drift of flatness at the optimum: rates, the eta^2 t / B collapse, the rate law.

The prediction (paper Sec. 4; Blanc et al. 2020; Li, Wang & Arora 2022): at a
minimiser of the population cross-entropy the covariance of per-example
gradients equals the Hessian, so SGD on sampled labels keeps moving after the
loss has converged, along the manifold of minimisers, in the direction that
lowers tr(H), at a rate per step proportional to ``eta^2 / B`` (learning rate
eta, batch B): plotted against ``eta^2 t / B`` the SGD curves collapse onto one.
With exact targets every example's gradient vanishes at an exact minimiser and
the predicted drift is zero.

* `collapse_time(steps, lr, batch)`: ``eta^2 t / B``.
* `drift_rate(steps, values, window)`: each run's least-squares slope of a
  metric (tr(H), in its units per step) over its first ``window`` steps, and
  across runs (pre-training seeds) the mean with its standard error and 95%
  t-interval. The across-seed spread is the whole run-to-run variability:
  seeds, training batches, and the noise of each trace estimate.
* `rate_law(x, rates)`: the least-squares line ``rate = slope * x + intercept``
  through the arms' rates against ``x = eta^2 / B``: slope and intercept with
  standard errors, R^2 and residuals. The theory predicts intercept 0.
* `collapse_fit(arms, scaling)`: one curve through every arm's change of the
  metric against a rescaled time (`SCALINGS`: the theory's ``eta^2 t / B`` and
  the alternatives), with its R^2: the scaling that collapses the arms best.
"""
import dataclasses

import numpy as np
from scipy import optimize

from flatness.analysis import correlation as analysis


def collapse_time(steps, lr: float, batch: int) -> np.ndarray:
  """``eta^2 t / B``: the time in which label-noise drift is predicted to be the same."""
  return np.asarray(steps, np.float64) * float(lr) ** 2 / float(batch)


@dataclasses.dataclass(frozen=True)
class DriftRate:
  """A metric's initial rate of change per step, across runs."""
  rate: float                  # mean over runs of the per-run slopes (units per step)
  stderr: float                # across-run standard error (nan with one run)
  lo: float                    # 95% Student-t interval over runs
  hi: float
  per_run: tuple[float, ...]   # each run's slope


def slope(steps, values) -> float:
  """Least-squares slope of ``values`` against ``steps``."""
  t = np.asarray(steps, np.float64)
  y = np.asarray(values, np.float64)
  if len(t) < 2 or np.ptp(t) == 0:
    raise ValueError(f"a slope needs at least two distinct steps, got {list(t)}")
  tc = t - t.mean()
  return float(np.dot(tc, y - y.mean()) / np.dot(tc, tc))


def drift_rate(runs, window: float | None = None) -> DriftRate:
  """``runs``: one ``(steps, values)`` per run (seed); each run's slope over the steps
  ``<= window`` (all when None), then their mean with a t-interval over runs."""
  slopes = []
  for steps, values in runs:
    steps, values = np.asarray(steps, np.float64), np.asarray(values, np.float64)
    keep = steps <= (np.inf if window is None else window)
    slopes.append(slope(steps[keep], values[keep]))
  mean, se, lo, hi = analysis.t_interval(slopes)
  return DriftRate(mean, se, lo, hi, tuple(slopes))


@dataclasses.dataclass(frozen=True)
class RateLaw:
  """``rate = slope * x + intercept`` by least squares over the arms."""
  slope: float
  slope_stderr: float
  intercept: float
  intercept_stderr: float
  r2: float
  residuals: tuple[float, ...]


def rate_law(x, rates) -> RateLaw:
  """Ordinary least squares of the arms' drift rates on ``x`` (``eta^2 / B``); the
  standard errors are the usual ones from the residual variance (n - 2 degrees of
  freedom), so they need at least three arms."""
  x, y = np.asarray(x, np.float64), np.asarray(rates, np.float64)
  n = len(x)
  if n < 3:
    raise ValueError(f"a rate law needs at least 3 arms, got {n}")
  design = np.stack([x, np.ones_like(x)], axis=1)
  coef, *_ = np.linalg.lstsq(design, y, rcond=None)
  resid = y - design @ coef
  s2 = float(resid @ resid) / (n - 2)
  cov = s2 * np.linalg.inv(design.T @ design)
  total = float(((y - y.mean()) ** 2).sum())
  r2 = 1.0 - float(resid @ resid) / total if total > 0 else float("nan")
  return RateLaw(float(coef[0]), float(np.sqrt(cov[0, 0])), float(coef[1]),
                 float(np.sqrt(cov[1, 1])), r2, tuple(float(r) for r in resid))


# The time variables a collapse can be tested in: each arm's steps t rescaled by its eta
# and B. The theory's is eta^2 t / B; the others are what would collapse if the drift
# followed the loss gap (eta / B), ignored the batch, or ignored both.
SCALINGS = {
    "eta^2 t / B": lambda t, lr, b: t * lr ** 2 / b,
    "eta t / B": lambda t, lr, b: t * lr / b,
    "eta^2 t": lambda t, lr, b: t * lr ** 2,
    "t": lambda t, lr, b: t * 1.0,
}


@dataclasses.dataclass(frozen=True)
class CollapseFit:
  """One curve ``change = -amplitude * log(1 + x / scale)`` through every arm's points."""
  scaling: str
  amplitude: float
  scale: float
  r2: float
  rms: float                   # root-mean-square residual, in the change's units
  num_points: int


def _log_curve(x, amplitude, scale):
  return -amplitude * np.log1p(x / scale)


def collapse_fit(arms, scaling: str) -> CollapseFit:
  """Least squares of one two-parameter curve through all arms' points.

  ``arms``: ``(steps, changes, lr, batch)`` per arm, ``changes`` the arm's mean change
  of the metric from step 0. Points at t = 0 (zero by construction) are left out. The
  curve's two parameters absorb any constant factor in the time variable, so the
  scalings compete on shape alone: the one whose arms fall on one curve fits best
  (higher R^2, smaller residual). The shape (logarithmic saturation) is an empirical
  choice, not the theory's; the comparison between scalings uses the same shape.
  """
  xs, ys = [], []
  for steps, changes, lr, batch in arms:
    t = np.asarray(steps, np.float64)
    keep = t > 0
    xs.append(SCALINGS[scaling](t[keep], float(lr), float(batch)))
    ys.append(np.asarray(changes, np.float64)[keep])
  x, y = np.concatenate(xs), np.concatenate(ys)
  if len(x) < 3:
    raise ValueError(f"a collapse fit needs at least 3 points after t = 0, got {len(x)}")
  start = (max(float(-y.min()), 1e-6), float(np.median(x)))
  (amp, scale), _ = optimize.curve_fit(_log_curve, x, y, p0=start,
                                       bounds=([0.0, 1e-12 * x.max()], [np.inf, np.inf]),
                                       maxfev=20000)
  resid = y - _log_curve(x, amp, scale)
  total = float(((y - y.mean()) ** 2).sum())
  return CollapseFit(scaling, float(amp), float(scale),
                     1.0 - float(resid @ resid) / total if total > 0 else float("nan"),
                     float(np.sqrt(np.mean(resid ** 2))), len(x))
