"""Linear probes, fine-tuning and the adversarial objective against independent truths."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from flatness import adversarial
from flatness import finetune
from flatness import masking
from flatness import probe
from flatness import sharding
from flatness import train_step as train_step_lib
from flatness.model import Transformer, TransformerConfig, init_params
from flatness.objectives import Objective

_FAST = probe.ProbeConfig(epochs=30, batch_size=256, learning_rate=3e-2, weight_decay=0.0)


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


def test_probe_reaches_bayes_accuracy_on_a_linear_task():
  # Noise-free: the label is argmax of a linear function, so the Bayes accuracy is 1.
  x, y, _ = _linear_task(0, 6000)
  r = probe.probe_accuracy(x[:4000], y[:4000], x[4000:], y[4000:], 4, seeds=2, cfg=_FAST)
  assert r["acc"] >= 0.97
  # Noisy labels drawn from a softmax: the Bayes predictor argmax(x W) is the best possible;
  # the probe matches its accuracy on the same test labels.
  x, y, bayes = _linear_task(1, 12000, temperature=1.0)
  r = probe.probe_accuracy(x[:8000], y[:8000], x[8000:], y[8000:], 4, seeds=2, cfg=_FAST)
  bayes_acc = np.mean(bayes[8000:] == y[8000:])
  assert 0.5 < bayes_acc < 0.95
  assert abs(r["acc"] - bayes_acc) < 0.02


def test_probe_is_at_chance_on_shuffled_labels():
  x, y, _ = _linear_task(2, 6000)
  y_train = np.random.default_rng(3).permutation(y[:4000])
  r = probe.probe_accuracy(x[:4000], y_train, x[4000:], y[4000:], 4, seeds=2, cfg=_FAST)
  chance = np.max(np.bincount(y[4000:])) / 2000   # at most the majority class
  assert r["acc"] <= chance + 4 * np.sqrt(0.25 / 2000)
  assert r["acc_std"] >= 0


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
