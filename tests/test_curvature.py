"""Curvature metrics against dense Hessians and closed forms (float64)."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flatness.curvature import fisher
from flatness.curvature import hessian as hs
from flatness.curvature import sharpness
from flatness.curvature import spectrum
from flatness.curvature import trace
from flatness.model import enlargement as enlarge_lib
from flatness.model import masking
from flatness.model import tokens as tok
from flatness.model.objectives import Objective
from flatness.model.transformer import Transformer, TransformerConfig, init_params

from curvature_problems import flat_hessian, population_problem


@pytest.fixture(scope="module", autouse=True)
def x64():
  with jax.enable_x64(True):
    yield


def _mlp_problem(seed=0, n=64, d=5, h=6, c=3):
  k = jax.random.split(jax.random.key(seed), 4)
  params = {"w1": jax.random.normal(k[0], (d, h)), "b1": jax.random.normal(k[1], (h,)) * 0.1,
            "w2": jax.random.normal(k[2], (h, c))}
  x = jax.random.normal(k[3], (n, d))
  y = jax.random.randint(jax.random.fold_in(k[3], 1), (n,), 0, c)

  def logits_fn(p, xb=x):
    return jnp.tanh(xb @ p["w1"] + p["b1"]) @ p["w2"]

  def loss_fn(p):
    lg = logits_fn(p)
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(lg), y[:, None], 1))
  return params, loss_fn, logits_fn


def _transformer_problem(seed=0):
  cfg = TransformerConfig(vocab_size=8, seq_len=6, hidden_size=4, num_layers=1, num_heads=2,
                          mlp_dim=8, dropout_rate=0.0, attention_dropout_rate=0.0,
                          dtype="float64", param_dtype="float64")
  obj = Objective(Transformer(cfg), masking.MaskingSpec(rate=0.5, max_predictions=2))
  params = init_params(cfg, jax.random.key(seed))
  params = jax.tree.map(lambda x: x * 5 if x.ndim > 1 else x, params)   # less trivial curvature
  rng = np.random.default_rng(seed)
  raw = dict(tokens=rng.integers(0, 4, (6, 4)).astype(np.int32),
             lengths=rng.integers(2, 5, 6).astype(np.int32))
  batch = {k: v for k, v in obj.prepare(jax.random.key(1), raw).items() if v is not None}
  return cfg, obj, params, batch


@pytest.fixture(scope="module")
def transformer():
  cfg, obj, params, batch = _transformer_problem()
  loss_fn = lambda p: obj.loss(p, batch)
  dense, _, _ = flat_hessian(loss_fn, params)
  return dict(cfg=cfg, obj=obj, params=params, batch=batch, loss_fn=loss_fn, dense=dense)


@pytest.mark.parametrize("problem,method", [("mlp", m) for m in hs.HVP_METHODS]
                         + [("transformer", m) for m in hs.HVP_METHODS])
def test_hvp_matches_dense_hessian(problem, method, transformer):
  if problem == "mlp":
    params, loss_fn, _ = _mlp_problem()
    dense, flat, unravel = flat_hessian(loss_fn, params)
  else:
    params, loss_fn, dense = transformer["params"], transformer["loss_fn"], transformer["dense"]
    flat, unravel = jax.flatten_util.ravel_pytree(params)
  v = jax.random.normal(jax.random.key(3), flat.shape, flat.dtype)
  prod = jax.jit(functools.partial(hs.hvp, loss_fn, method=method))
  out = jax.flatten_util.ravel_pytree(prod(params, unravel(v)))[0]
  np.testing.assert_allclose(out, dense @ v, rtol=1e-10, atol=1e-12 * np.abs(dense @ v).max())


def test_linearized_chunk_matches_dense_hessian(transformer):
  """One linearisation, its tangent map vmapped over a chunk of probes: each product is
  the dense Hessian's."""
  params, loss_fn, dense = transformer["params"], transformer["loss_fn"], transformer["dense"]
  flat, unravel = jax.flatten_util.ravel_pytree(params)
  vs = jax.random.normal(jax.random.key(4), (3,) + flat.shape, flat.dtype)
  out = jax.jit(functools.partial(hs.hvps, loss_fn, method="linearized"))(
      params, jax.vmap(unravel)(vs))
  got = jax.vmap(lambda t: jax.flatten_util.ravel_pytree(t)[0])(out)
  want = vs @ dense
  np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12 * np.abs(want).max())


def test_trace_is_the_same_linearized_and_across_batches():
  """Same key, probes and batches: the same estimate, errors and breakdown (to rounding)
  with the default products per batch, the linearized ones, and chunks filled with
  (batch, probe) pairs across batches (3 batches x 2 probes in chunks of 4: a chunk
  spans two batches and the last one is padded). A small MLP keeps the compiles cheap;
  both product paths are checked against the dense Hessian above."""
  params, loss_fn, data = population_problem(n=24)
  batches = [jax.tree.map(lambda a, i=i: a[8 * i:8 * (i + 1)], data) for i in range(3)]
  ests = [trace.hessian_trace(loss_fn, params, jax.random.key(6), batches=batches,
                              num_probes=2, chunk=4, hvp=m, across_batches=a)
          for m, a in (("forward_over_reverse", False), ("linearized", False),
                       ("forward_over_reverse", True), ("linearized", True))]
  ref = ests[0]
  assert ref.error == "population" and ref.num_matvecs == 6
  for est in ests[1:]:
    np.testing.assert_allclose([est.value, est.stderr], [ref.value, ref.stderr], rtol=1e-10)
    assert est.per_module.keys() == ref.per_module.keys()
    np.testing.assert_allclose([est.per_module[k] for k in ref.per_module],
                               [ref.per_module[k] for k in ref.per_module],
                               rtol=1e-10, atol=1e-12 * abs(ref.value))
    assert est.num_matvecs == ref.num_matvecs


def test_trace_does_not_depend_on_the_order_of_differentiation(transformer):
  """The same probes give the same estimate with the default HVP and the one the
  benchmark recommends for chunks (each is checked against the dense Hessian above)."""
  values = [trace.hessian_trace(transformer["loss_fn"], transformer["params"],
                                jax.random.key(5), num_probes=4, chunk=4, hvp=m).value
            for m in ("forward_over_reverse", "reverse_over_forward")]
  np.testing.assert_allclose(values, values[0], rtol=1e-10)
  with pytest.raises(ValueError, match="hvp must be one of"):
    trace.hessian_trace(transformer["loss_fn"], transformer["params"], jax.random.key(5),
                        num_probes=2, hvp="backward")


def test_hutchinson_is_unbiased_and_its_error_shrinks(transformer):
  exact = np.trace(transformer["dense"])
  ests = {(n, kind): trace.hessian_trace(transformer["loss_fn"], transformer["params"],
                                         jax.random.key(0), num_probes=n, probe=kind, chunk=32)
          for n, kind in ((32, "rademacher"), (512, "rademacher"), (512, "gaussian"))}
  for est in ests.values():
    assert abs(est.value - exact) < 3 * est.stderr
  ratio = ests[32, "rademacher"].stderr / ests[512, "rademacher"].stderr
  assert 4 * 0.6 < ratio < 4 * 1.5          # 1 / sqrt(probes)
  assert ests[512, "rademacher"].num_matvecs == 512


def test_trace_error_covers_the_draw_of_evaluation_batches():
  """Coverage: over independent evaluation seeds, (estimate - truth) / stderr ~ N(0, 1).

  The truth is the trace of the population Hessian (dense, exact). Each seed draws
  16 batches of 8 examples (with replacement, so each batch's expected Hessian is the
  population's) and one probe per batch: the paper's scheme. The population error
  covers the batches; the error conditional on the batches does not, and undercovers.
  """
  params, loss_fn, data = population_problem()
  exact = np.trace(flat_hessian(lambda p: loss_fn(p, data), params)[0])
  z = {"population": [], "conditional": []}
  for seed in range(40):
    idx = np.random.default_rng(seed).integers(0, len(data["y"]), (16, 8))
    batches = [jax.tree.map(lambda a: a[i], data) for i in idx]
    for error in z:
      est = trace.hessian_trace(loss_fn, params, jax.random.key(seed), batches=batches,
                                num_probes=1 if error == "population" else 4, chunk=4,
                                error=error)
      assert est.error == error and est.num_matvecs == 16 * (1 if error == "population" else 4)
      z[error].append((est.value - exact) / est.stderr)
  zp, zc = np.array(z["population"]), np.array(z["conditional"])
  assert abs(zp.mean()) < 0.5                       # unbiased (s.e. of the mean ~0.16)
  assert 0.7 < zp.std() < 1.4                       # errors the size of the spread
  assert np.mean(np.abs(zp) < 2.0) >= 0.85          # ~95% nominal, t with 15 d.o.f.
  assert zc.std() > 1.5                             # probes-only errors are too small


def test_population_errors_need_independent_batches():
  params, loss_fn, data = population_problem(n=16)
  one = [data]
  with pytest.raises(ValueError, match="at least 2 independent batches"):
    trace.hessian_trace(loss_fn, params, jax.random.key(0), batches=one, error="population")
  assert trace.hessian_trace(loss_fn, params, jax.random.key(0), batches=one,
                             num_probes=4).error == "conditional"
  two = [jax.tree.map(lambda a: a[:8], data), jax.tree.map(lambda a: a[8:], data)]
  with pytest.raises(ValueError, match="method='hutchinson'"):
    trace.hessian_trace(loss_fn, params, jax.random.key(0), batches=two, method="hutchpp",
                        error="population")
  logits = lambda p, b: (jnp.tanh(b["x"] @ p["w1"] + p["b1"]) @ p["w2"], jnp.ones(len(b["y"])))
  for est in (fisher.fisher_trace(logits, params, jax.random.key(0), batches=two,
                                  num_samples=2),
              fisher.ggn_trace(logits, params, jax.random.key(0), batches=two, num_probes=2)):
    assert est.error == "population" and np.isfinite(est.stderr)
  _, se = sharpness.average_sharpness(loss_fn, params, jax.random.key(0), 0.01, batches=two,
                                      num_samples=2)
  assert np.isfinite(se)


def test_per_module_breakdown_and_selection(transformer):
  params, loss_fn, dense = transformer["params"], transformer["loss_fn"], transformer["dense"]
  est = trace.hessian_trace(loss_fn, params, jax.random.key(1), num_probes=64)
  assert sum(v for v, _ in est.per_module.values()) == pytest.approx(est.value, rel=1e-9)
  assert set(est.per_module) == {"embed", "layer_0", "final_ln", "head", "pooler"}
  assert est.per_module["pooler"] == (0.0, 0.0)          # the MLM loss does not use it
  # The paper's selection drops the pooler and the output bias: exactly the trace of that block.
  names = [hs.path_name(p) for p, x in jax.tree_util.tree_flatten_with_path(params)[0]
           for _ in range(x.size)]
  keep = np.array([hs.paper_selection(n) for n in names])
  sel = trace.hessian_trace(loss_fn, params, jax.random.key(1), num_probes=512,
                            include=hs.paper_selection, chunk=32)
  exact_block = np.trace(dense[np.ix_(keep, keep)])
  assert abs(sel.value - exact_block) < 3 * sel.stderr
  assert exact_block != pytest.approx(np.trace(dense))


def test_variance_reduced_estimators_beat_hutchinson_on_a_decaying_spectrum():
  n = 60
  q, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(n, n)))
  a = jnp.asarray(q @ np.diag(100.0 * 0.6 ** np.arange(n)) @ q.T)
  loss_fn = lambda p: 0.5 * p["x"] @ a @ p["x"]
  params = {"x": jnp.zeros(n)}
  exact = float(jnp.trace(a))
  err = {m: [] for m in trace.METHODS}
  for seed in range(12):
    for m in trace.METHODS:
      est = trace.hessian_trace(loss_fn, params, jax.random.key(seed), num_probes=24, method=m)
      err[m].append(abs(est.value - exact))
      assert est.num_matvecs <= 24
  assert np.mean(err["hutchpp"]) < 0.5 * np.mean(err["hutchinson"])
  assert np.mean(err["xtrace"]) < 0.5 * np.mean(err["hutchinson"])


@pytest.mark.parametrize("num_iters", [40, 10_000])
def test_top_eigenvalues_match_eigvalsh(transformer, num_iters):
  """Also when Lanczos runs past the Krylov space (zero eigenvalues: the pooler, unused)."""
  exact = np.linalg.eigvalsh(transformer["dense"])
  out = spectrum.top_eigenvalues(transformer["loss_fn"], transformer["params"], jax.random.key(0),
                                 k=4, num_iters=num_iters)
  np.testing.assert_allclose(out["largest"], exact[::-1][:4], rtol=1e-6)
  assert out["smallest"] == pytest.approx(exact[0], rel=1e-6)


def test_spectral_density_moments(transformer):
  dense = transformer["dense"]
  n = len(dense)
  dens = spectrum.spectral_density(transformer["loss_fn"], transformer["params"],
                                   jax.random.key(0), num_probes=24, num_iters=30)
  for p, exact in ((1, np.trace(dense) / n), (2, np.trace(dense @ dense) / n)):
    est, se = dens.moment(p)
    assert abs(est - exact) < 4 * se
  np.testing.assert_allclose(dens.weights.sum(axis=1), 1.0, atol=1e-8)
  assert np.trapezoid(dens.density, dens.grid) == pytest.approx(1.0, abs=0.02)


def test_fisher_equals_hessian_at_the_truth_and_not_elsewhere():
  """Well-specified softmax MLP: data drawn from the model at theta*."""
  params, _, logits_fn = _mlp_problem(seed=1, n=1, d=3, h=4, c=3)
  params = jax.tree.map(lambda x: 1.5 * x, params)
  k = jax.random.key(7)
  x = jax.random.normal(k, (20000, 3))
  y = jax.random.categorical(jax.random.fold_in(k, 1), logits_fn(params, x))

  def loss_at(p):
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits_fn(p, x)), y[:, None], 1))

  lf = lambda p: (logits_fn(p, x), jnp.ones(x.shape[0]))
  for point, same in ((params, True), (jax.tree.map(lambda v: 0.3 * v, params), False)):
    exact_h = np.trace(flat_hessian(loss_at, point)[0])
    est = fisher.fisher_trace(lf, point, jax.random.key(0), num_samples=256, chunk=16)
    per_ex = fisher.fisher_trace(lambda p: (logits_fn(p, x[:200]), jnp.ones(200)), point,
                                 jax.random.key(0), num_samples=4, method="per_example")
    assert per_ex.value > 0
    # The Hessian of 20,000 samples is within O(1/sqrt(n)) of the population one: 2% slack.
    if same:
      assert abs(est.value - exact_h) < 4 * est.stderr + 0.02 * exact_h
    else:
      assert abs(est.value - exact_h) > 5 * est.stderr + 0.02 * exact_h


def test_gradient_noise_equals_hessian_with_sampled_labels_and_vanishes_with_exact_ones():
  """The premise of the label-noise mechanism, on a well-specified softmax MLP at its
  truth theta*: the second moment of per-example gradients with the data's sampled
  labels has the trace of the (dense) Hessian; with the exact conditionals as targets it
  is 0. Away from theta* neither holds."""
  params, _, logits_fn = _mlp_problem(seed=1, n=1, d=3, h=4, c=3)
  params = jax.tree.map(lambda x: 1.5 * x, params)
  k = jax.random.key(7)
  x = jax.random.normal(k, (20000, 3))
  y = jax.random.categorical(jax.random.fold_in(k, 1), logits_fn(params, x))
  truth = jax.nn.softmax(logits_fn(params, x))
  batches = [dict(x=x[i::4], y=y[i::4], q=truth[i::4]) for i in range(4)]
  lf = lambda p, b: (logits_fn(p, b["x"]), jnp.ones(b["x"].shape[0]))
  sampled = lambda b: jax.nn.one_hot(b["y"], 3)
  exact = lambda b: b["q"]

  def loss_at(p):
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits_fn(p, x)), y[:, None], 1))

  for point, at_truth in ((params, True), (jax.tree.map(lambda v: 0.3 * v, params), False)):
    exact_h = np.trace(flat_hessian(loss_at, point)[0])
    noise = fisher.gradient_noise_trace(lf, point, jax.random.key(0), batches=batches,
                                        targets_fn=sampled, num_samples=64, chunk=16)
    clean = fisher.gradient_noise_trace(lf, point, jax.random.key(0), batches=batches,
                                        targets_fn=exact, num_samples=8)
    if at_truth:
      assert abs(noise.value - exact_h) < 4 * noise.stderr + 0.02 * exact_h
      assert clean.value < 1e-10
    else:
      assert abs(noise.value - exact_h) > 5 * noise.stderr + 0.02 * exact_h
      assert clean.value > 0.05 * noise.value


def test_ggn_trace_matches_the_dense_gauss_newton_matrix():
  params, _, logits_fn = _mlp_problem(seed=2, n=40)
  x = jax.random.normal(jax.random.key(5), (40, 5))
  flat, unravel = jax.flatten_util.ravel_pytree(params)
  jac = np.asarray(jax.jacobian(lambda f: logits_fn(unravel(f), x))(flat))   # [n, c, P]
  p = np.asarray(jax.nn.softmax(logits_fn(params, x)))
  g = sum(jac[i].T @ (np.diag(p[i]) - np.outer(p[i], p[i])) @ jac[i] for i in range(40)) / 40
  est = fisher.ggn_trace(lambda q: (logits_fn(q, x), jnp.ones(40)), params, jax.random.key(0),
                         num_probes=128)
  assert abs(est.value - np.trace(g)) < 3 * est.stderr


def test_sharpness_closed_forms_on_a_quadratic():
  n = 8
  rng = np.random.default_rng(0)
  q, _ = np.linalg.qr(rng.normal(size=(n, n)))
  a = q @ np.diag(np.linspace(0.5, 6.0, n)) @ q.T
  theta0 = rng.normal(size=n) + 2.0
  loss_fn = lambda p: 0.5 * (p["x"] - theta0) @ a @ (p["x"] - theta0)
  params = {"x": jnp.asarray(theta0)}
  key = jax.random.key(0)
  rho = 0.3
  worst = sharpness.worst_case_sharpness(loss_fn, params, key, rho, steps=60)
  assert worst == pytest.approx(0.5 * rho ** 2 * np.linalg.eigvalsh(a)[-1], rel=1e-4)
  d = np.diag(np.abs(theta0))
  adaptive = sharpness.worst_case_sharpness(loss_fn, params, key, rho, steps=60, adaptive=True)
  assert adaptive == pytest.approx(0.5 * rho ** 2 * np.linalg.eigvalsh(d @ a @ d)[-1], rel=1e-4)
  avg, se = sharpness.average_sharpness(loss_fn, params, key, 0.1, num_samples=400)
  assert abs(avg - 0.5 * 0.01 * np.trace(a)) < 4 * se


def test_sharpness_is_non_negative_and_grows_with_rho(transformer):
  values = [sharpness.worst_case_sharpness(transformer["loss_fn"], transformer["params"],
                                           jax.random.key(0), rho, steps=5)
            for rho in (0.0, 0.01, 0.05, 0.2)]
  assert values[0] == 0.0 and all(v >= 0 for v in values)
  assert values == sorted(values) and values[-1] > values[1]


@pytest.mark.parametrize("tied", [True, False])
def test_enlargement_preserves_the_function(tied):
  small = TransformerConfig(vocab_size=12, seq_len=6, hidden_size=8, num_layers=1, num_heads=2,
                            mlp_dim=16, dropout_rate=0.0, attention_dropout_rate=0.0,
                            tie_embeddings=tied, dtype="float64", param_dtype="float64")
  large = TransformerConfig(vocab_size=12, seq_len=8, hidden_size=32, num_layers=3, num_heads=4,
                            mlp_dim=48, dropout_rate=0.0, attention_dropout_rate=0.0,
                            tie_embeddings=tied, dtype="float64", param_dtype="float64")
  params = init_params(small, jax.random.key(0))
  params = jax.tree.map(lambda x: x + 0.3 * jax.random.normal(jax.random.key(1), x.shape), params)
  big = enlarge_lib.enlarge(params, small, large)
  assert jax.tree.structure(big) == jax.tree.structure(init_params(large, jax.random.key(0)))
  ids = tok.encode(np.random.default_rng(0).integers(0, 8, (5, 4)), np.array([1, 2, 3, 4, 4]), 6)
  out_small = Transformer(small).apply({"params": params}, ids)
  out_large = Transformer(large).apply({"params": big}, ids)
  np.testing.assert_allclose(out_large, out_small, rtol=1e-10, atol=1e-10)
  pooled = Transformer(large).apply({"params": big}, ids, method=Transformer.pool)
  np.testing.assert_allclose(pooled, np.tile(Transformer(small).apply(
      {"params": params}, ids, method=Transformer.pool), (1, 4)), atol=1e-10)
  with pytest.raises(ValueError, match="hidden_size"):
    enlarge_lib.enlarge(params, small, TransformerConfig(**{**large.__dict__, "hidden_size": 36,
                                                            "num_heads": 4}))
