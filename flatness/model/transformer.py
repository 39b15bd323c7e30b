"""BERT-style transformer encoder (and its causal twin) as pure Flax Linen modules.

The paper (Sec. 3 and App. A) trains BERT with pre-LayerNorm blocks:
``x <- x + Drop(Attn(LN(x)))``, ``x <- x + Drop(MLP(LN(x)))``, learned
position embeddings, a GELU MLP, and an MLM head ``Dense -> GELU -> LN ->
E^T`` whose output layer is tied to the input embedding ``E``. A pooled
``[CLS]`` representation (``tanh(W h_CLS)``) serves downstream heads.

Everything here is a pure function of a params pytree, so curvature code can
differentiate a loss built on it twice. Parameter names are stable and
documented because `flatness.model.enlargement` maps them between sizes:

  token_embed/embedding [V, H]      pos_embed [S, H]      embed_ln/{scale,bias}
  layer_i/attn_ln, layer_i/attn/{query,key,value}/{kernel [H,h,d], bias [h,d]},
  layer_i/attn/out/{kernel [h,d,H], bias [H]}, layer_i/mlp_ln,
  layer_i/mlp/{wi [H,F], wo [F,H]}/{kernel,bias}, final_ln,
  head/transform/{kernel,bias}, head/transform_ln, head/output_bias [V]
  (or head/output/{kernel,bias} when untied), pooler/{kernel,bias}.
"""
import dataclasses
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from flatness.model import tokens as tok


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
  """Architecture of one model; `flatness.model.presets` names the paper's sizes."""
  vocab_size: int                 # model vocabulary, special tokens included
  seq_len: int = 32               # positions: [CLS] + words + [SEP]
  hidden_size: int = 256
  num_layers: int = 4
  num_heads: int = 4
  mlp_dim: int = 1024
  dropout_rate: float = 0.1
  attention_dropout_rate: float = 0.1
  causal: bool = False            # decoder (next-token) instead of MLM encoder
  tie_embeddings: bool = True     # MLM/LM output layer shares the input embedding
  dtype: str = "float32"          # compute dtype of activations ("bfloat16" on TPU/GPU)
  param_dtype: str = "float32"
  layer_norm_eps: float = 1e-6
  init_std: float = 0.02          # BERT's initializer_range
  # Training-step kernels (`flatness.training.train_step` sets it; params unchanged): a
  # custom reverse-mode rule for the dense layers' weight gradient and GELU by erf rather
  # than erfc: the same function and gradient to float32 rounding, faster on XLA's CPU
  # backend. Reverse mode only (a custom_vjp has no jvp: the curvature code's
  # forward-over-reverse products need it off, as it is by default).
  fast_grad: bool = False
  # With ``positions`` (`Transformer.__call__`: the MLM loss's masked positions), run the
  # last block's queries, attention output, residual and MLP only at those positions: the
  # outputs elsewhere feed nothing, so logits, loss and every derivative are the same up to
  # float32 rounding (its keys and values still see every position). Forward and reverse
  # mode alike. Ignored where dropout is active (its masks would be drawn over another
  # shape). The training step sets it with ``fast_grad``; off by default, the path of the
  # README's measured runs.
  last_block_at_positions: bool = False

  def __post_init__(self):
    for name in ("vocab_size", "seq_len", "hidden_size", "num_layers", "num_heads",
                 "mlp_dim"):
      if getattr(self, name) <= 0:
        raise ValueError(f"model.{name} must be positive, got {getattr(self, name)}")
    if self.hidden_size % self.num_heads:
      raise ValueError(f"model.hidden_size ({self.hidden_size}) must be divisible by "
                       f"model.num_heads ({self.num_heads})")
    for name in ("dropout_rate", "attention_dropout_rate"):
      if not 0.0 <= getattr(self, name) < 1.0:
        raise ValueError(f"model.{name} must lie in [0, 1), got {getattr(self, name)}")

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_heads


def _dtype(name: str):
  return jnp.dtype(name)


# ---- Training-step kernels (``TransformerConfig.fast_grad``).
#
# XLA's CPU backend sends a weight gradient ``x^T g`` (both operands contracted over
# their leading, batch-times-position axis) to a generic Eigen contraction 2-3x slower
# than its YNNPACK matmul, which takes it once one operand is transposed in memory:
# the custom rules below transpose explicitly (an optimization barrier keeps XLA from
# folding the transpose back into the dot). Same products, same float32 sums, in
# another order: equal to rounding.

def _transposed(x):
  """``x`` with its last two axes swapped, materialised."""
  return jax.lax.optimization_barrier(jnp.swapaxes(x, -1, -2))


@jax.custom_vjp
def _matmul(x, w):
  """``x [N, I] @ w [I, O]``."""
  return jnp.dot(x, w)


def _matmul_fwd(x, w):
  return jnp.dot(x, w), (x, w)


def _matmul_bwd(res, g):
  x, w = res
  if x.shape[1] <= g.shape[1]:        # transpose the narrower operand: x^T g
    dw = jnp.dot(_transposed(x), g)
  else:                               # (g^T x)^T, transposed back as a small [O, I]
    dw = _transposed(jax.lax.optimization_barrier(jnp.dot(_transposed(g), x)))
  return jnp.dot(g, w.T).astype(x.dtype), dw.astype(w.dtype)


_matmul.defvjp(_matmul_fwd, _matmul_bwd)


def _dense_dot_general(lhs, rhs, dimension_numbers, precision=None, **kw):
  """`nn.Dense`'s ``dot_general`` (contract the last axis of the input with the kernel's
  first) through `_matmul`."""
  (lc, rc), (lb, rb) = dimension_numbers
  if lb or rb or tuple(lc) != (lhs.ndim - 1,) or tuple(rc) != (0,) or rhs.ndim != 2 or kw:
    return jax.lax.dot_general(lhs, rhs, dimension_numbers, precision=precision, **kw)
  y = _matmul(lhs.reshape(-1, lhs.shape[-1]), rhs)
  return y.reshape(lhs.shape[:-1] + rhs.shape[1:])


def _gelu(cfg: TransformerConfig, x):
  """Exact GELU ``x Phi(x)``. ``fast_grad``: as ``x (1 + erf(x / sqrt 2)) / 2``, whose
  erf XLA's CPU backend evaluates as one rational function, instead of the erfc of
  `jax.nn.gelu` (an exponential and two branches, three times the cost); the two differ
  by float32 rounding of ``1 + erf`` (at most ~1e-7 |x|)."""
  if not cfg.fast_grad:
    return nn.gelu(x, approximate=False)
  sqrt_half = np.sqrt(0.5).astype(x.dtype)
  return 0.5 * x * (1.0 + jax.lax.erf(x * sqrt_half))


class Attention(nn.Module):
  cfg: TransformerConfig

  @nn.compact
  def __call__(self, x, mask, deterministic: bool, kv=None):
    """Self-attention of ``x`` [B, S, H]; with ``kv`` [B, S, H], queries from ``x``
    [B, Q, H] attend to ``kv`` (``mask`` [B, 1, Q or 1, S])."""
    cfg = self.cfg
    kv = x if kv is None else kv
    dense = functools.partial(
        nn.DenseGeneral, features=(cfg.num_heads, cfg.head_dim),
        dtype=_dtype(cfg.dtype), param_dtype=_dtype(cfg.param_dtype),
        kernel_init=nn.initializers.normal(cfg.init_std))
    q = dense(name="query")(x)
    k = dense(name="key")(kv)
    v = dense(name="value")(kv)
    # Softmax in float32 (or float64 in x64 tests) whatever the compute dtype.
    acc = jnp.promote_types(jnp.float32, q.dtype)
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=acc)
    logits = logits / jnp.sqrt(jnp.asarray(cfg.head_dim, acc))
    logits = jnp.where(mask, logits, jnp.finfo(acc).min)
    weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    weights = nn.Dropout(cfg.attention_dropout_rate)(weights, deterministic=deterministic)
    out = jnp.einsum("bhqk,bkhd->bqhd", weights, v)
    return nn.DenseGeneral(
        features=cfg.hidden_size, axis=(-2, -1), dtype=_dtype(cfg.dtype),
        param_dtype=_dtype(cfg.param_dtype),
        kernel_init=nn.initializers.normal(cfg.init_std), name="out")(out)


class Mlp(nn.Module):
  cfg: TransformerConfig

  @nn.compact
  def __call__(self, x):
    cfg = self.cfg
    dense = functools.partial(nn.Dense, dtype=_dtype(cfg.dtype),
                              param_dtype=_dtype(cfg.param_dtype),
                              kernel_init=nn.initializers.normal(cfg.init_std),
                              dot_general=_dense_dot_general if cfg.fast_grad else None)
    h = _gelu(cfg, dense(cfg.mlp_dim, name="wi")(x))
    return dense(cfg.hidden_size, name="wo")(h)


def _layer_norm(cfg: TransformerConfig, name: str):
  return nn.LayerNorm(epsilon=cfg.layer_norm_eps, dtype=_dtype(cfg.dtype),
                      param_dtype=_dtype(cfg.param_dtype), name=name)


def _take(x, positions):
  """``x`` [B, S, ...] at ``positions`` [B, P] -> [B, P, ...]."""
  return jnp.take_along_axis(x, positions[(...,) + (None,) * (x.ndim - 2)], axis=1)


class Block(nn.Module):
  """Pre-LN transformer block; with ``positions`` [B, P], its output at those positions
  only ([B, P, H]; keys and values still from every position)."""
  cfg: TransformerConfig

  @nn.compact
  def __call__(self, x, mask, deterministic: bool, positions=None):
    drop = nn.Dropout(self.cfg.dropout_rate)
    h_all = _layer_norm(self.cfg, "attn_ln")(x)
    if positions is None:
      h = Attention(self.cfg, name="attn")(h_all, mask, deterministic)
    else:
      if mask.shape[2] != 1:       # a mask per query (causal): the queries' rows
        mask = jnp.take_along_axis(mask, positions[:, None, :, None], axis=2)
      x = _take(x, positions)
      h = Attention(self.cfg, name="attn")(_take(h_all, positions), mask, deterministic,
                                           kv=h_all)
    x = x + drop(h, deterministic=deterministic)
    h = Mlp(self.cfg, name="mlp")(_layer_norm(self.cfg, "mlp_ln")(x))
    return x + drop(h, deterministic=deterministic)


class Transformer(nn.Module):
  """Encoder (MLM) or decoder (causal LM) over model token ids.

  Methods (use with ``model.apply(variables, ..., method=...)``):
    __call__(ids, positions=None): output logits [B, S, V], or [B, P, V] at
      ``positions`` [B, P] (the MLM loss only needs the masked positions, which
      saves the [B, S, V] output projection).
    encode(ids): final hidden states [B, S, H] (after the final LayerNorm).
    pool(ids): tanh-pooled [CLS] state [B, H].
  """
  cfg: TransformerConfig

  def setup(self):
    cfg = self.cfg
    init = nn.initializers.normal(cfg.init_std)
    self.token_embed = nn.Embed(cfg.vocab_size, cfg.hidden_size, embedding_init=init,
                                dtype=_dtype(cfg.dtype),
                                param_dtype=_dtype(cfg.param_dtype))
    self.pos_embed = self.param("pos_embed", init, (cfg.seq_len, cfg.hidden_size),
                                _dtype(cfg.param_dtype))
    self.embed_ln = _layer_norm(cfg, "embed_ln")
    self.embed_drop = nn.Dropout(cfg.dropout_rate)
    self.layers = [Block(cfg, name=f"layer_{i}") for i in range(cfg.num_layers)]
    self.final_ln = _layer_norm(cfg, "final_ln")
    self.head = LmHead(cfg, name="head")
    self.pooler = nn.Dense(cfg.hidden_size, dtype=_dtype(cfg.dtype),
                           param_dtype=_dtype(cfg.param_dtype), kernel_init=init,
                           name="pooler")

  def _mask(self, ids):
    keys = ids != tok.PAD
    mask = keys[:, None, None, :]
    if self.cfg.causal:
      s = ids.shape[1]
      mask = mask & jnp.tril(jnp.ones((s, s), bool))[None, None]
    return mask

  def encode(self, ids, deterministic: bool = True, positions=None):
    """Final hidden states [B, S, H]; with ``positions`` [B, P], [B, P, H] at those
    positions."""
    x = self.token_embed(ids) + self.pos_embed[None, :ids.shape[1]].astype(_dtype(self.cfg.dtype))
    x = self.embed_drop(self.embed_ln(x), deterministic=deterministic)
    mask = self._mask(ids)
    cfg = self.cfg
    no_dropout = deterministic or (cfg.dropout_rate == 0 and cfg.attention_dropout_rate == 0)
    pruned = positions is not None and cfg.last_block_at_positions and no_dropout
    for i, layer in enumerate(self.layers):
      last = i == len(self.layers) - 1
      x = layer(x, mask, deterministic, positions if (last and pruned) else None)
    x = self.final_ln(x)
    return _take(x, positions) if positions is not None and not pruned else x

  def pool(self, ids, deterministic: bool = True):
    h = self.encode(ids, deterministic)
    return jnp.tanh(self.pooler(h[:, 0]))

  def __call__(self, ids, positions=None, deterministic: bool = True):
    h = self.encode(ids, deterministic, positions)
    # Make sure the pooler has parameters after `init`, as downstream heads use it.
    if self.is_initializing():
      self.pooler(h[:, 0])
    return self.head(h, self.token_embed)


class LmHead(nn.Module):
  """``Dense -> GELU -> LN -> (E^T + b)``, BERT's MLM transform and decoder."""
  cfg: TransformerConfig

  @nn.compact
  def __call__(self, h, token_embed: nn.Embed):
    cfg = self.cfg
    init = nn.initializers.normal(cfg.init_std)
    h = nn.Dense(cfg.hidden_size, dtype=_dtype(cfg.dtype), param_dtype=_dtype(cfg.param_dtype),
                 kernel_init=init, name="transform",
                 dot_general=_dense_dot_general if cfg.fast_grad else None)(h)
    h = _layer_norm(cfg, "transform_ln")(_gelu(cfg, h))
    acc = jnp.promote_types(jnp.float32, h.dtype)
    if cfg.tie_embeddings:
      bias = self.param("output_bias", nn.initializers.zeros, (cfg.vocab_size,),
                        _dtype(cfg.param_dtype))
      logits = token_embed.attend(h).astype(acc) + bias.astype(acc)
    else:
      logits = nn.Dense(cfg.vocab_size, dtype=_dtype(cfg.dtype),
                        param_dtype=_dtype(cfg.param_dtype), kernel_init=init,
                        name="output")(h).astype(acc)
    return logits


def init_params(cfg: TransformerConfig, rng, batch_size: int = 1):
  """Params pytree of a fresh model (pure; use under `jax.jit` or `jax.eval_shape`)."""
  ids = jnp.full((batch_size, cfg.seq_len), tok.CLS, jnp.int32)
  return Transformer(cfg).init({"params": rng}, ids)["params"]


def param_count(params: Any) -> int:
  """Number of scalars in a params pytree (works on `jax.eval_shape` output)."""
  return int(sum(x.size for x in jax.tree.leaves(params)))
