r"""The inside algorithm of a *layered* CNF grammar: per-layer rule blocks, no ``[N, N, N]``.

A grammar is layered when its nonterminals split into layers ``0 .. H`` such
that every binary rule ``A -> B C`` of a layer-``k`` symbol has both children
in layer ``k - 1`` (layer 0 only emits words; any layer may also emit). The
paper's grammar is: ``A4`` (layer 0), ``A3``, ``A2``, ``A1``, ``S1 .. S9``
(layer 4), 10 symbols a layer (9 at the top), so of its ``49^3`` binary-rule
entries only four blocks ``P(layer k -> layer k-1, layer k-1)`` of ``10 x 10 x
10`` can be non-zero (0.5% of the tensor is). `layers` detects the structure from
the rule tensor alone:
the layer of a symbol is its height in the rule graph (0 for a symbol without
binary rules, else one more than its highest child), and the grammar is
layered exactly when every rule's two children sit one layer below it.

Why it pays, besides the ~50x smaller rule blocks: a layer-``k`` symbol
derives at most ``hi_k <= 2^k`` words, so its chart holds spans of lengths
``1 .. min(hi_k, W)`` only (``W`` the padded sentence width), and a layer is
complete once the layer below is: ``H`` passes of a few large operations
instead of ``W - 1`` passes over span lengths, each of which touched every
nonterminal. With ``beta_k[b, i, l, A] = P(A =>* x_i .. x_{i+l-1})``:

    beta_k[i, 1, A] = leaf[i, A]                                   (emission)
    beta_k[i, l, A] = sum_m sum_{B, C} P_k[A, B, C] beta_{k-1}[i, m, B] beta_{k-1}[i+m, l-m, C]

computed for all splits ``m`` at once (`_binary_spans`): the outer products
of each split's children (shifted slices of the child chart: no gathers, so
the reverse pass has no scatters), one matrix product with the layer's block
``P_k`` reshaped to ``[|k-1|^2, |k|]``, and the sums over ``m + l' = l``. The
conditionals are the gradient of ``log Z`` (`data_gen.evidence`), so the
reverse pass is the outside algorithm; `_binary_spans` writes its step out
(`jax.custom_vjp`) because the one autodiff derives is several times slower
on XLA's CPU backend.

The top two layers need less than a full chart: the sentence probability only
reads the top layer's span ``[0, n)``, so layer ``H - 1`` is needed only on
prefixes ``[0, m)`` and suffixes ``[n - l', n)``. Prefixes come from the child
chart's row ``i = 0``; suffixes are prefixes of the reversed sentence, read
from the same child chart reversed per sentence by a gather (``n`` differs
between the sentences of a batch). For the paper's grammar this skips 7/8 of
the ``A1`` chart, which would otherwise be the largest. Then

    Z = sum_{m + l' = n} pre[m] Q suf[l'],   Q[B, C] = sum_A start[A] P_H[A, B, C]

(the start distribution folded into the top block), plus ``start . beta_k[0, n]``
for any lower layer that carries start mass.

Scaling, exact and free of per-span normalisers: each position's leaf row is
divided by its largest entry, and every binary rule is multiplied by
``gamma`` (the inverse geometric mean of the rule probabilities, weighted by
use). A derivation of ``n`` words uses exactly ``n - 1`` binary rules, so ``Z``
is the computed value times ``gamma^-(n-1) prod_i scale_i``; both factors are
constants for differentiation, like the normaliser of the general path.
"""
import jax
import jax.numpy as jnp
import numpy as np


def heights(binary) -> np.ndarray | None:
  """int [N]: each symbol's height in the binary-rule graph, or None if the rules have a cycle.

  Height 0: no binary rule; otherwise one more than the highest child.
  """
  child = (binary.sum(axis=2) + binary.sum(axis=1)) > 0     # child[A, B]: B is a child of A
  n = len(binary)
  h = np.zeros(n, np.int64)
  for _ in range(n + 1):
    new = np.where(child.any(axis=1), np.max(np.where(child, h[None, :], -1), axis=1) + 1, 0)
    if np.array_equal(new, h):
      return h
    h = new
  return None


def layers(grammar) -> list[np.ndarray] | None:
  """Symbol ids of each layer (bottom first) if the grammar is layered, else None.

  Layered: every binary rule ``A -> B C`` has ``height(B) = height(C) =
  height(A) - 1``, and there is at least one binary rule.
  """
  h = heights(grammar.binary)
  if h is None or h.max() < 1 or not grammar.emission.any():
    return None
  a, b, c = np.nonzero(grammar.binary)
  if not (np.all(h[b] == h[a] - 1) and np.all(h[c] == h[a] - 1)):
    return None
  return [np.flatnonzero(h == k) for k in range(int(h.max()) + 1)]


def longest(grammar) -> np.ndarray:
  """int [N]: the longest sentence each symbol derives (0: none), for an acyclic grammar."""
  h = heights(grammar.binary)
  hi = np.where(grammar.emission.sum(axis=1) > 0, 1, 0)
  for k in range(1, int(h.max()) + 1):          # children are lower, so done by then
    for a in np.flatnonzero(h == k):
      _, b, c = np.nonzero(grammar.binary[a:a + 1])
      ok = (hi[b] > 0) & (hi[c] > 0)
      if ok.any():
        hi[a] = max(hi[a], int(np.max(hi[b][ok] + hi[c][ok])))
  return hi


def rule_scale(grammar) -> float:
  """gamma: the inverse geometric mean of the binary rules' probabilities, weighted by use.

  Every span of ``l`` words is multiplied by ``gamma^(l-1)``, which keeps a
  typical span's scaled inside value near 1 however long it is.
  """
  b = grammar.binary
  if not b.any():
    return 1.0
  try:
    uses = grammar.expected_counts()[:, None, None] * b
  except np.linalg.LinAlgError:
    uses = b
  uses = np.where(b > 0, np.maximum(uses, 0.0), 0.0)
  if not np.isfinite(uses).all() or uses.sum() <= 0:
    uses = (b > 0).astype(np.float64)
  log_b = np.log(np.where(b > 0, b, 1.0))
  return float(np.exp(-np.sum(uses * log_b) / uses.sum()))


def _antidiagonal_sum(y, lp):
  """``out[..., l - 2, :] = sum_{m + l' = l} y[..., m - 1, l' - 1, :]`` for l = 2 .. lp.

  Each split's slice padded into place on the length axis and summed: one
  fused elementwise loop. (A contraction with the 0/1 tensor ``[m + l' = l]``
  has the same value, but XLA's CPU backend runs such skinny products ~10x
  slower.)
  """
  nm, nr = y.shape[-3], y.shape[-2]
  terms = []
  for m in range(1, nm + 1):
    r = min(nr, lp - m)                    # right children longer than lp - m are not needed
    pad = [(0, 0)] * (y.ndim - 3) + [(m - 1, lp - m - r), (0, 0)]
    terms.append(jnp.pad(y[..., m - 1, :r, :], pad))
  return sum(terms)


def _antidiagonal_split(g, nm, nr):
  """The transpose of `_antidiagonal_sum`: ``[..., lp - 1, K] -> [..., nm, nr, K]``."""
  g = jnp.pad(g, [(0, 0)] * (g.ndim - 2) + [(0, nr), (0, 0)])
  return jnp.stack([g[..., m - 1:m - 1 + nr, :] for m in range(1, nm + 1)], axis=-3)


def _binary_spans(lefts, rights, rules, lp):
  """The binary-rule part of spans of lengths ``l = 2 .. lp``, ``[..., lp - 1, Np]``.

  ``out[..., l - 2, A] = sum_{m + l' = l} sum_{B, C} lefts[..., m - 1, B]
  rights[..., m - 1, l' - 1, C] rules[(B, C), A]``.

  From the left children of lengths ``m`` and the right children of lengths
  ``l'`` of each split: every pair's outer product times the rule block (one
  matrix product, ``[pairs, Nc^2] @ [Nc^2, Np]``), then the sums over
  ``m + l' = l``.
  Its reverse pass (the outside step) is written out: each pair's cotangent
  is a slice of the output's, times the block transposed, and each child's
  cotangent one batched contraction with the other child. Left to autodiff,
  the outer products' reverse pass becomes broadcast-and-reduce loops, which
  XLA's CPU backend runs several times slower. (A `jax.custom_vjp` supports
  reverse mode only: ``jax.grad``, not ``jax.jvp``.)
  """
  nc = lefts.shape[-1]
  nm, nr = lefts.shape[-2], rights.shape[-2]
  p = jnp.asarray(rules, lefts.dtype)                       # [(B, C), Np]

  def value(lefts, rights):
    outer = lefts[..., :, None, :, None] * rights[..., :, :, None, :]   # [..., m, l', B, C]
    return _antidiagonal_sum(outer.reshape(outer.shape[:-2] + (nc * nc,)) @ p, lp)

  @jax.custom_vjp
  def spans(lefts, rights):
    return value(lefts, rights)

  def spans_fwd(lefts, rights):
    return value(lefts, rights), (lefts, rights)

  def spans_bwd(res, g):
    lefts, rights = res
    g_pair = _antidiagonal_split(g, nm, nr) @ p.T                        # [..., m, l', B C]
    g_pair = g_pair.reshape(g_pair.shape[:-1] + (nc, nc))
    return (jnp.einsum("...mrbc,...mrc->...mb", g_pair, rights),
            jnp.einsum("...mrbc,...mb->...mrc", g_pair, lefts))

  spans.defvjp(spans_fwd, spans_bwd)
  return spans(lefts, rights)


def _full_chart(child, leaf, rules, lp):
  """[B, W, lp, Np]: all spans (start i, length 1 .. lp) of a layer, from its child's chart."""
  b, w, lc, nc = child.shape
  if lp == 1:
    return leaf[:, :, None, :]
  nm, nr = min(lc, lp - 1), min(lc, lp - 1)
  # Right children of span (i, l) split at m: (i + m, l - m), for all m: shifted slices,
  # zero past the width (their spans run past every sentence of the batch).
  padded = jnp.pad(child[:, :, :nr], ((0, 0), (0, nm), (0, 0), (0, 0)))
  rights = jnp.stack([padded[:, m:m + w] for m in range(1, nm + 1)], axis=2)   # [B, W, m, l', Nc]
  return jnp.concatenate(
      [leaf[:, :, None, :], _binary_spans(child[:, :, :nm], rights, rules, lp)], axis=2)


def _prefix_chart(child, leaf0, rules, lp):
  """[B, lp, Np]: the spans [0, l) of a layer from its child layer's full chart."""
  lc = child.shape[2]
  if lp == 1:
    return leaf0[:, None, :]
  nm = min(lc, lp - 1)
  return jnp.concatenate(
      [leaf0[:, None, :], _binary_spans(child[:, 0, :nm], child[:, 1:nm + 1, :nm], rules, lp)],
      axis=1)


class LayeredInside:
  """``log Z(evidence)`` for a layered grammar (see the module docstring)."""

  def __init__(self, grammar, layer_ids, dtype=jnp.float32):
    self.dtype = dtype
    self.layer_ids = layer_ids
    self.gamma = rule_scale(grammar)
    hi = longest(grammar)
    self.hi = [int(hi[ids].max()) for ids in layer_ids]
    emission = np.asarray(grammar.emission, np.float64)
    binary = np.asarray(grammar.binary, np.float64)
    start = np.asarray(grammar.start, np.float64)
    top = len(layer_ids) - 1
    # Emitting layers' rows of the emission matrix, layer after layer: one matrix product
    # gives every leaf, then static slices split it.
    self.emits = [bool(emission[ids].any()) for ids in layer_ids]
    cols = [ids for ids, e in zip(layer_ids, self.emits) if e]
    self.emission_t = emission[np.concatenate(cols)].T if cols else None
    self.leaf_slices, offset = [], 0
    for ids, e in zip(layer_ids, self.emits):
      self.leaf_slices.append(slice(offset, offset + len(ids)) if e else None)
      offset += len(ids) if e else 0
    # Layer k's block P_k[(B, C), A] = gamma P(A -> B C), children of layer k - 1.
    self.rules = [None]
    for k in range(1, top + 1):
      ids, kids = layer_ids[k], layer_ids[k - 1]
      block = binary[np.ix_(ids, kids, kids)]                        # [Np, Nc, Nc]
      self.rules.append(self.gamma * block.transpose(1, 2, 0))       # [Nc, Nc, Np]
    self.q = np.einsum("a,bca->bc", start[layer_ids[top]], self.rules[top])
    self.start = [start[ids] for ids in layer_ids]

  def _leaves(self, evidence, lengths):
    """Per layer [B, W, N_k] scaled leaves (zeros for a silent layer), and the log scale [B]."""
    b, w, _ = evidence.shape
    leaf = evidence @ jnp.asarray(self.emission_t, self.dtype)
    scale = jax.lax.stop_gradient(jnp.max(leaf, axis=-1))
    scale = jnp.where(scale > 0, scale, 1.0)
    leaf = leaf / scale[..., None]
    valid = jnp.arange(w)[None, :] < lengths[:, None]
    log_scale = jnp.sum(jnp.where(valid, jnp.log(scale), 0.0), axis=1)
    out = [leaf[..., s] if s is not None else jnp.zeros((b, w, len(ids)), self.dtype)
           for s, ids in zip(self.leaf_slices, self.layer_ids)]
    return out, log_scale

  def log_marginal(self, evidence, lengths):
    """[B]: ``log sum_x p(x) prod_i e[i, x_i]`` over sentences of each row's length.

    ``evidence`` [B, W, V] must already hold all-ones rows past each length.
    """
    dt = self.dtype
    b, w, _ = evidence.shape
    top = len(self.layer_ids) - 1
    leaves, log_scale = self._leaves(evidence, lengths)
    lp = [max(1, min(h, w)) for h in self.hi]     # a layer's span lengths that fit the width
    # One-hot [B, W]: row b selects length n_b (index n_b - 1) on a length axis.
    at_len = (jnp.arange(w)[None, :] == (lengths - 1)[:, None]).astype(dt)
    rules = [None] + [r.reshape(-1, r.shape[-1]) for r in self.rules[1:]]
    z = jnp.zeros((b,), dt)
    # Layers 0 .. top - 2: full charts.
    chart = leaves[0][:, :, None, :]
    for k in range(top - 1):
      if k > 0:
        chart = _full_chart(chart, leaves[k], rules[k], lp[k])
      if self.start[k].any():
        z = z + jnp.einsum("bl,bla,a->b", at_len[:, :lp[k]], chart[:, 0], jnp.asarray(
            self.start[k], dt))
    # Layer top - 1: prefixes [0, m) and suffixes [n - l', n) only.
    k = top - 1
    if k == 0:
      pre, lp_k = leaves[0][:, :1], 1
      suf = jnp.einsum("bj,bja->ba", at_len, leaves[0])[:, None]
    else:
      lp_k = lp[k]
      pre = _prefix_chart(chart, leaves[k][:, 0], rules[k], lp_k)
      # The child chart of the reversed sentence, rev[b, i, l] = chart[b, n_b - i - l, l] (0 if
      # n_b - i - l < 0), on the rows i = 0 .. lp_k - 1 that a prefix chart reads.
      i, l = np.arange(min(lp_k, w)), np.arange(1, chart.shape[2] + 1)
      src = lengths[:, None, None] - i[None, :, None] - l[None, None, :]            # [B, I, L]
      rev = jnp.take_along_axis(chart, jnp.maximum(src, 0)[..., None], axis=1)
      rev = jnp.where((src >= 0)[..., None], rev, 0.0)
      last_leaf = jnp.einsum("bj,bja->ba", at_len, leaves[k])
      nc = chart.shape[-1]
      rules_rev = self.rules[k].transpose(1, 0, 2).reshape(nc * nc, -1)
      suf = _prefix_chart(rev, last_leaf, rules_rev, lp_k)
    if self.start[k].any():
      z = z + jnp.einsum("bl,bla,a->b", at_len[:, :lp_k], pre, jnp.asarray(self.start[k], dt))
    # Top layer: Z = sum_{m + l' = n} pre[m] Q suf[l'] (+ its own emission at n = 1).
    g = jnp.einsum("bmc,cd,bld->bml", pre, jnp.asarray(self.q, dt), suf)           # [B, lp, lp]
    m = np.arange(1, lp_k + 1)
    pick = (m[None, :, None] + m[None, None, :]) == lengths[:, None, None]
    z = z + jnp.sum(jnp.where(pick, g, 0.0), axis=(1, 2))
    if self.emits[top] and self.start[top].any():
      z = z + jnp.where(lengths == 1, leaves[top][:, 0] @ jnp.asarray(self.start[top], dt), 0.0)
    return jnp.log(z) + log_scale - (lengths - 1) * np.log(self.gamma)
