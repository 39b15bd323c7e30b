"""Batched, scaled inside algorithm for a CNF PCFG, in JAX.

``beta[i, l, A] = P(A =>* x_i .. x_{i+l-1})``, computed bottom-up over span
lengths, vectorised over sentences, start positions and split points. Each
span's vector is stored as ``b * exp(c)`` with ``max_A b = 1`` and a log-scale
``c`` (scaled, not log-space: the inner products stay multiplications, and
only one ``exp`` per (span, split) aligns the scales), so nothing underflows
however small a sentence's probability is.

Binary rules enter through their distinct child pairs ``(B_k, C_k)``: for each
span, ``o[k] = sum_splits beta_left[B_k] * beta_right[C_k]`` and then
``beta[A] = sum_k P(A -> B_k C_k) o[k]`` as one matrix product; the paper's
grammar has 262 pairs instead of 49^2 = 2401.

Leaves are soft: ``leaf[i, A] = sum_w P(A -> w) e[i, w]`` for an evidence row
``e[i]`` (one-hot for an observed word, all ones for a masked one). The log
marginal is multilinear in the rows, which `data_gen.evidence` turns into exact
conditionals by differentiation.

This chart (`inside_prefix`) is the general path: any CNF grammar, one pass per
span length over all nonterminals. A *layered* grammar (every rule's children
one layer below it, as in the paper's grammar and `random_grammar`'s) gets
`data_gen.pcfg.layered` instead, selected by `Inside` from the rule tensor:
per-layer rule blocks instead of all child pairs, span lengths bounded per
layer, one pass per layer. For the paper's grammar on one CPU core that is
about 18x the conditionals per second of this path, and its length buckets
compile in ~4 s instead of ~34 s (`python -m benchmarks.data_gen --dense`).
"""
import jax
import jax.numpy as jnp
import numpy as np

from data_gen.pcfg import layered as layered_lib
from data_gen.pcfg.grammar import Grammar

def _normalise(x, offset):
  """``x * exp(offset)`` as ``(b, c)`` with ``max b = 1`` (or ``b = x`` if ``x`` is all zero).

  A span that is impossible for the observed words keeps its children's scale
  instead of a sentinel: its derivative (the outside probability, which
  conditionals need) is not zero, and it is only exact with a finite scale.
  The scale is a constant for differentiation: the represented value does not
  depend on it.
  """
  s = jax.lax.stop_gradient(jnp.max(x, axis=-1))
  safe = jnp.where(s > 0, s, 1.0)
  return x / safe[..., None], offset + jnp.log(safe)


def inside_prefix(leaf, pairs_left, pairs_right, pair_probs):
  """Inside probabilities of the spans that start at position 0.

  The chart is kept twice, indexed by (length, start) and by (length, end), so
  that for every start ``i`` the left children ``(i, m)`` and the right
  children ``(i + m, l - m)`` of all splits ``m`` are rectangular slices: no
  gathers over the chart, and a backward pass without scatters into it.

  Args:
    leaf: [B, L, N] linear-space leaf scores.
    pairs_left, pairs_right: int [K] child pairs; pair_probs: [K, N].

  Returns:
    (b, c): [B, L, N] and [B, L] with ``P(A =>* x_0 .. x_{l-1}) = b[:, l-1, A] exp(c[:, l-1])``.
  """
  b, length, n = leaf.shape
  by_start = jnp.zeros((b, length + 1, length, n), leaf.dtype)       # [B, len, start, N]
  by_end = jnp.zeros((b, length + 1, length + 1, n), leaf.dtype)     # [B, len, end, N]
  sc_start = jnp.zeros((b, length + 1, length), leaf.dtype)
  sc_end = jnp.zeros((b, length + 1, length + 1), leaf.dtype)
  beta, c = _normalise(leaf, 0.0)
  by_start, sc_start = by_start.at[:, 1].set(beta), sc_start.at[:, 1].set(c)
  by_end, sc_end = by_end.at[:, 1, 1:].set(beta), sc_end.at[:, 1, 1:].set(c)
  for l in range(2, length + 1):
    n_i = length - l + 1
    lefts = by_start[:, 1:l, :n_i]                    # [B, m, n_i, N]: span (i, m)
    rights = by_end[:, 1:l][:, ::-1, l:]             # [B, m, n_i, N]: span (i + m, l - m)
    c = sc_start[:, 1:l, :n_i] + sc_end[:, 1:l][:, ::-1, l:]
    cmax = jnp.max(c, axis=1)
    w = jnp.exp(c - cmax[:, None])
    prod = jnp.take(lefts, pairs_left, axis=-1) * jnp.take(rights, pairs_right, axis=-1)
    o = jnp.einsum("bmik,bmi->bik", prod, w)                          # [B, n_i, K]
    beta, c = _normalise(o @ pair_probs, cmax)
    by_start, sc_start = by_start.at[:, l, :n_i].set(beta), sc_start.at[:, l, :n_i].set(c)
    by_end, sc_end = by_end.at[:, l, l:].set(beta), sc_end.at[:, l, l:].set(c)
  return by_start[:, 1:, 0], sc_start[:, 1:, 0]


METHODS = ("auto", "dense", "layered")


class Inside:
  """The inside algorithm of one grammar (its arrays as constants).

  ``method``: ``"dense"`` (`inside_prefix`, any CNF grammar), ``"layered"``
  (`data_gen.pcfg.layered`, grammars whose rules go from one layer of
  nonterminals to the next, as the paper's do) or ``"auto"``: layered when
  `layered.layers` finds the structure in the rule tensor, else dense. The
  choice only affects `log_marginal` (and so every conditional);
  `prefix_log_inside`, which task labels read for all nonterminals and all
  prefixes, always uses the dense chart.
  """

  def __init__(self, grammar: Grammar, dtype=jnp.float32, method: str = "auto"):
    if method not in METHODS:
      raise ValueError(f"unknown inside method {method!r}; choose one of {METHODS}")
    left, right, probs = grammar.rule_pairs()
    self.grammar = grammar
    self.dtype = dtype
    layer_ids = layered_lib.layers(grammar) if method != "dense" else None
    if method == "layered" and layer_ids is None:
      raise ValueError("the grammar is not layered (some binary rule's children are not both "
                       "one layer below it); use method='dense'")
    self.method = "dense" if layer_ids is None else "layered"
    self._layered = (layered_lib.LayeredInside(grammar, layer_ids, dtype)
                     if layer_ids is not None else None)
    self._left, self._right = np.asarray(left), np.asarray(right)
    self._probs = np.asarray(probs, np.float64)
    self._emission = np.asarray(grammar.emission, np.float64)
    self._start = np.asarray(grammar.start, np.float64)

  def leaf_scores(self, evidence, lengths):
    """[B, L, N]; positions past a sentence's length get ones-evidence (finite, unused)."""
    evidence = evidence.astype(self.dtype)
    valid = jnp.arange(evidence.shape[1])[None, :] < lengths[:, None]
    evidence = jnp.where(valid[..., None], evidence, 1.0)
    return evidence @ jnp.asarray(self._emission.T, self.dtype)

  def _prefix_chart(self, evidence, lengths):
    return inside_prefix(self.leaf_scores(evidence, lengths), jnp.asarray(self._left),
                         jnp.asarray(self._right), jnp.asarray(self._probs, self.dtype))

  def prefix_log_inside(self, evidence, lengths):
    """[B, L, N]: log inside probability of each span ``[0, l)`` for each nonterminal."""
    b0, c0 = self._prefix_chart(evidence, lengths)
    logb = jnp.log(jnp.where(b0 > 0, b0, 1.0))
    return jnp.where(b0 > 0, logb + c0[..., None], -jnp.inf)

  def log_marginal(self, evidence, lengths):
    """[B]: ``log sum_x p(x) prod_i e[i, x_i]`` over sentences of each row's length."""
    if self._layered is not None:
      valid = jnp.arange(evidence.shape[1])[None, :] < lengths[:, None]
      evidence = jnp.where(valid[..., None], evidence.astype(self.dtype), 1.0)
      return self._layered.log_marginal(evidence, lengths)
    b0, c0 = self._prefix_chart(evidence, lengths)
    pick = (lengths - 1)[:, None]
    at_len = jnp.take_along_axis(b0, pick[..., None], axis=1)[:, 0]            # [B, N]
    # Linear in every symbol's inside value (zero ones included), then the log.
    return jnp.log(at_len @ jnp.asarray(self._start, self.dtype)) + jnp.take_along_axis(
        c0, pick, axis=1)[:, 0]

