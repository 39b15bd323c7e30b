"""The transformer: shapes, masking semantics, tying, parameter counts, FLOPs."""
import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax.extend import core as jax_core

from flatness.model import flops
from flatness.model import presets
from flatness.model import tokens as tok
from flatness.model.objectives import Objective
from flatness.model.transformer import Transformer, TransformerConfig, init_params, param_count


def _cfg(**kw):
  base = dict(vocab_size=20, seq_len=10, hidden_size=16, num_layers=2, num_heads=2, mlp_dim=32,
              dropout_rate=0.0, attention_dropout_rate=0.0)
  base.update(kw)
  return TransformerConfig(**base)


def _ids(rng, cfg, lengths):
  words = rng.integers(0, cfg.vocab_size - tok.NUM_SPECIAL, (len(lengths), cfg.seq_len - 2))
  return tok.encode(words, np.asarray(lengths), cfg.seq_len)


def test_shapes_and_pooler():
  cfg = _cfg()
  params = init_params(cfg, jax.random.key(0))
  ids = _ids(np.random.default_rng(0), cfg, [3, 8])
  model = Transformer(cfg)
  assert model.apply({"params": params}, ids).shape == (2, 10, 20)
  pos = jnp.array([[1, 2], [3, 4]])
  assert model.apply({"params": params}, ids, pos).shape == (2, 2, 20)
  assert model.apply({"params": params}, ids, method=Transformer.encode).shape == (2, 10, 16)
  assert model.apply({"params": params}, ids, method=Transformer.pool).shape == (2, 16)
  assert "pooler" in params and "output" not in params["head"]


def test_padding_does_not_leak():
  """Changing a padded position's id to another pad-masked id leaves real positions alone."""
  cfg = _cfg()
  params = init_params(cfg, jax.random.key(1))
  ids = _ids(np.random.default_rng(1), cfg, [4])
  model = Transformer(cfg)
  out = model.apply({"params": params}, ids)
  # Beyond [SEP] (position 5) everything is [PAD]; the encoder must ignore those keys.
  longer = ids.at[0, 7].set(tok.PAD)
  np.testing.assert_allclose(model.apply({"params": params}, longer)[0, :6], out[0, :6], atol=1e-6)
  # And a real token does change them.
  changed = ids.at[0, 2].set(ids[0, 2] % 10 + tok.NUM_SPECIAL + 1)
  assert not np.allclose(model.apply({"params": params}, changed)[0, 1], out[0, 1])


def test_causal_model_does_not_see_the_future():
  cfg = _cfg(causal=True)
  params = init_params(cfg, jax.random.key(2))
  ids = _ids(np.random.default_rng(2), cfg, [8])
  model = Transformer(cfg)
  out = model.apply({"params": params}, ids)
  future = ids.at[0, 6].set(tok.NUM_SPECIAL + (ids[0, 6] + 1 - tok.NUM_SPECIAL) % 16)
  out2 = model.apply({"params": params}, future)
  np.testing.assert_allclose(out2[0, :6], out[0, :6], atol=1e-6)
  assert not np.allclose(out2[0, 6], out[0, 6])


def test_untied_head_has_its_own_output_layer():
  params = init_params(_cfg(tie_embeddings=False), jax.random.key(0))
  assert params["head"]["output"]["kernel"].shape == (16, 20)


def test_param_count_formula():
  """param_count equals the closed-form count of this architecture."""
  cfg = _cfg()
  h, f, v, s, layers = 16, 32, 20, 10, 2
  per_layer = 4 * (h * h + h) + (h * f + f) + (f * h + h) + 2 * 2 * h
  expected = v * h + s * h + 2 * h + layers * per_layer + 2 * h + (h * h + h + 2 * h + v) + (h * h + h)
  assert param_count(init_params(cfg, jax.random.key(0))) == expected


@pytest.mark.parametrize("name,millions", [("2m", 2), ("9m", 9), ("41m", 41), ("67m", 67),
                                           ("85m", 85), ("235m", 235)])
def test_presets_match_paper_scale(name, millions):
  """Counted as the paper counts (BERT vocabulary), each preset is near its nominal size."""
  assert presets.paper_param_count(name) / 1e6 == pytest.approx(millions, rel=0.12)


def test_bad_model_config_names_field():
  with pytest.raises(ValueError, match="model.hidden_size"):
    _cfg(hidden_size=0)
  with pytest.raises(ValueError, match="num_heads"):
    _cfg(hidden_size=10, num_heads=3)


def _matmul_flops(jaxpr) -> int:
  """2 x (output size) x (contracted size), summed over every dot_general, sub-jaxprs too."""
  total = 0
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "dot_general":
      (contract, _), _ = eqn.params["dimension_numbers"]
      lhs = eqn.invars[0].aval.shape
      total += 2 * math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs[i] for i in contract)
    for param in eqn.params.values():
      for sub in param if isinstance(param, (list, tuple)) else [param]:
        if isinstance(sub, jax_core.ClosedJaxpr):
          total += _matmul_flops(sub.jaxpr)
        elif isinstance(sub, jax_core.Jaxpr):
          total += _matmul_flops(sub)
  return total


@pytest.mark.parametrize("causal", [False, True])
def test_flops_formula_counts_every_matmul(causal):
  """`flatness.model.flops` (the MFU numerator) equals the matrix products in the traced loss,
  and its gradient costs exactly twice the forward in matrix products."""
  cfg = _cfg(vocab_size=40, seq_len=12, hidden_size=32, num_heads=4, mlp_dim=64, causal=causal)
  objective = Objective(Transformer(cfg))
  params = init_params(cfg, jax.random.key(0))
  batch = dict(tokens=np.ones((3, 10), np.int32), lengths=np.full(3, 10, np.int32))
  prepared = objective.prepare(jax.random.key(1), batch)
  loss = lambda p: objective.loss(p, prepared)
  slots = prepared["labels"].shape[1]     # MLM: the masked slots the head is applied to
  forward = _matmul_flops(jax.make_jaxpr(loss)(params).jaxpr)
  assert forward == 3 * flops.forward_flops(cfg, slots)
  step = _matmul_flops(jax.make_jaxpr(jax.grad(loss))(params).jaxpr)
  assert step == flops.train_step_flops(cfg, 3, slots)
  # The last block at the predicted positions only (MLM; a causal model ignores it).
  cfg = dataclasses.replace(cfg, last_block_at_positions=True)
  objective = Objective(Transformer(cfg))
  loss = lambda p: objective.loss(p, prepared)
  forward = _matmul_flops(jax.make_jaxpr(loss)(params).jaxpr)
  assert forward == 3 * flops.forward_flops(cfg, slots)
  assert (forward < step / 3) != causal
