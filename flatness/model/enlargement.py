"""Function-preserving enlargement of a trained model into a wider and deeper one.

The paper compares Hessian traces across model sizes after embedding the small
model into the large architecture without changing its function (Sec. 4.2).
With width ratio ``r = H_large / H_small`` every hidden state of the large
model is the small one tiled ``r`` times, which this map maintains exactly:

* embeddings and LayerNorm parameters are tiled (``LN(tile(x)) = tile(LN(x))``:
  the mean and variance of a tiled vector are unchanged);
* a dense layer reading the residual stream is tiled and divided by the input
  ratio (the ``r`` copies of each input add up);
* attention heads are duplicated ``r_h`` times and widened ``r_d`` times
  (``r_h r_d = r``); queries are scaled by ``1/sqrt(r_d)`` so that
  ``q.k / sqrt(d_large)`` is unchanged; the output projection is divided by
  ``r``;
* MLP hidden units are tiled ``r_f = F_large / F_small`` times;
* extra layers get zero output projections, which pre-LayerNorm blocks turn
  into identities;
* with tied embeddings, the MLM head's LayerNorm is divided by ``r`` so that
  ``h_large . E_large = h_small . E_small``.

The logits are then identical (to float rounding); the pooled output is the
small model's, tiled. The trace of the Hessian is not preserved (it depends on
the parameterisation), which is what the comparison measures.
"""
import jax
import jax.numpy as jnp
import numpy as np

from flatness.model.transformer import TransformerConfig


def _ratio(large: int, small: int, what: str) -> int:
  if large % small:
    raise ValueError(f"enlarge: large {what} ({large}) must be a multiple of the small one "
                     f"({small})")
  return large // small


def check_compatible(small: TransformerConfig, large: TransformerConfig) -> dict:
  """The ratios of the map; raises ValueError naming what does not fit."""
  for name in ("vocab_size", "causal", "tie_embeddings"):
    if getattr(small, name) != getattr(large, name):
      raise ValueError(f"enlarge: {name} differs ({getattr(small, name)} vs "
                       f"{getattr(large, name)})")
  if large.num_layers < small.num_layers or large.seq_len < small.seq_len:
    raise ValueError("enlarge: the large model needs at least as many layers and positions")
  r = _ratio(large.hidden_size, small.hidden_size, "hidden_size")
  r_h = _ratio(large.num_heads, small.num_heads, "num_heads")
  r_d = _ratio(large.head_dim, small.head_dim, "head_dim")
  if r_h * r_d != r:
    raise ValueError("enlarge: heads x head_dim must grow like the hidden size")
  return dict(r=r, r_h=r_h, r_d=r_d, r_f=_ratio(large.mlp_dim, small.mlp_dim, "mlp_dim"))


def _heads(w, r_h, r_d, scale=1.0):
  """[..., h, d] -> [..., r_h * h, r_d * d]: heads duplicated, head dims tiled."""
  return jnp.tile(w, (1,) * (w.ndim - 2) + (r_h, r_d)) * scale


def _ln(p, r, scale=1.0):
  return {"scale": jnp.tile(p["scale"], r) * scale, "bias": jnp.tile(p["bias"], r) * scale}


def _layer(p, r, r_h, r_d, r_f):
  a = p["attn"]
  q_scale = 1.0 / np.sqrt(r_d)
  attn = {}
  for name in ("query", "key", "value"):
    s = q_scale if name == "query" else 1.0
    k = jnp.tile(a[name]["kernel"], (r, 1, 1)) / r           # input blocks add up
    attn[name] = {"kernel": _heads(k, r_h, r_d, s), "bias": _heads(a[name]["bias"], r_h, r_d, s)}
  out = a["out"]["kernel"]                                    # [h, d, H]
  attn["out"] = {"kernel": jnp.tile(out, (r_h, r_d, r)) / r, "bias": jnp.tile(a["out"]["bias"], r)}
  m = p["mlp"]
  mlp = {"wi": {"kernel": jnp.tile(m["wi"]["kernel"], (r, r_f)) / r,
                "bias": jnp.tile(m["wi"]["bias"], r_f)},
         "wo": {"kernel": jnp.tile(m["wo"]["kernel"], (r_f, r)) / r_f,
                "bias": jnp.tile(m["wo"]["bias"], r)}}
  return {"attn_ln": _ln(p["attn_ln"], r), "attn": attn, "mlp_ln": _ln(p["mlp_ln"], r),
          "mlp": mlp}


def _identity_layer(template):
  """A pre-LN block that adds nothing: every parameter zero but LayerNorm scales."""
  def zero(path, x):
    name = jax.tree_util.keystr(path)
    return jnp.ones_like(x) if name.endswith("['scale']") else jnp.zeros_like(x)
  return jax.tree_util.tree_map_with_path(zero, template)


def enlarge(params, small: TransformerConfig, large: TransformerConfig):
  """Params of ``large`` computing the same logits as ``params`` of ``small``."""
  k = check_compatible(small, large)
  r, r_h, r_d, r_f = k["r"], k["r_h"], k["r_d"], k["r_f"]
  out = {
      "token_embed": {"embedding": jnp.tile(params["token_embed"]["embedding"], (1, r))},
      "pos_embed": jnp.zeros((large.seq_len, large.hidden_size), params["pos_embed"].dtype)
                   .at[:small.seq_len].set(jnp.tile(params["pos_embed"], (1, r))),
      "embed_ln": _ln(params["embed_ln"], r),
      "final_ln": _ln(params["final_ln"], r),
      "pooler": {"kernel": jnp.tile(params["pooler"]["kernel"], (r, r)) / r,
                 "bias": jnp.tile(params["pooler"]["bias"], r)},
  }
  for i in range(small.num_layers):
    out[f"layer_{i}"] = _layer(params[f"layer_{i}"], r, r_h, r_d, r_f)
  for i in range(small.num_layers, large.num_layers):
    out[f"layer_{i}"] = _identity_layer(out["layer_0"])
  head = params["head"]
  new_head = {"transform": {"kernel": jnp.tile(head["transform"]["kernel"], (r, r)) / r,
                            "bias": jnp.tile(head["transform"]["bias"], r)}}
  if large.tie_embeddings:
    new_head["transform_ln"] = _ln(head["transform_ln"], r, 1.0 / r)
    new_head["output_bias"] = head["output_bias"]
  else:
    new_head["transform_ln"] = _ln(head["transform_ln"], r)
    new_head["output"] = {"kernel": jnp.tile(head["output"]["kernel"], (r, 1)) / r,
                          "bias": head["output"]["bias"]}
  out["head"] = new_head
  return out
