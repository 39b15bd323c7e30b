"""Probes per batch (`flatness.curvature.allocation`) against closed forms and dense Hessians."""
import jax
import numpy as np
import pytest

from flatness.curvature import allocation
from flatness.curvature import trace
from curvature_problems import flat_hessian, population_problem


def test_variance_components_are_unbiased_on_a_two_level_normal_model():
  """Simulated x[g, i] = b_g + e_gi with known variances: the ANOVA estimates average to
  them; samples that cannot separate them are refused."""
  rng = np.random.default_rng(0)
  vb, vp, reps, g, p = 0.3, 2.0, 20_000, 6, 3
  x = (rng.normal(0, np.sqrt(vb), (reps, g, 1)) + rng.normal(0, np.sqrt(vp), (reps, g, p)))
  est = np.array([allocation.variance_components(xi) for xi in x])
  se = est.std(axis=0) / np.sqrt(reps)
  assert np.all(np.abs(est.mean(axis=0) - [vb, vp]) < 4 * se)
  for bad in (x[0, :, :1], x[0, :1], [np.ones(3), np.ones(2)], np.ones((4, 3, 2))):
    with pytest.raises(ValueError, match="num_probes >= 2"):
      allocation.variance_components(bad)


def test_best_probes_is_the_closed_form_optimum():
  """The brute-force minimiser of (s_b^2 + s_p^2/p)(c_b + p c_p) is the floor or ceiling of
  p* = sqrt(s_p^2 c_b / (s_b^2 c_p)), clipped to [1, max]; free batches give one probe."""
  rng = np.random.default_rng(1)
  for _ in range(200):
    vb, vp, cb, cp = np.exp(rng.normal(0, 2, 4))
    best = allocation.best_probes(vb, vp, cb, cp, max_probes=64)
    star = np.sqrt(vp * cb / (vb * cp))
    candidates = {int(np.clip(np.floor(star), 1, 64)), int(np.clip(np.ceil(star), 1, 64))}
    assert best in candidates
  assert allocation.best_probes(1.0, 5.0, 0.0, 1.0) == 1
  assert allocation.best_probes(-0.1, 5.0, 1.0, 1.0, max_probes=16) == 16   # s_b^2 <= 0
  cb, cp = allocation.costs(time_one=3.0 + 0.5, time_chunk=3.0 + 8 * 0.5, chunk=8)
  assert (cb, cp) == pytest.approx((3.0, 0.5))


def test_trace_samples_split_into_the_dense_variance_components():
  """On fixed batches with dense Hessians H_g: E[s_b^2 estimate] = var_g(tr H_g) (ddof 1) and
  E[s_p^2 estimate] = mean_g 2 (||H_g||_F^2 - sum diag(H_g)^2), Rademacher's probe variance."""
  params, loss_fn, data = population_problem(n=32)
  batches = [jax.tree.map(lambda a, s=s: a[s:s + 8], data) for s in range(0, 32, 8)]
  dense = [flat_hessian(lambda q, b=b: loss_fn(q, b), params)[0] for b in batches]
  truth_b = np.var([np.trace(h) for h in dense], ddof=1)
  truth_p = np.mean([2 * (np.sum(h ** 2) - np.sum(np.diag(h) ** 2)) for h in dense])
  est = []
  for seed in range(300):
    t = trace.hessian_trace(loss_fn, params, jax.random.key(seed), batches=batches,
                            num_probes=4, chunk=4)
    assert t.samples.shape == (4, 4)
    assert t.value == pytest.approx(t.samples.mean(), rel=1e-9)
    est.append(allocation.variance_components(t.samples))
  est = np.array(est)
  se = est.std(axis=0) / np.sqrt(len(est))
  assert np.all(np.abs(est.mean(axis=0) - [truth_b, truth_p]) < 4 * se)
  assert np.all(se < 0.1 * np.array([truth_b, truth_p]))   # the check has power
