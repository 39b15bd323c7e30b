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
"""
import dataclasses

import numpy as np

from flatness import analysis


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
