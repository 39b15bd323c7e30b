"""How to split the Hessian-vector products of a trace estimate between batches and probes.

A two-level Hutchinson estimate (`flatness.curvature.trace`) draws ``G``
independent evaluation batches (sentences and masks) and ``p`` probes on each;
its samples are ``x[g, i] = v[g, i]^T H_g v[g, i]``, in nats per parameter unit
squared. With

  ``s_b^2 = Var_g[tr H_g]``        the batch-to-batch variance (sentences, masks),
  ``s_p^2 = E_g Var_v[x | g]``     the probes' variance on a batch,

the estimate ``mean_{g,i} x[g, i]`` has variance ``(s_b^2 + s_p^2 / p) / G``. A
batch's ``p`` probes run in one vmapped pass costing ``c_b + p c_p``: the primal
and backward work shared by the chunk (``c_b``) and the tangent work per probe
(``c_p``), the linear cost model that `benchmarks.curvature` fits to its timings.
For a given standard error the time is then proportional to

  ``T(p) = (s_b^2 + s_p^2 / p) (c_b + p c_p)``,

minimal at ``p* = sqrt((s_p^2 / s_b^2) (c_b / c_p))`` (the optimum subsample size
of two-stage sampling; Cochran, *Sampling Techniques*, 3rd ed., 1977, ch. 10).
When a batch's probes share no work (``c_b = 0``: the time is the number of
products) one probe per batch is best, which is why the measured runs draw
one; when a batch's shared work is dear and the probes dominate the variance,
several probes per batch reach the same error sooner. The model holds for the
probes of one pass (``p`` up to the estimator's ``chunk``); more take
``ceil(p / chunk)`` passes, each paying ``c_b`` again.
"""
from typing import Sequence

import numpy as np


def variance_components(samples: Sequence[np.ndarray] | np.ndarray) -> tuple[float, float]:
  """``(s_b^2, s_p^2)`` from ``G >= 2`` batches of ``p >= 2`` probe samples each.

  One-way random-effects analysis of variance: the mean within-batch variance
  ``MSW = mean_g var_i(x[g, :])`` (ddof 1) has expectation ``s_p^2``, and
  ``p var_g(mean_i x[g, :])`` (ddof 1) has expectation ``p s_b^2 + s_p^2``, so
  ``s_b^2 = var_g(mean_i x[g, :]) - MSW / p``. Both are unbiased; the batch term
  can come out negative when it is small against ``s_p^2 / p`` (clip it before
  use, as `time_for_error` does). ``samples``: ``[G, p]``, or ``G`` arrays of ``p``.
  """
  rows = [np.asarray(s, np.float64) for s in samples]
  shapes = sorted({r.shape for r in rows})
  if len(rows) < 2 or len(shapes) != 1 or len(shapes[0]) != 1 or shapes[0][0] < 2:
    raise ValueError(f"variance_components needs at least 2 batches of the same number (at "
                     f"least 2) of scalar probe samples, got {len(rows)} batches of shapes "
                     f"{shapes}; measure with num_probes >= 2")
  x = np.stack(rows)
  within = float(x.var(axis=1, ddof=1).mean())
  between = float(x.mean(axis=1).var(ddof=1))
  return between - within / x.shape[1], within


def costs(time_one: float, time_chunk: float, chunk: int) -> tuple[float, float]:
  """``(c_b, c_p)`` of the linear cost model from the time of a pass with one probe and of
  a pass with ``chunk`` probes of one batch: ``c_p = (t_chunk - t_1) / (chunk - 1)``,
  ``c_b = t_1 - c_p``."""
  if chunk < 2:
    raise ValueError(f"costs needs a chunk of at least 2 probes, got {chunk}")
  per_probe = (time_chunk - time_one) / (chunk - 1)
  return time_one - per_probe, per_probe


def time_for_error(p, var_batch: float, var_probe: float, cost_batch: float,
                   cost_probe: float):
  """``T(p) = (s_b^2 + s_p^2 / p) (c_b + p c_p)``: the time to a given standard error with
  ``p`` probes per batch, up to a factor common to every ``p`` (the module docstring).
  Negative estimates of ``s_b^2`` or ``c_b`` (noise around a small true value) count as 0."""
  p = np.asarray(p, np.float64)
  return (max(var_batch, 0.0) + var_probe / p) * (max(cost_batch, 0.0) + p * cost_probe)


def best_probes(var_batch: float, var_probe: float, cost_batch: float, cost_probe: float,
                max_probes: int = 64) -> int:
  """The number of probes per batch in ``1..max_probes`` that minimises `time_for_error`
  (the smallest ``p`` on ties)."""
  p = np.arange(1, max_probes + 1)
  return int(p[np.argmin(time_for_error(p, var_batch, var_probe, cost_batch, cost_probe))])
