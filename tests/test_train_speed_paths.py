"""The fast training paths compute what the reference paths compute (to float32 rounding).

* `TransformerConfig.fast_grad` (the training step's kernels: a custom weight-gradient
  rule for the dense layers, GELU by erf) with the prediction columns masking never fills
  dropped: same loss and gradient as JAX's own rules on the whole batch.
* `TransformerConfig.last_block_at_positions` (the last block only at the predicted
  positions): the same logits and derivatives, forward and reverse mode.
* The trainer's K steps per call (`trainer._compile_step`, keys folded inside): the same
  steps as one call per step with the key folded on the host.
"""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import wiring
from experiments.configs import pretrain
from flatness.model import tokens as tok
from flatness.model.objectives import Objective
from flatness.model.transformer import Transformer, TransformerConfig, init_params
from flatness.runtime import sharding
from flatness.training import run_config
from flatness.training import train_step as train_step_lib
from flatness.training import trainer


def test_fast_kernels_same_loss_and_gradient():
  cfg = TransformerConfig(vocab_size=20, seq_len=10, hidden_size=16, num_layers=2, num_heads=2,
                          mlp_dim=48, dropout_rate=0.0, attention_dropout_rate=0.0)
  params = init_params(cfg, jax.random.key(0))
  rng = np.random.default_rng(0)
  lengths = np.array([3, 8, 5, 1])
  batch = dict(tokens=rng.integers(0, 16, (4, 8)).astype(np.int32), lengths=lengths)
  ref = Objective(Transformer(cfg))
  fast = train_step_lib.training_objective(ref)
  assert fast.model.cfg.fast_grad and not ref.model.cfg.fast_grad
  prepared = ref.prepare(jax.random.key(1), batch)
  trimmed = train_step_lib.trim_predictions(fast, prepared)
  assert prepared["positions"].shape == (4, 5) and trimmed["positions"].shape == (4, 2)
  out = []
  for obj, b in ((ref, prepared), (fast, trimmed)):
    out.append(jax.jit(jax.value_and_grad(lambda p, o=obj, b=b: o.loss(p, b)))(params))
  (l0, g0), (l1, g1) = out
  np.testing.assert_allclose(l1, l0, rtol=1e-6)
  scale = max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(g0))
  for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)):
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6 * scale)


@pytest.mark.parametrize("causal", [False, True])
def test_last_block_at_positions_same_logits_and_derivatives(causal):
  cfg = TransformerConfig(vocab_size=20, seq_len=9, hidden_size=16, num_layers=2, num_heads=2,
                          mlp_dim=32, dropout_rate=0.0, attention_dropout_rate=0.0,
                          causal=causal)
  pruned = Transformer(dataclasses.replace(cfg, last_block_at_positions=True))
  full = Transformer(cfg)
  params = init_params(cfg, jax.random.key(0))
  rng = np.random.default_rng(0)
  lengths = np.array([7, 3, 5])
  ids = jnp.asarray(tok.encode(rng.integers(0, 15, (3, 7)), lengths, 9))
  positions = jnp.asarray(rng.integers(0, 9, (3, 4)), jnp.int32)
  # Jitted, not eager: one compile per program rather than one per op.
  f = {m: (lambda p, m=m: m.apply({"params": p}, ids, positions)) for m in (full, pruned)}
  np.testing.assert_allclose(jax.jit(f[pruned])(params), jax.jit(f[full])(params),
                             rtol=1e-5, atol=1e-6)
  cot = jax.random.normal(jax.random.key(1), (3, 4, 20))
  grads = {m: jax.jit(jax.grad(lambda p, g=g: jnp.sum(g(p) * cot)))(params)
           for m, g in f.items()}
  tangent = jax.tree.map(lambda x: jnp.ones_like(x) / x.size, params)
  jvps = {m: jax.jit(lambda p, t, g=g: jax.jvp(g, (p,), (t,))[1])(params, tangent)
          for m, g in f.items()}
  scale = max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(grads[full]))
  for a, b in zip(jax.tree.leaves(grads[full]), jax.tree.leaves(grads[pruned])):
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6 * scale)
  np.testing.assert_allclose(jvps[pruned], jvps[full], rtol=1e-4, atol=1e-6)


def test_last_block_at_positions_off_under_dropout():
  # Dropout masks over [B, P] would not be those over [B, S]: the full path runs instead.
  cfg = TransformerConfig(vocab_size=20, seq_len=9, hidden_size=16, num_layers=2, num_heads=2,
                          mlp_dim=32, dropout_rate=0.3, attention_dropout_rate=0.3)
  params = init_params(cfg, jax.random.key(0))
  ids = jnp.asarray(tok.encode(np.full((2, 7), 5), np.array([7, 4]), 9))
  positions = jnp.asarray([[1, 2], [3, 4]], jnp.int32)
  out = [Transformer(c).apply({"params": params}, ids, positions, deterministic=False,
                              rngs={"dropout": jax.random.key(2)})
         for c in (cfg, dataclasses.replace(cfg, last_block_at_positions=True))]
  np.testing.assert_array_equal(out[0], out[1])


def test_steps_per_call_equal_single_steps():
  c = pretrain.get_config("tiny")
  c.model.update(hidden_size=16, mlp_dim=32)
  c.train.update(batch_size=16, log_every=4, eval_every=8, checkpoint_every=8,
                 steps_per_call=10, fast_kernels=True)
  t = run_config.train_config(c.train)
  assert trainer.steps_per_call(t) == 4
  built = wiring.build(c, mesh=sharding.make_mesh(1))
  s = built.setup
  source = built.source()
  base = jax.random.key(0)
  # Reference: one jitted step per batch, the key folded on the host, JAX's own rules.
  step = jax.jit(train_step_lib.make_train_step(s.objective, s.tx, schedule=s.schedule,
                                                fast_kernels=False))
  state = s.create_state(jax.random.key(0))
  ref_losses = []
  for i in range(8):
    state, m = step(state, sharding.global_batch(source.batch(i), s.mesh),
                    jax.random.fold_in(base, i))
    ref_losses.append(float(m["loss"]))
  stepper = trainer._Stepper(trainer._compile_step(t, s, None, 4), s.mesh, base, 4, (4,))
  fast = s.create_state(jax.random.key(0))
  batches = source.batches(0)
  losses = []
  for start in (0, 4):
    fast, metrics, k, _ = stepper(fast, batches, start, 8)
    assert k == 4 and metrics["loss"].shape == (4,)
    losses.extend(np.asarray(metrics["loss"]).tolist())
  assert int(fast.step) == 8
  np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               jax.device_get(fast.params), jax.device_get(state.params))
