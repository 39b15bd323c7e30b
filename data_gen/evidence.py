"""Exact conditionals from a log marginal that is multilinear in per-position evidence.

For a latent-variable language (PCFG, HMM) the soft marginal

    Z(e) = sum_x p(x) prod_i e[i, x_i]

is linear in each evidence row ``e[i]``: one-hot for an observed word, all ones
for a masked one, a noise channel for a word that may have been replaced. So
``dZ/de[i, w] = sum_x p(x with x_i = w) prod_{j != i} e[j, x_j]`` and

    P(x_i = w | evidence at j != i)  ∝  dZ/de[i, w]             (`conditionals`)
    P(x_i = w | all evidence)        =  e[i, w] dlogZ/de[i, w]   (`posterior_marginals`)

for every position at once: one reverse pass of the inside (PCFG) or forward
(HMM) algorithm is the outside (backward) algorithm. With one-hot evidence
everywhere, `conditionals` gives each position's single-masked conditional
``p(x_i | x_{-i})``; with all-ones rows at masked positions, every position's
conditional given the visible words (the other masked positions marginalised).

`Bucketed` runs such per-batch functions over many sentences: sentences are
sorted into length buckets (one compilation per bucket width) and fixed-size
batches, and the results come back in the original order.
"""
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np


def one_hot_evidence(tokens, vocab_size: int, mask=None, dtype=jnp.float32):
  """[B, L, V]: one-hot rows, all-ones rows where ``mask`` is True."""
  e = jax.nn.one_hot(tokens, vocab_size, dtype=dtype)
  if mask is not None:
    e = jnp.where(mask[..., None], 1.0, e)
  return e


def _normalised_rows(x, lengths):
  total = jnp.sum(x, axis=-1, keepdims=True)
  valid = jnp.arange(x.shape[1])[None, :, None] < lengths[:, None, None]
  return jnp.where(valid & (total > 0), x / jnp.where(total > 0, total, 1.0), 0.0)


def conditionals(log_marginal: Callable, evidence, lengths):
  """[B, L, V]: P(x_i = w | the evidence of every other position), zero past each length."""
  grads = jax.grad(lambda e: jnp.sum(log_marginal(e, lengths)))(evidence)
  return _normalised_rows(grads, lengths)


def posterior_marginals(log_marginal: Callable, evidence, lengths):
  """[B, L, V]: P(x_i = w | all evidence, row i's own included), zero past each length."""
  grads = jax.grad(lambda e: jnp.sum(log_marginal(e, lengths)))(evidence)
  return _normalised_rows(evidence * grads, lengths)


class Bucketed:
  """Applies ``fn(tokens [b, W], lengths [b], *rows) -> outputs`` to many sentences.

  ``rows`` are extra per-sentence arrays; those with a position axis (axis 1 of
  length ``max_length``) are cut to the bucket width ``W``. ``positional[k]``
  says whether output ``k`` has a position axis, which is padded back to
  ``max_length``.
  """

  def __init__(self, fn: Callable, max_length: int, *, positional=(True,),
               batch_size: int = 128, bucket: int = 4):
    self._fn = jax.jit(fn)
    self.max_length, self.positional = max_length, tuple(positional)
    self.batch_size, self.bucket = batch_size, bucket

  def _width(self, n: int) -> int:
    return int(min(self.max_length, max(self.bucket, -(-n // self.bucket) * self.bucket)))

  def __call__(self, tokens, lengths, *rows):
    tokens, lengths = np.asarray(tokens), np.asarray(lengths)
    rows = [np.asarray(r) for r in rows]
    if len(lengths) == 0:
      raise ValueError("no sentences")
    widths = np.array([self._width(int(k)) for k in lengths])
    order, pending = [], []
    # Dispatch every batch before fetching any result: JAX runs them asynchronously.
    for width in np.unique(widths):
      idx = np.flatnonzero(widths == width)
      for start in range(0, len(idx), self.batch_size):
        sel = idx[start:start + self.batch_size]
        take = np.concatenate([sel, np.full(self.batch_size - len(sel), sel[0])])
        args = [tokens[take, :width], lengths[take]]
        args += [r[take, :width] if r.ndim >= 2 and r.shape[1] == self.max_length else r[take]
                 for r in rows]
        res = self._fn(*args)
        pending.append((width, len(sel), res if isinstance(res, tuple) else (res,)))
        order.append(sel)
    outs = [[] for _ in self.positional]
    for width, count, res in pending:
      for k, (r, pos) in enumerate(zip(jax.device_get(res), self.positional)):
        r = np.asarray(r)[:count]
        if pos:
          r = np.pad(r, [(0, 0), (0, self.max_length - width)] + [(0, 0)] * (r.ndim - 2))
        outs[k].append(r)
    inverse = np.empty(len(lengths), np.int64)
    inverse[np.concatenate(order)] = np.arange(len(lengths))
    final = [np.concatenate(parts)[inverse] for parts in outs]
    return final[0] if len(final) == 1 else tuple(final)
