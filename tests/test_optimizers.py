"""The optimizer factory: schedules, weight-decay mask, every optimizer, SAM's exact step."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flatness.training import optimizers

A = jnp.diag(jnp.array([3.0, 1.0, 0.5]))


def _quadratic(params):
  x = params["w"].ravel()[:3]
  return 0.5 * x @ A @ x + 0.0 * jnp.sum(params["b"])


def _params():
  return {"w": jnp.array([[1.0, -2.0, 0.5]]), "b": jnp.zeros(3)}


def _cfg(**fields):
  """A complete optimizer section (the library has no defaults of its own)."""
  base = dict(name="adamw", learning_rate=0.1, schedule="linear", warmup_steps=0,
              end_lr_factor=0.0, weight_decay=0.0, b1=0.9, b2=0.999, eps=1e-8, momentum=0.0,
              nesterov=False, clip_norm=0.0, sam_rho=0.05, sam_base="sgd")
  return dict(base, **fields)


def test_schedule_warmup_then_decay():
  cfg = _cfg(learning_rate=1.0, warmup_steps=10, schedule="linear", end_lr_factor=0.1)
  lr = optimizers.make_schedule(cfg, 110)
  assert float(lr(0)) == 0.0 and float(lr(5)) == pytest.approx(0.5)
  assert float(lr(10)) == pytest.approx(1.0) and float(lr(110)) == pytest.approx(0.1)
  assert float(lr(60)) == pytest.approx(0.55)
  cos = optimizers.make_schedule(dict(cfg, schedule="cosine"), 110)
  assert float(cos(60)) == pytest.approx(0.1 + 0.9 * 0.5, rel=1e-5)
  const = optimizers.make_schedule(dict(cfg, schedule="constant"), 110)
  assert float(const(100)) == pytest.approx(1.0)


def test_weight_decay_mask_skips_vectors():
  assert optimizers.decay_mask(_params()) == {"w": True, "b": False}


@pytest.mark.parametrize("name,extra", [("adamw", {}), ("adam", {}), ("sgd", {}),
                                        ("sgd", {"momentum": 0.9, "nesterov": True}),
                                        ("lamb", {}), ("adafactor", {}),
                                        ("sam", {"sam_base": "adamw"})])
def test_every_optimizer_minimises_a_quadratic(name, extra):
  cfg = _cfg(name=name, learning_rate=0.05, warmup_steps=0, schedule="constant",
             clip_norm=10.0, **extra)
  tx = optimizers.make_optimizer(cfg, 200)
  params = _params()
  state = tx.init(params)

  @jax.jit
  def step(params, state):
    grads = jax.grad(_quadratic)(params)
    updates, state = tx.update(grads, state, params, grad_fn=lambda p, _: jax.grad(_quadratic)(p))
    return jax.tree.map(jnp.add, params, updates), state

  start = _quadratic(params)
  for _ in range(200):
    params, state = step(params, state)
  assert _quadratic(params) < 0.05 * start


def test_sam_step_is_the_gradient_at_the_perturbed_point():
  """SGD-based SAM: theta' = theta - lr * grad L(theta + rho g / |g|)."""
  rho, lr = 0.3, 0.1
  tx = optimizers.make_optimizer(_cfg(name="sam", sam_base="sgd", sam_rho=rho, learning_rate=lr,
                                      warmup_steps=0, schedule="constant"), 10)
  params = _params()
  g = jax.grad(_quadratic)(params)
  updates, _ = tx.update(g, tx.init(params), params, grad_fn=lambda p, _: jax.grad(_quadratic)(p))
  norm = jnp.sqrt(sum(jnp.sum(x**2) for x in jax.tree.leaves(g)))
  perturbed = jax.tree.map(lambda p, gi: p + rho * gi / norm, params, g)
  expected = jax.tree.map(lambda gi: -lr * gi, jax.grad(_quadratic)(perturbed))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), updates, expected)


@pytest.mark.parametrize("cfg,match", [
    (dict(name="adamax"), "optimizer.name"),
    (dict(name="sam", sam_base="rmsprop"), "optimizer.sam_base"),
    (dict(name="sam", sam_rho=0.0), "optimizer.sam_rho"),
    (dict(name="adamw", schedule="step"), "optimizer.schedule"),
    (dict(name="adamw", clip_norm=-1.0), "optimizer.clip_norm"),
])
def test_bad_optimizer_config_names_the_field(cfg, match):
  with pytest.raises(ValueError, match=match):
    optimizers.make_optimizer(_cfg(**cfg), 10)


def test_every_field_comes_from_the_config():
  """No second set of defaults: a section missing a field is refused, naming it."""
  cfg = _cfg()
  del cfg["b2"]
  with pytest.raises(ValueError, match=r"missing fields \['b2'\]"):
    optimizers.make_optimizer(cfg, 10)
  from experiments.configs import pretrain  # pylint: disable=g-import-not-at-top
  c = optimizers.OptimizerConfig.from_config(pretrain.base().optimizer)
  assert (c.b2, c.eps) == (0.98, 1e-6)      # the paper's, as the config file sets them
