"""Label-noise drift on a model whose slow flow is known in closed form.

The model is the two-parameter regression ``f = w1 * w2`` with loss ``(f - y)^2 / 2`` and
labels ``y = c + eps``, ``eps ~ N(0, sigma^2)``. Its minimisers are the curve
``w1 w2 = c``; there ``H = g g^T`` with ``g = (w2, w1)``, so ``tr(H) = w1^2 + w2^2``,
smallest (``2|c|``, the flattest minimiser) at ``|w1| = |w2|``.

The slow flow, derived exactly. One SGD step on a batch of B labels with residual
``r = w1 w2 - mean(y)`` is ``w1' = w1 - eta r w2``, ``w2' = w2 - eta r w1``, so

    u = w1^2 - w2^2   obeys   u' = u (1 - eta^2 r^2)        (no approximation).

Gradient flow conserves u; only the residual's noise moves it. Near the manifold, with
``d = w1 w2 - c`` and ``s = tr(H)``, ``d' = d (1 - eta s) - eta s eps_bar + O(eta^2)`` has
stationary variance ``eta s (sigma^2/B) / (2 - eta s)``, so
``E r^2 = (sigma^2 / B) * 2 / (2 - eta s)`` and

    E u_{t+1} = u_t (1 - kappa),   kappa = (eta^2 sigma^2 / B) * 2 / (2 - eta s),

to relative O(eta^2). Gradient flow from ``w`` conserves u, so it lands on the minimiser
``Phi(w)`` with the same u, where ``tr(H) = sqrt(u^2 + 4 c^2)``: the slow flow is that of
``Phi(w_t)`` (Li, Wang & Arora 2022), free of the fast O(sqrt(eta)) fluctuation of the
iterate across the valley. Its trace falls
toward ``2|c|`` at ``d tr(H)/dt = -kappa u^2 / tr(H)`` per step: to leading order in eta,
a rate ``(eta^2 / B) sigma^2 u^2 / tr(H)`` (the ``eta^2 / B`` law), and zero with exact
labels (``sigma = 0``). The tests check the measured drift of simulated SGD, with the
estimators of `flatness.analysis.drift`, against these formulas.
"""
import numpy as np
import pytest

from flatness.analysis import drift

C, SIGMA, W0 = 1.0, 1.0, (2.0, 0.5)     # u0 = 3.75, tr(H)0 = 4.25
SEEDS = 64


def _manifold_trace(w1, w2):
  """tr(H) at Phi(w), the minimiser gradient flow reaches from w (it conserves u)."""
  return np.sqrt((w1 ** 2 - w2 ** 2) ** 2 + 4 * C ** 2)


def simulate(lr, batch, steps, *, sigma=SIGMA, w0=W0, seed=0):
  """tr(H(Phi(w_t))) after each step of label-noise SGD, [steps + 1, SEEDS]."""
  rng = np.random.default_rng(seed)
  w1, w2 = np.full(SEEDS, w0[0]), np.full(SEEDS, w0[1])
  traces = np.empty((steps + 1, SEEDS))
  traces[0] = _manifold_trace(w1, w2)
  for t in range(steps):
    eps = rng.normal(0.0, sigma, (SEEDS, batch)).mean(axis=1) if sigma else 0.0
    r = w1 * w2 - (C + eps)
    w1, w2 = w1 - lr * r * w2, w2 - lr * r * w1
    traces[t + 1] = _manifold_trace(w1, w2)
  return traces


def predicted(lr, batch, steps, *, sigma=SIGMA, w0=W0):
  """The derived mean trace: u_{t+1} = u_t (1 - kappa(tr_t)), tr = sqrt(u^2 + 4c^2)."""
  u = w0[0] ** 2 - w0[1] ** 2
  out = np.empty(steps + 1)
  for t in range(steps + 1):
    s = np.sqrt(u ** 2 + 4 * C ** 2)
    out[t] = s
    u *= 1 - (lr ** 2 * sigma ** 2 / batch) * 2 / (2 - lr * s)
  return out


def _runs(traces):
  steps = np.arange(len(traces))
  return [(steps, traces[:, k]) for k in range(traces.shape[1])]


def _window(lr, batch, tau=0.1):
  """Steps spanning collapse time tau = eta^2 t / B."""
  return int(round(tau * batch / lr ** 2))


ARMS = [(0.01, 1), (0.02, 1), (0.02, 4), (0.03, 2), (0.03, 4)]


@pytest.mark.parametrize("lr,batch", ARMS)
def test_initial_drift_rate_matches_the_derived_flow(lr, batch):
  window = _window(lr, batch)
  measured = drift.drift_rate(_runs(simulate(lr, batch, window, seed=int(lr * 1e3) + batch)))
  want = drift.slope(np.arange(window + 1), predicted(lr, batch, window))
  assert measured.rate < 0
  # Within 3 standard errors over seeds, plus 1% for the O(eta^2) terms dropped.
  assert abs(measured.rate - want) < 3 * measured.stderr + 0.01 * abs(want), (measured, want)
  assert measured.lo < want < measured.hi or abs(measured.rate - want) < 0.01 * abs(want)


def test_drift_reaches_the_flattest_minimiser():
  traces = simulate(0.03, 1, 30000, seed=1)
  assert np.mean(traces[-1]) == pytest.approx(2 * abs(C), abs=1e-4)   # |w1| = |w2|


def test_exact_labels_do_not_drift():
  """sigma = 0 from off the manifold: SGD lands on the minimiser of its own u and stays
  (u changes by O(eta d0^2 / s) only), and the trace's rate after landing is zero."""
  lr = 0.02
  w0 = (2.0, 0.55)                                           # w1 w2 = 1.1: off by 0.1
  traces = simulate(lr, 1, 3000, sigma=0.0, w0=w0)
  u0 = w0[0] ** 2 - w0[1] ** 2
  landed = np.sqrt(u0 ** 2 + 4 * C ** 2)                     # tr(H) at u0 on the manifold
  assert traces[-1].mean() == pytest.approx(landed, rel=1e-3)
  after = drift.drift_rate(_runs(traces[500:]))
  noisy = drift.drift_rate(_runs(simulate(lr, 1, 250, seed=2)))
  assert abs(after.rate) < 1e-6 * abs(noisy.rate)


def test_rates_follow_the_eta_squared_over_b_law():
  """The arms' rates against eta^2 / B: a line through the origin whose slope is the
  leading-order coefficient sigma^2 u0^2 / tr(H)0, within the finite-eta factor
  2 / (2 - eta s) of the arms (at most 1.07 here)."""
  x, rates = [], []
  for lr, batch in ARMS:
    window = _window(lr, batch, tau=0.02)                   # short: the initial rate
    r = drift.drift_rate(_runs(simulate(lr, batch, window, seed=int(lr * 1e3) + batch)))
    x.append(lr ** 2 / batch)
    rates.append(r.rate)
  law = drift.rate_law(x, rates)
  u0, s0 = W0[0] ** 2 - W0[1] ** 2, W0[0] ** 2 + W0[1] ** 2
  leading = -SIGMA ** 2 * u0 ** 2 / s0
  assert 1.0 <= law.slope / leading <= 1.1, (law, leading)
  assert abs(law.intercept) < 3 * law.intercept_stderr + 0.02 * abs(leading) * max(x)
  assert law.r2 > 0.97


def test_collapse_time_and_estimators():
  np.testing.assert_allclose(drift.collapse_time([0, 100], 0.1, 4), [0.0, 0.25])
  assert drift.slope([0, 1, 2], [1.0, 3.0, 5.0]) == pytest.approx(2.0)
  r = drift.drift_rate([([0, 1, 2, 9], [0.0, 1.0, 2.0, 0.0]), ([0, 1, 2], [0.0, 3.0, 6.0])],
                       window=2)
  assert r.per_run == pytest.approx((1.0, 3.0)) and r.rate == pytest.approx(2.0)
  law = drift.rate_law([1, 2, 3, 4], [2.0, 4.1, 5.9, 8.0])
  assert law.slope == pytest.approx(1.98, abs=1e-9) and law.intercept == pytest.approx(0.05)
  with pytest.raises(ValueError, match="at least 3 arms"):
    drift.rate_law([1, 2], [1, 2])


def test_collapse_fit_prefers_the_scaling_the_data_follow():
  """Arms whose change is one curve of eta^2 t / B: that scaling fits exactly, and the
  alternatives, which spread the arms apart, fit worse."""
  steps = np.arange(0, 3001, 500)
  arms = [(steps, -40 * np.log1p(steps * lr ** 2 / b / 0.05), lr, b)
          for lr in (0.02, 0.04, 0.08) for b in (32, 64, 128)]
  fits = {name: drift.collapse_fit(arms, name) for name in drift.SCALINGS}
  best = fits["eta^2 t / B"]
  assert best.r2 == pytest.approx(1.0, abs=1e-9) and best.rms < 1e-6
  assert best.amplitude == pytest.approx(40, rel=1e-6)
  assert best.scale == pytest.approx(0.05, rel=1e-6)
  for name in ("eta t / B", "eta^2 t", "t"):
    assert fits[name].r2 < 0.95 and fits[name].rms > 1.0, name
