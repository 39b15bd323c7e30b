r"""Exact masked-LM targets under BERT's corruption, as pure JAX functions.

BERT masking (`flatness.model.masking`) draws a sentence ``x`` of ``n`` words, a
uniformly random set ``S`` of ``k = k(n)`` positions, and shows the model
``y``: ``y_i = x_i`` off ``S``; on ``S``, ``y_i`` is [MASK] with probability
``p_mask``, a uniformly random word with probability ``p_rand`` and ``x_i``
with probability ``p_keep``. The model sees ``y`` (never ``S``) and predicts at
the positions of ``S``, so the Bayes-optimal prediction at a position ``i``
is, and the exact target of this module is,

    q_i(w) = P(x_i = w | y, i in S).

With ``M`` the [MASK] positions of ``y`` (``|M| = m``; all of them are in
``S``), ``S = M + T`` for an unknown set ``T`` of ``r = k - m`` visible
positions. Uniform ``S`` and the [MASK] probabilities are the same for every
candidate ``T``, so ``P(x, T | y) ∝ p(x) prod_{j in T} c_j(x_j) prod_{j
visible, not in T} [x_j = y_j]`` with the noise channel ``c_j(w) = p_rand / V +
p_keep [w = y_j]``. Give every visible position the evidence row
``e_j(w; t) = [w = y_j] + t c_j(w)`` (a polynomial in a formal variable
``t``) and every [MASK] position all ones: the soft marginal becomes

    Z(t) = sum_x p(x) prod_j e_j(x_j; t) = sum_T t^{|T|} Z_T,

whose coefficient of ``t^r``, ``F = [t^r] Z``, is the sum over exactly the
candidate selections (`data_gen.optimal.bayes_predictions` enumerates them
instead: ``C(n - m, r)`` of them, 170,000 for ``n = 31``, ``k = 5``). ``F`` is
multilinear in the coefficient rows ``e^(0)_j`` (degree 0) and ``e^(1)_j``
(degree 1) of every position, and as in `data_gen.evidence`

    q_i(w) ∝ dF / de^(0)_i[w]               for i in M,
    q_i(w) ∝ c_i(w) dF / de^(1)_i[w]        for visible i

(the first sums ``Z_T P_T(x_i = w)`` over all candidates, the second over the
candidates that contain ``i``). One reverse pass of the inside (PCFG) or
forward (HMM, Markov chain) algorithm run on truncated polynomials of degree
``D = max_n k(n)`` gives every position's target at once, for the whole batch.
Every coefficient is a non-negative sum of products (no cancellation), and
exact scale factors keep the values in range (`_inside_by_height`,
`_inside_by_length`; float32 is checked against float64 on grammars of the
paper's shape). A visible position with ``r = 0`` cannot have been selected;
its row comes out zero, as do rows past a sentence's length.

The PCFG computation is laid out for small, layered grammars such as
``pcfg_small`` (`_inside_by_height`): a handful of large operations per
layer of the grammar rather than many small ones per span length, which on a
CPU is what the step time depends on.
"""
import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from data_gen.hmm import HMM
from data_gen.markov import MarkovChain
from data_gen.pcfg import layered
from data_gen.pcfg.language import PCFG
from flatness.model import masking
from flatness.model import tokens as tok

# A polynomial marginal: (leaf scores [B, L, D+1, X], lengths [B]) ->
# (coefficients [B, D+1], log scale [B]) with Z(t) = sum_d coef[d] t^d exp(scale).
PolyMarginal = Callable


def poly_mul(a, b):
  """Product of polynomials with coefficients on axis -2, truncated to their degree.

  ``a, b``: [..., D+1, X] -> [..., D+1, X] with ``out[d] = sum_{i <= d} a[i] b[d - i]``.
  Unrolled: D is small (at most ``masking.max_predictions``), and XLA fuses the
  terms into one loop.
  """
  d1 = a.shape[-2]
  return jnp.stack([sum(a[..., i, :] * b[..., d - i, :] for i in range(d + 1))
                    for d in range(d1)], axis=-2)


def _normalise(x, offset):
  """``x exp(offset)`` as ``(x / s, offset + log s)``, ``s`` the largest coefficient.

  ``s`` is a constant for differentiation (the represented value does not
  depend on it), as in `data_gen.pcfg.inside`; an all-zero ``x`` keeps ``s = 1``.
  """
  s = jax.lax.stop_gradient(jnp.max(x, axis=(-2, -1)))
  safe = jnp.where(s > 0, s, 1.0)
  return x / safe[..., None, None], offset + jnp.log(safe)


def poly_inside(grammar, dtype=jnp.float32, by: str | None = None) -> PolyMarginal:
  """The inside algorithm of a CNF grammar on polynomial leaves (`PolyMarginal`).

  Each chart entry holds, per nonterminal ``A`` and span, the coefficients of
  ``sum_T t^{|T|} P(A =>* span, evidence)``; the product of two children is
  `poly_mul`, and binary rules enter through their distinct child pairs, as
  in `data_gen.pcfg.inside`. ``by``: ``'height'`` (`_inside_by_height`, the
  default for an acyclic grammar, which every grammar of this project is) or
  ``'length'`` (`_inside_by_length`, the default otherwise).
  """
  h = layered.heights(grammar.binary)
  by = by or ("length" if h is None else "height")
  if by == "height":
    if h is None:
      raise ValueError("the grammar's binary rules have a cycle: compute it by length")
    return _inside_by_height(grammar, h, dtype)
  if by == "length":
    return _inside_by_length(grammar, dtype)
  raise ValueError(f"unknown inside algorithm {by!r}; choose 'height' or 'length'")


def _height_rules(grammar, h, gamma) -> list:
  """Per height ``j`` of parents: (child pairs ``(B, C)`` of its rules, ``[pairs, N]``
  probabilities ``gamma P(A -> B C)`` of the height-``j`` parents ``A``, the parents' mask)."""
  binary = np.asarray(grammar.binary, np.float64)
  rules = []
  for j in range(1, int(h.max()) + 1):
    parents = h == j
    _, b, c = np.nonzero(binary * parents[:, None, None])
    pairs = sorted(set(zip(b.tolist(), c.tolist())))
    if pairs:
      bs, cs = [p[0] for p in pairs], [p[1] for p in pairs]
      rules.append((pairs, gamma * np.where(parents[None, :], binary[:, bs, cs].T, 0.0),
                    parents))
  return rules


def _span_tables(grammar, rules, length: int):
  """Spans ``(i, l)`` of a sentence of ``length`` words, listed by length then start, and
  per height's pass its splits (parent span, left child span, right child span): only
  those whose child lengths the children can derive, and for parents that are never
  children only the spans ``[0, l)``. Returns (number of spans, passes, the spans
  ``[0, l)`` of every length)."""
  binary = np.asarray(grammar.binary, np.float64)
  is_child = (binary.sum(axis=(0, 2)) + binary.sum(axis=(0, 1))) > 0
  spans = [(i, l) for l in range(1, length + 1) for i in range(length - l + 1)]
  index = {sp: k for k, sp in enumerate(spans)}
  derives = np.zeros((grammar.num_nonterminals, length + 1), bool)   # A =>* some l words
  derives[:, 1] = grammar.emission.sum(axis=1) > 0
  has_rule = (binary > 0).reshape(len(binary), -1)
  for l in range(2, length + 1):
    for m in range(1, l):
      both = derives[:, m][:, None] & derives[:, l - m][None, :]
      derives[:, l] |= (has_rule & both.reshape(1, -1)).any(axis=1)
  passes = []
  for pairs, probs, parents in rules:
    pb, pc = np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])
    starts = (lambda n_i: range(n_i)) if is_child[parents].any() else (lambda n_i: range(1))
    splits = [(index[(i, l)], index[(i, m)], index[(i + m, l - m)])
              for l in range(2, length + 1) for i in starts(length - l + 1)
              for m in range(1, l) if np.any(derives[pb, m] & derives[pc, l - m])]
    if splits:
      parent, left, right = (np.array([sp[k] for sp in splits], np.int32) for k in range(3))
      filled, segment = np.unique(parent, return_inverse=True)   # the spans this pass fills
      passes.append((filled.astype(np.int32), segment.astype(np.int32), left, right,
                     pb, pc, probs))
  prefix = np.array([index[(0, l)] for l in range(1, length + 1)], np.int32)
  return len(spans), passes, prefix


def _inside_by_height(grammar, h, dtype) -> PolyMarginal:
  """Inside probabilities of all spans at once, one height of nonterminals at a time.

  The symbols of height ``j`` have children of lower heights only, so once
  those are complete one pass completes theirs, for all their spans and splits
  at once: ``H`` passes of a few large operations instead of one pass per span
  length (3 against 7 for ``pcfg_small``, 4 against 15 for the paper's
  grammar). A pass visits only the splits its rules can fill (child lengths the
  children derive), and for symbols that are never children (the start
  symbols of a layered grammar) only the spans ``[0, l)`` the marginal reads.
  The chart is span-major, ``[spans, B, D+1, N]``, so that gathering the
  children of every split (and the reverse pass's scatter) moves contiguous
  rows. Scaling: every
  leaf row is divided by its largest entry and every binary rule multiplied by
  `data_gen.pcfg.layered.rule_scale`, both exact factors returned in the log scale, so no span
  needs a scale of its own.
  """
  gamma = layered.rule_scale(grammar)
  start = np.asarray(grammar.start, np.float64)
  tables = functools.lru_cache(maxsize=None)(
      functools.partial(_span_tables, grammar, _height_rules(grammar, h, gamma)))

  def marginal(leaf, lengths):
    _, length, _, _ = leaf.shape
    num_spans, passes, prefix = tables(length)
    scale = jax.lax.stop_gradient(jnp.max(leaf, axis=(-2, -1)))
    scale = jnp.where(scale > 0, scale, 1.0)
    words = jnp.swapaxes(leaf / scale[..., None, None], 0, 1)                   # [L, B, D+1, N]
    chart = jnp.concatenate(
        [words, jnp.zeros((num_spans - length,) + words.shape[1:], dtype)])    # [spans, B, D+1, N]
    for filled, segment, left, right, sel_left, sel_right, probs in passes:
      lf = jnp.take(jnp.take(chart, left, axis=0), sel_left, axis=-1)   # [splits, B, D+1, K]
      rt = jnp.take(jnp.take(chart, right, axis=0), sel_right, axis=-1)
      o = jax.ops.segment_sum(poly_mul(lf, rt), segment, num_segments=len(filled),
                              indices_are_sorted=True)                     # [filled, B, D+1, K]
      chart = chart.at[filled].add(o @ jnp.asarray(probs, dtype), indices_are_sorted=True,
                                   unique_indices=True)
    top = jnp.take(chart, prefix, axis=0)                                        # [L, B, D+1, N]
    top = jnp.take_along_axis(top, (lengths - 1)[None, :, None, None], axis=0)[0]
    valid = jnp.arange(length)[None, :] < lengths[:, None]
    log_scale = (jnp.sum(jnp.where(valid, jnp.log(scale), 0.0), axis=1)
                 - (lengths - 1) * np.log(gamma))
    return top @ jnp.asarray(start, dtype), log_scale

  return marginal


def _inside_by_length(grammar, dtype) -> PolyMarginal:
  """`data_gen.pcfg.inside.inside_prefix` on polynomials: any CNF grammar, cycles included.

  One pass per span length, the chart kept by start and by end, every span
  with its own scale (its largest coefficient); child pairs are selected with
  0/1 matrices rather than gathers, whose reverse pass is a scatter.
  """
  left, right, probs = grammar.rule_pairs()
  eye = np.eye(grammar.num_nonterminals)
  sel_left, sel_right = eye[:, np.asarray(left)], eye[:, np.asarray(right)]
  probs = np.asarray(probs, np.float64)
  start = np.asarray(grammar.start, np.float64)

  def marginal(leaf, lengths):
    b, length, d1, n = leaf.shape
    by_start = jnp.zeros((b, length + 1, length, d1, n), dtype)      # [B, len, start, D+1, N]
    by_end = jnp.zeros((b, length + 1, length + 1, d1, n), dtype)    # [B, len, end, D+1, N]
    sc_start = jnp.zeros((b, length + 1, length), dtype)
    sc_end = jnp.zeros((b, length + 1, length + 1), dtype)
    beta, c = _normalise(leaf, jnp.zeros((b, length), dtype))
    by_start, sc_start = by_start.at[:, 1].set(beta), sc_start.at[:, 1].set(c)
    by_end, sc_end = by_end.at[:, 1, 1:].set(beta), sc_end.at[:, 1, 1:].set(c)
    for l in range(2, length + 1):
      n_i = length - l + 1
      lefts = by_start[:, 1:l, :n_i]                  # [B, m, n_i, D+1, N]: span (i, m)
      rights = by_end[:, 1:l][:, ::-1, l:]           # span (i + m, l - m)
      c = sc_start[:, 1:l, :n_i] + sc_end[:, 1:l][:, ::-1, l:]
      cmax = jnp.max(c, axis=1)
      w = jnp.exp(c - cmax[:, None])
      prod = poly_mul(lefts @ jnp.asarray(sel_left, dtype), rights @ jnp.asarray(sel_right, dtype))
      o = jnp.einsum("bmidk,bmi->bidk", prod, w)                     # [B, n_i, D+1, K]
      beta, c = _normalise(o @ jnp.asarray(probs, dtype), cmax)
      by_start, sc_start = by_start.at[:, l, :n_i].set(beta), sc_start.at[:, l, :n_i].set(c)
      by_end, sc_end = by_end.at[:, l, l:].set(beta), sc_end.at[:, l, l:].set(c)
    pick = (lengths - 1)[:, None]
    top = jnp.take_along_axis(by_start[:, 1:, 0], pick[:, :, None, None], axis=1)[:, 0]
    coef = top @ jnp.asarray(start, dtype)                               # [B, D+1]
    return coef, jnp.take_along_axis(sc_start[:, 1:, 0], pick, axis=1)[:, 0]

  return marginal


def poly_forward(initial, transition, dtype=jnp.float32) -> PolyMarginal:
  """The scaled forward algorithm of a Markov chain over states on polynomial leaves.

  ``alpha_t = (alpha_{t-1} @ T) * leaf_t`` with `poly_mul` for the product;
  positions past a sentence's length are skipped.
  """
  initial = np.asarray(initial, np.float64)
  transition = np.asarray(transition, np.float64)

  def marginal(leaf, lengths):
    trans = jnp.asarray(transition, dtype)
    alpha, log_z = _normalise(jnp.asarray(initial, dtype) * leaf[:, 0],
                              jnp.zeros(leaf.shape[:1], dtype))

    def step(carry, xs):
      alpha, log_z = carry
      t, leaf_t = xs
      new, new_z = _normalise(poly_mul(alpha @ trans, leaf_t), log_z)
      live = t < lengths
      return (jnp.where(live[:, None, None], new, alpha), jnp.where(live, new_z, log_z)), None

    ts = jnp.arange(1, leaf.shape[1])
    (alpha, log_z), _ = jax.lax.scan(step, (alpha, log_z),
                                     (ts, jnp.swapaxes(leaf[:, 1:], 0, 1)))
    return jnp.sum(alpha, axis=-1), log_z

  return marginal


def poly_marginal(language, dtype=jnp.float32, by: str | None = None) -> Callable:
  """``(evidence [B, L, D+1, V], lengths) -> (coef [B, D+1], log scale [B])`` of a language.

  ``Z(t) = sum_x p(x) prod_i sum_d t^d evidence[i, d, x_i] = sum_d coef[d] t^d
  exp(scale)`` over the sentences of each row's length (PCFG: before its length
  filter, which does not change a conditional). ``by`` picks a PCFG's inside
  algorithm (`poly_inside`).
  """
  if isinstance(language, PCFG):
    marginal, emission = poly_inside(language.grammar, dtype, by), language.grammar.emission
  elif isinstance(language, HMM):
    marginal, emission = poly_forward(language.initial, language.transition, dtype), \
        language.emission
  elif isinstance(language, MarkovChain):
    marginal, emission = poly_forward(language.initial, language.transition, dtype), None
  else:
    raise ValueError(f"{type(language).__name__} has no exact conditionals under masking; "
                     "exact BERT targets need a pcfg, hmm or markov language")
  emission_t = None if emission is None else np.asarray(emission, np.float64).T

  def fn(evidence, lengths):
    evidence = evidence.astype(dtype)
    leaf = evidence if emission_t is None else evidence @ jnp.asarray(emission_t, dtype)
    return marginal(leaf, lengths)

  return fn


class BertTargets:
  """``q_i(w) = P(x_i = w | y, i selected)`` of a language under a masking rule.

  Call with the model's view of a batch: ``words`` int [B, L] (the visible word
  ids; anything at [MASK] positions), ``masked`` bool [B, L] ([MASK] positions)
  and ``lengths`` [B]; returns [B, L, V], rows summing to 1 at every position
  that can have been selected, 0 elsewhere. Pure JAX: jit it, or call it inside
  a jitted function.
  """

  def __init__(self, language, spec: masking.MaskingSpec, dtype=jnp.float32,
               by: str | None = None):
    self.marginal = poly_marginal(language, dtype, by)
    self.vocab_size, self.max_length = language.vocab_size, language.max_length
    self.spec, self.dtype = spec, dtype
    self.k_table = masking.num_predictions_table(self.max_length, spec)
    self.degree = max(1, int(self.k_table.max()))   # r = k - m never exceeds it

  def __call__(self, words, masked, lengths):
    v, d1 = self.vocab_size, self.degree + 1
    words, lengths = jnp.asarray(words), jnp.asarray(lengths)
    width = words.shape[1]
    valid = jnp.arange(width)[None, :] < lengths[:, None]
    masked = jnp.asarray(masked, bool) & valid
    onehot = jax.nn.one_hot(words, v, dtype=self.dtype)
    # Past the length: all ones (finite and unused); [MASK]: all ones, never in T.
    e0 = jnp.where((masked | ~valid)[..., None], 1.0, onehot)
    channel = self.spec.random_prob / v + self.spec.keep_prob * onehot
    e1 = jnp.where((masked | ~valid)[..., None], 0.0, channel)
    k = jnp.asarray(self.k_table)[jnp.clip(lengths, 0, self.max_length)]
    r = jnp.clip(k - jnp.sum(masked, axis=1), 0, self.degree)

    def log_f(e0, e1):
      zeros = [jnp.zeros_like(e0)] * (d1 - 2)
      coef, _ = self.marginal(jnp.stack([e0, e1] + zeros, axis=2), lengths)
      f = jnp.take_along_axis(coef, r[:, None], axis=1)[:, 0]
      return jnp.sum(jnp.log(jnp.where(f > 0, f, 1.0)))

    g0, g1 = jax.grad(log_f, argnums=(0, 1))(e0, e1)
    num = jnp.where(masked[..., None], g0, e1 * g1)
    total = jnp.sum(num, axis=-1, keepdims=True)
    keep = valid[..., None] & (total > 0)
    return jnp.where(keep, num / jnp.where(total > 0, total, 1.0), 0.0)


def exact_targets(language, objective, dtype=jnp.float32) -> Callable:
  """``(prepared, raw) -> [B, P, model vocab]``: the exact targets of a prepared MLM batch
  of ``objective`` (a `flatness.model.objectives.Objective`), for ``config.targets =
  "exact"`` and the gradient noise with exact targets.

  ``prepared`` is `Objective.prepare`'s output (the corrupted ``ids`` and the
  selected ``positions``), ``raw`` the word batch (its ``lengths``). Row ``p``
  is ``P(x_i = v | y, i in S)`` at the word ``i`` of ``positions[:, p]``, zero
  on the special tokens and on padding predictions (weight 0). A pure JAX
  function of the generator's tensors (in ``dtype``): it runs inside the jitted
  step, for the masks that step drew.
  """
  if objective.causal:
    raise ValueError("needs the masked-LM objective (model.causal=False); causal runs take "
                     "targets='sampled'")
  targets = BertTargets(language, objective.spec, dtype)
  width = language.max_length

  def fn(prepared, raw):
    words = prepared["ids"][:, 1:width + 1]       # the corrupted sentence, words only
    q = targets(jnp.clip(words - tok.NUM_SPECIAL, 0), words == tok.MASK, raw["lengths"])
    at = jnp.clip(prepared["positions"] - 1, 0, width - 1)
    q = jnp.take_along_axis(q, at[..., None], axis=1)                    # [B, P, V]
    q = jnp.where(prepared["weights"][..., None] > 0, q, 0.0)
    return jnp.pad(q, ((0, 0), (0, 0), (tok.NUM_SPECIAL, 0)))

  return fn
