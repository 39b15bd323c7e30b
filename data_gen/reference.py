"""Straightforward reference implementations: textbook CKY inside-outside and forward-backward.

One sentence at a time, plain numpy loops over spans and split points, dense
rule tensors, no scaling (float64 is enough for the lengths we use). They are
the baseline of `benchmarks/data_gen.py` and an independent cross-check of the
fast batched JAX code on grammars too large to enumerate.
"""
import numpy as np


def pcfg_conditionals(grammar, words) -> np.ndarray:
  """[n, V]: p(x_i = w | x_{-i}) for one sentence, by CKY inside and outside."""
  n = len(words)
  r, e, start = grammar.binary, grammar.emission, grammar.start
  nt = grammar.num_nonterminals
  beta = np.zeros((n, n + 1, nt))
  for i, w in enumerate(words):
    beta[i, i + 1] = e[:, w]
  for length in range(2, n + 1):
    for i in range(n - length + 1):
      j = i + length
      for k in range(i + 1, j):
        beta[i, j] += np.einsum("abc,b,c->a", r, beta[i, k], beta[k, j])
  alpha = np.zeros((n, n + 1, nt))
  alpha[0, n] = start
  for length in range(n, 1, -1):
    for i in range(n - length + 1):
      j = i + length
      for k in range(i + 1, j):
        # The parent (i, j) gives outside mass to its children (i, k) and (k, j).
        alpha[i, k] += np.einsum("abc,a,c->b", r, alpha[i, j], beta[k, j])
        alpha[k, j] += np.einsum("abc,a,b->c", r, alpha[i, j], beta[i, k])
  joint = np.stack([alpha[i, i + 1] @ e for i in range(n)])
  return joint / joint.sum(axis=1, keepdims=True)


def hmm_conditionals(initial, transition, emission, words) -> np.ndarray:
  """[n, V]: p(x_t = w | x_{-t}) for one sentence, by forward-backward."""
  n = len(words)
  k = len(initial)
  fwd = np.zeros((n, k))      # p(x_<t, z_t) before emitting x_t
  bwd = np.ones((n, k))       # p(x_>t | z_t)
  fwd[0] = initial
  for t in range(1, n):
    fwd[t] = (fwd[t - 1] * emission[:, words[t - 1]]) @ transition
  for t in range(n - 2, -1, -1):
    bwd[t] = transition @ (emission[:, words[t + 1]] * bwd[t + 1])
  joint = (fwd * bwd) @ emission
  return joint / joint.sum(axis=1, keepdims=True)


class RecursiveSampler:
  """A PCFG sampler with one Python call per node (the usual recursive generator)."""

  def __init__(self, grammar):
    self.grammar = grammar
    self.rules = []
    for a in range(grammar.num_nonterminals):
      rhs, probs = [], []
      for b, c in zip(*np.nonzero(grammar.binary[a])):
        rhs.append((int(b), int(c)))
        probs.append(grammar.binary[a, b, c])
      for w in np.flatnonzero(grammar.emission[a]):
        rhs.append(int(w))
        probs.append(grammar.emission[a, w])
      self.rules.append((rhs, np.cumsum(probs) / np.sum(probs)))
    self.start = np.cumsum(grammar.start) / grammar.start.sum()

  def _expand(self, a, rng, out):
    rhs, cum = self.rules[a]
    r = rhs[min(int(np.searchsorted(cum, rng.random(), side="right")), len(rhs) - 1)]
    if isinstance(r, tuple):
      self._expand(r[0], rng, out)
      self._expand(r[1], rng, out)
    else:
      out.append(r)

  def sample(self, rng, max_length=31):
    while True:
      out = []
      a = min(int(np.searchsorted(self.start, rng.random(), side="right")), len(self.start) - 1)
      self._expand(a, rng, out)
      if len(out) <= max_length:
        return out
