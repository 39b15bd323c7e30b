"""A batched numpy inside-outside: the baseline of `benchmarks/data_gen.py`.

`data_gen.reference.pcfg_conditionals` is the textbook algorithm, one sentence
at a time; this is the same algorithm vectorised the way a numpy user would
write it, so that the benchmark measures our JAX code against a fair CPU
implementation rather than only against Python loops. It is general (any CNF
grammar, no use of the layer structure), float64 without scaling (enough for
the paper's lengths), and runs on whatever BLAS threads numpy is given (the
benchmark gives it one).
"""
import numpy as np


def conditionals(grammar, tokens, lengths) -> np.ndarray:
  """[n, L, V]: p(x_i = w | x_-i) for every position of every sentence, zero past each length.

  Sentences of equal length form one batch. ``beta[:, i, j]`` is the inside
  vector of span ``[i, j)`` and ``alpha[:, i, j]`` its outside vector. For
  each span length, all start positions at once, and for each split ``m``:
  ``o += (beta[i, i+m] @ S_left) * (beta[i+m, i+l] @ S_right)`` over the
  ``K`` distinct child pairs (``S`` are 0/1 selection matrices ``[N, K]``;
  262 pairs for the paper's grammar instead of 49^2), then ``beta[i, i+l] = o
  @ probs`` with ``probs[k, A] = P(A -> B_k C_k)``. The outside pass runs the
  same loops top-down: ``a = alpha[i, i+l] @ probs.T``, and each child gets
  ``(a * the other child) @ S^T``. Position ``i``'s conditional is
  ``alpha[i, i+1] @ emission``, normalised.
  """
  left, right, probs = grammar.rule_pairs()
  eye = np.eye(grammar.num_nonterminals)
  sel_l, sel_r = eye[:, left], eye[:, right]               # [N, K]
  emission, start = grammar.emission, grammar.start
  tokens, lengths = np.asarray(tokens), np.asarray(lengths)
  out = np.zeros(tokens.shape + (grammar.vocab_size,))
  for n in np.unique(lengths):
    rows = np.flatnonzero(lengths == n)
    words = tokens[rows, :n]
    diag = (np.arange(n), np.arange(1, n + 1))
    beta = np.zeros((len(rows), n, n + 1, grammar.num_nonterminals))
    beta[:, diag[0], diag[1]] = emission.T[words]
    for l in range(2, n + 1):
      i = np.arange(n - l + 1)
      o = 0.0
      for m in range(1, l):
        o = o + (beta[:, i, i + m] @ sel_l) * (beta[:, i + m, i + l] @ sel_r)
      beta[:, i, i + l] = o @ probs
    alpha = np.zeros_like(beta)
    alpha[:, 0, n] = start
    for l in range(n, 1, -1):
      i = np.arange(n - l + 1)
      a = alpha[:, i, i + l] @ probs.T                      # [b, starts, K]
      for m in range(1, l):
        bl, br = beta[:, i, i + m] @ sel_l, beta[:, i + m, i + l] @ sel_r
        alpha[:, i, i + m] += (a * br) @ sel_l.T
        alpha[:, i + m, i + l] += (a * bl) @ sel_r.T
    joint = alpha[:, diag[0], diag[1]] @ emission
    out[rows, :n] = joint / joint.sum(axis=-1, keepdims=True)
  return out
