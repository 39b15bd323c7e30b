"""Linear probes, fine-tuning and the adversarial objective against independent truths."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.optimize
import scipy.special
import scipy.stats

from flatness.model import masking
from flatness.model.objectives import Objective
from flatness.model.transformer import Transformer, TransformerConfig, init_params
from flatness.runtime import sharding
from flatness.training import adversarial
from flatness.training import train_step as train_step_lib
from flatness.transfer import downstream
from flatness.transfer import finetune
from flatness.transfer import probe

_FAST = probe.ProbeConfig(l2_grid=(1e-3, 1e-1))


def _linear_task(seed, n, d=8, k=4, temperature=None):
  rng = np.random.default_rng(seed)
  w = rng.normal(size=(d, k))
  x = rng.normal(size=(n, d)).astype(np.float32)
  scores = x @ w
  if temperature is None:
    return x, scores.argmax(1), scores.argmax(1)
  p = np.exp((scores - scores.max(1, keepdims=True)) / temperature)
  p /= p.sum(1, keepdims=True)
  y = (p.cumsum(1) > rng.random((n, 1))).argmax(1)
  return x, y, scores.argmax(1)      # labels, and the Bayes-optimal prediction


def _gaussian_task(seed, n, d=16, k=4):
  """Classes with Gaussian features sharing one covariance, and the exact posteriors.

  p(k | x) is proportional to prior_k exp(mu_k^T S^-1 x - mu_k^T S^-1 mu_k / 2): the
  Bayes classifier is linear, and with the posteriors the accuracy any decision
  rule has in expectation on given rows is exact: mean_i p(rule(x_i) | x_i).
  """
  rng = np.random.default_rng(seed)
  prior = rng.dirichlet(np.full(k, 5.0))
  mu = rng.normal(scale=0.6, size=(k, d))
  a = rng.normal(size=(d, d)) / np.sqrt(d)
  cov = a @ a.T + 0.5 * np.eye(d)
  y = rng.choice(k, n, p=prior)
  x = mu[y] + rng.multivariate_normal(np.zeros(d), cov, n)
  prec = np.linalg.inv(cov)
  log_post = np.log(prior) + x @ prec @ mu.T - 0.5 * np.sum(mu @ prec * mu, 1)
  return x.astype(np.float32), y, scipy.special.softmax(log_post, 1)


def test_probe_reaches_bayes_accuracy_on_a_linear_task():
  # Noise-free: the label is argmax of a linear function, so the Bayes accuracy is 1.
  x, y, _ = _linear_task(0, 6000)
  r = probe.probe_accuracy(x[:4000], y[:4000], x[4000:], y[4000:], 4, seeds=2, num_train=3000,
                           cfg=_FAST)
  assert r["acc"] >= 0.97
  # Noisy labels drawn from a softmax: the Bayes predictor argmax(x W) is the best possible;
  # the probe matches its accuracy on the same test labels.
  x, y, bayes = _linear_task(1, 12000, temperature=1.0)
  r = probe.probe_accuracy(x[:8000], y[:8000], x[8000:], y[8000:], 4, seeds=2, num_train=3000,
                           cfg=_FAST)
  bayes_acc = np.mean(bayes[8000:] == y[8000:])
  assert 0.5 < bayes_acc < 0.95
  assert abs(r["acc"] - bayes_acc) < 0.02
  assert r["grad_norm"] < _FAST.tol


def test_probe_matches_the_bayes_classifier_of_gaussian_classes():
  x, y, post = _gaussian_task(0, 9000)
  p = probe.fit_probe(x[:4000], y[:4000], 4, probe.ProbeConfig(l2_grid=(1e-4, 1e-2, 1.0)))
  post, y = post[4000:], y[4000:]
  rows = np.arange(len(y))
  ours, bayes = p.predict(x[4000:]), post.argmax(1)
  # Expected accuracies on these rows, from the true posteriors (no label noise in them).
  p_ours, p_bayes = post[rows, ours], post[rows, bayes]
  gap = np.mean(p_bayes - p_ours)
  assert 0 <= gap < 0.01                                # the decision rule is nearly Bayes'
  # Realised accuracies on the drawn labels: their difference has mean -gap and, row by row,
  # the variance of 1[ours = y] - 1[bayes = y] given x (zero where the two agree).
  var = np.where(ours == bayes, 0.0, p_ours + p_bayes - (p_ours - p_bayes) ** 2)
  diff = np.mean(ours == y) - np.mean(bayes == y)
  assert abs(diff + gap) <= 3 * np.sqrt(var.sum()) / len(y) + 1e-12
  assert 0.8 < np.mean(bayes == y) < 0.95                # not a trivial task


def test_probe_is_at_chance_on_shuffled_labels():
  x, y, _ = _linear_task(2, 6000)
  y_train = np.random.default_rng(3).permutation(y[:4000])
  r = probe.probe_accuracy(x[:4000], y_train, x[4000:], y[4000:], 4, seeds=2, num_train=3000,
                           cfg=_FAST)
  chance = np.max(np.bincount(y[4000:])) / 2000   # at most the majority class
  assert r["acc"] <= chance + 4 * np.sqrt(0.25 / 2000)
  assert r["acc_stderr"] >= 0


def test_probe_is_converged_more_iterations_change_nothing():
  x, y, _ = _linear_task(4, 4000, temperature=0.5)
  cfg = probe.ProbeConfig(l2_grid=(1e-3,), max_iters=300)
  p = probe.fit_probe(x[:2000], y[:2000], 4, cfg)
  assert p.grad_norm < cfg.tol and p.iters < cfg.max_iters     # stopped by the tolerance
  q = probe.fit_probe(x[:2000], y[:2000], 4, dataclasses.replace(cfg, max_iters=600))
  np.testing.assert_array_equal(p.predict(x[2000:]), q.predict(x[2000:]))
  np.testing.assert_array_equal(p.w, q.w)
  # A tolerance ten times tighter is reachable in float32 and changes no prediction.
  t = probe.fit_probe(x[:2000], y[:2000], 4, dataclasses.replace(cfg, tol=1e-6))
  assert t.grad_norm < 1e-6
  np.testing.assert_array_equal(p.predict(x[2000:]), t.predict(x[2000:]))
  # Rows with a class missing: it is never predicted, and the solve still converges.
  keep = y != 3
  m = probe.fit_probe(x[keep][:2000], y[keep][:2000], 4, cfg)
  assert m.grad_norm < cfg.tol and not np.any(m.predict(x) == 3)


def _penalised_objective(x, y, k, l2):
  """F of the probe in float64 numpy over ``theta = [[W]; [b]]`` ([D + 1, k], ravelled)."""
  x = np.asarray(x, np.float64)
  z = np.concatenate([(x - x.mean(0)) / x.std(0), np.ones((len(x), 1))], 1)
  n, d1 = z.shape
  onehot, penal = np.eye(k)[y], np.r_[np.ones(d1 - 1), 0.0][:, None]

  def f(theta):
    t = theta.reshape(d1, k)
    logits = z @ t
    value = (np.mean(scipy.special.logsumexp(logits, 1) - logits[np.arange(n), y])
             + 0.5 * l2 * np.sum(penal * t ** 2))
    return value, (z.T @ (scipy.special.softmax(logits, 1) - onehot) / n + l2 * penal * t).ravel()

  def hessian(theta):
    p = scipy.special.softmax(z @ theta.reshape(d1, k), 1)
    s = np.einsum("ik,km->ikm", p, np.eye(k)) - np.einsum("ik,im->ikm", p, p)
    h = np.einsum("ij,il,ikm->jklm", z, z, s).reshape(d1 * k, d1 * k) / n
    return h + l2 * np.diag(np.repeat(penal[:, 0], k))

  return f, hessian


@pytest.mark.parametrize("n,d,l2", [(300, 6, 1e-2), (80, 120, 1e-3)])  # D < n, and D > n
def test_probe_optimum_matches_scipy_in_float64(n, d, l2):
  rng = np.random.default_rng(0)
  x = (rng.normal(size=(n, d)) * rng.uniform(0.1, 10, d) + 3).astype(np.float32)
  y = (x[:, :3] @ rng.normal(size=(3, 3)) + rng.normal(size=(n, 3))).argmax(1)
  ours = probe.fit_logistic(x, y, 4, l2=l2)      # class 3 never occurs: its logit is -inf
  f, hessian = _penalised_objective(x, y, 3, l2)
  want = scipy.optimize.minimize(f, np.zeros((d + 1) * 3), jac=True, method="L-BFGS-B",
                                 options=dict(maxiter=100_000, gtol=1e-12, ftol=1e-16)).x
  theta = np.concatenate([ours.w[:, :3], ours.b[None, :3]]).astype(np.float64).ravel()
  g = np.linalg.norm(f(theta)[1])
  assert ours.grad_norm < probe.ProbeConfig().tol                  # first-order condition,
  assert g == pytest.approx(ours.grad_norm, rel=1e-2)              # checked independently
  assert np.all(ours.w[:, 3] == 0) and np.all(np.isneginf(ours.logits(x)[:, 3]))
  # Strong convexity (off the bias shift softmax ignores): |theta - theta*| <= |g| / mu.
  eig = np.linalg.eigvalsh(hessian(want))
  mu = eig[eig > 1e-9 * eig[-1]].min()
  shift = np.r_[np.zeros(d * 3), np.ones(3)] / np.sqrt(3)
  err = theta - want
  err -= shift * (shift @ err)
  assert np.linalg.norm(err) <= 2 * g / mu
  assert np.linalg.norm(err) < 1e-2 * np.linalg.norm(want)


def test_seeds_redraw_the_training_subset_from_a_fixed_pool():
  a, b = probe.subset_rows(6000, 2000, 0, 1), probe.subset_rows(6000, 2000, 0, 1)
  np.testing.assert_array_equal(a, b)                       # a function of (seed, s) only
  assert len(np.unique(a)) == 2000 and a.min() >= 0 and a.max() < 6000
  assert not np.array_equal(np.sort(a), np.sort(probe.subset_rows(6000, 2000, 0, 2)))
  assert not np.array_equal(np.sort(a), np.sort(probe.subset_rows(6000, 2000, 1, 1)))
  with pytest.raises(ValueError, match="num_train"):
    probe.subset_rows(100, 101, 0, 0)
  x, y, _ = _linear_task(5, 3000, temperature=1.0)
  kw = dict(seeds=4, num_train=150, cfg=_FAST, seed=7)
  r = probe.probe_accuracy(x[:2000], y[:2000], x[2000:], y[2000:], 4, **kw)
  assert len(set(r["per_seed"])) > 1                        # different subsets, different fits
  again = probe.probe_accuracy(x[:2000], y[:2000], x[2000:], y[2000:], 4, **kw)
  assert again["per_seed"] == r["per_seed"]
  # Mean, standard error and the 95% Student-t interval over the seeds, by hand.
  v = np.asarray(r["per_seed"])
  se = v.std(ddof=1) / 2
  assert r["acc"] == pytest.approx(v.mean())
  assert r["acc_stderr"] == pytest.approx(se)
  assert r["acc_lo"] == pytest.approx(v.mean() - scipy.stats.t.ppf(0.975, 3) * se)
  assert r["acc_hi"] == pytest.approx(v.mean() + scipy.stats.t.ppf(0.975, 3) * se)
  assert len(r["l2"]) == 4 and len(set(r["l2"])) == 1 and r["l2"][0] in _FAST.l2_grid


def test_paired_difference_is_a_t_interval_of_per_seed_differences():
  a, b = [0.71, 0.74, 0.69, 0.73, 0.72], [0.70, 0.71, 0.69, 0.70, 0.69]
  d = np.subtract(a, b)
  half = scipy.stats.t.ppf(0.95, 4) * d.std(ddof=1) / np.sqrt(5)    # 90% two-sided
  r = probe.paired_difference(a, b, level=0.9)
  assert r["mean"] == pytest.approx(0.02)
  assert r["stderr"] == pytest.approx(d.std(ddof=1) / np.sqrt(5))
  assert (r["lo"], r["hi"]) == pytest.approx((0.02 - half, 0.02 + half))
  with pytest.raises(ValueError, match="equal length"):
    probe.paired_difference(a, b[:4])


def test_downstream_sizes_are_checked():
  with pytest.raises(ValueError, match="num_train=7, num_pool=6"):
    downstream.check_sizes(num_pool=6, num_train=7, num_test=1)


def test_ridge_validation_loss_matches_primal_ridge_in_numpy():
  rng = np.random.default_rng(0)
  f, y = rng.normal(size=(16, 5)), rng.integers(0, 3, 16)
  with jax.enable_x64(True):
    got = float(adversarial.ridge_validation_loss(jnp.asarray(f), jnp.asarray(y), 3, ridge=0.1,
                                                  fit_fraction=0.75))
  fn = f / np.linalg.norm(f, axis=1, keepdims=True)
  t = np.eye(3)[y] - 1 / 3
  w = np.linalg.solve(fn[:12].T @ fn[:12] + 0.1 * np.eye(5), fn[:12].T @ t[:12])   # primal form
  want = np.mean(np.sum((fn[12:] @ w - t[12:]) ** 2, 1))
  assert got == pytest.approx(want, rel=1e-10)


def _tiny(dtype="float32"):
  cfg = TransformerConfig(vocab_size=12, seq_len=8, hidden_size=8, num_layers=1, num_heads=2,
                          mlp_dim=16, dropout_rate=0.0, attention_dropout_rate=0.0,
                          dtype=dtype, param_dtype=dtype)
  obj = Objective(Transformer(cfg), masking.MaskingSpec(rate=0.3, max_predictions=2))
  rng = np.random.default_rng(0)
  raw = dict(tokens=rng.integers(0, 8, (16, 6)).astype(np.int32),
             lengths=rng.integers(2, 7, 16).astype(np.int32),
             label_A=rng.integers(0, 3, 16).astype(np.int32))
  return cfg, obj, raw


@pytest.mark.parametrize("kind", probe.FEATURES)
def test_encoder_features_are_what_the_probe_reads(kind):
  cfg, obj, raw = _tiny()
  params = init_params(cfg, jax.random.key(0))
  want = probe.features(obj, params, raw["tokens"], raw["lengths"], kind=kind,
                        mesh=sharding.make_mesh(), batch_size=8)
  got = probe.encoder_features(obj, params, raw["tokens"], raw["lengths"], kind)
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-6)
  width = {"concat": cfg.seq_len - 2, "mean": 1, "cls": 1}[kind]
  assert want.shape == (16, width * cfg.hidden_size)
  if kind == "concat":   # words past a sentence's length contribute zeros
    blocks = want.reshape(16, cfg.seq_len - 2, -1)
    past = np.arange(cfg.seq_len - 2)[None, :] >= raw["lengths"][:, None]
    assert np.all(blocks[past] == 0) and np.all(np.any(blocks[~past] != 0, -1))


def test_adversarial_gradient_matches_finite_differences():
  with jax.enable_x64(True):
    cfg, obj, raw = _tiny("float64")
    params = init_params(cfg, jax.random.key(0))
    transform = adversarial.make_loss_transform(
        obj, adversarial.AdversarialConfig(task="A", num_classes=3, lam=2.0, ridge=1e-2))
    prepared = {k: v for k, v in obj.prepare(jax.random.key(1), raw).items() if v is not None}

    def objective(p):
      return transform(p, prepared, raw, None, obj.loss(p, prepared))

    g = jax.grad(objective)(params)
    v = jax.tree.map(lambda x: jax.random.normal(jax.random.key(x.size), x.shape), params)
    eps = 1e-5
    plus = objective(jax.tree.map(lambda a, b: a + eps * b, params, v))
    minus = objective(jax.tree.map(lambda a, b: a - eps * b, params, v))
    fd = (plus - minus) / (2 * eps)
    analytic = sum(jnp.vdot(a, b) for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(v)))
    assert float(analytic) == pytest.approx(float(fd), rel=1e-6)
    assert float(objective(params)) < float(obj.loss(params, prepared))   # R > 0 is subtracted


def test_adversarial_with_zero_lambda_is_plain_pretraining():
  cfg, obj, raw = _tiny()
  tx = optax.adamw(1e-2)
  state = train_step_lib.init_state(init_params(cfg, jax.random.key(0)), tx)
  outs = {}
  for lam in (0.0, 1.0, None):
    transform = None if lam is None else adversarial.make_loss_transform(
        obj, adversarial.AdversarialConfig(task="A", num_classes=3, lam=lam))
    step = jax.jit(train_step_lib.make_train_step(obj, tx, loss_transform=transform))
    outs[lam] = step(state, raw, jax.random.key(3))[0].params
  same = jax.tree.map(lambda a, b: np.array_equal(a, b), outs[0.0], outs[None])
  assert all(jax.tree.leaves(same))
  differ = jax.tree.map(lambda a, b: not np.allclose(a, b), outs[1.0], outs[None])
  assert any(jax.tree.leaves(differ))


def test_finetuning_learns_a_task_the_encoder_can_see():
  """Label = whether the first word is in the upper half of the vocabulary: learnable."""
  cfg, obj, _ = _tiny()
  rng = np.random.default_rng(0)
  toks = rng.integers(0, 8, (640, 6)).astype(np.int32)
  lens = rng.integers(2, 7, 640).astype(np.int32)
  labels = (toks[:, 0] >= 4).astype(np.int32)
  params = init_params(cfg, jax.random.key(0))
  mesh = sharding.make_mesh()
  acc = finetune.finetune_accuracy(
      obj, params, (toks[:512], lens[:512], labels[:512]), (toks[512:], lens[512:], labels[512:]),
      2, jax.random.key(0), mesh=mesh,
      cfg=finetune.FinetuneConfig(epochs=15, batch_size=64, learning_rate=3e-3, dropout=False))
  assert acc >= 0.95
