"""Independent truths for tests: exhaustive enumeration over derivations and states.

Everything here is deliberately naive (dicts of whole sentences, float64) and
shares no code with `data_gen`, so agreement is evidence of correctness (it
reads BERT's selection count from `flatness.model.masking`, which defines the rule).
"""
import itertools
import math

import numpy as np

from flatness.model import masking


def pcfg_strings(grammar, max_len):
  """{symbol: {sentence tuple: P(symbol =>* sentence)}} for sentences up to max_len words."""
  n = grammar.num_nonterminals
  table = {a: {} for a in range(n)}
  # Grow by sentence length: a span of length L uses children of total length L.
  for length in range(1, max_len + 1):
    for a in range(n):
      out = table[a]
      if length == 1:
        for w in np.flatnonzero(grammar.emission[a]):
          out[(int(w),)] = out.get((int(w),), 0.0) + grammar.emission[a, w]
        continue
      for b, c in zip(*np.nonzero(grammar.binary[a])):
        p = grammar.binary[a, b, c]
        for s1, p1 in list(table[b].items()):
          if len(s1) >= length:
            continue
          for s2, p2 in list(table[c].items()):
            if len(s1) + len(s2) == length:
              out[s1 + s2] = out.get(s1 + s2, 0.0) + p * p1 * p2
  return table


def pcfg_language(grammar, max_len):
  """{sentence: p(sentence)} (unfiltered, for all sentences up to max_len words)."""
  table = pcfg_strings(grammar, max_len)
  probs = {}
  for a in np.flatnonzero(grammar.start):
    for s, p in table[a].items():
      probs[s] = probs.get(s, 0.0) + grammar.start[a] * p
  return probs


def conditional(probs, sentence, position, vocab, mask=()):
  """p(x_position = w | visible words), visible = every position not in mask or position."""
  hidden = set(mask) | {position}
  out = np.zeros(vocab)
  for s, p in probs.items():
    if len(s) != len(sentence):
      continue
    if all(s[j] == sentence[j] for j in range(len(s)) if j not in hidden):
      out[s[position]] += p
  return out / out.sum()


def hmm_joint(initial, transition, emission, length):
  """{(states, words): p} for all sequences of the given length."""
  k, v = emission.shape
  out = {}
  for z in itertools.product(range(k), repeat=length):
    pz = initial[z[0]] * math.prod(transition[z[t - 1], z[t]] for t in range(1, length))
    if pz == 0:
      continue
    for x in itertools.product(range(v), repeat=length):
      p = pz * math.prod(emission[z[t], x[t]] for t in range(length))
      if p > 0:
        out[(z, x)] = p
  return out


def entropy(p):
  p = np.asarray(p, np.float64)
  return float(-np.sum(p[p > 0] * np.log(p[p > 0])))


def goodness_of_fit_pvalue(observed, expected, min_expected=5.0):
  """Chi-square p-value, pooling cells with fewer than ``min_expected`` expected counts."""
  from scipy import stats  # pylint: disable=g-import-not-at-top
  observed, expected = np.asarray(observed, float), np.asarray(expected, float)
  big = expected >= min_expected
  obs, exp = observed[big], expected[big]
  if (~big).any():
    obs, exp = np.r_[obs, observed[~big].sum()], np.r_[exp, expected[~big].sum()]
  exp = exp * obs.sum() / exp.sum()
  return stats.chisquare(obs, exp).pvalue


def bert_targets(probs, y, spec, v):
  """[n, V]: P(x_i = w | y, i selected), summing p(x) P(S) P(y | x, S) over sentences and
  selections (y: word ids, -1 = [MASK]); zero rows where i cannot have been selected."""
  n = len(y)
  k = masking.num_predictions(n, spec)   # the rule itself (a definition, not a computation)
  num = np.zeros((n, v))
  for x, p in probs.items():
    if len(x) != n:
      continue
    for sel in itertools.combinations(range(n), k):
      w = p
      for i in range(n):
        if i in sel:
          w *= spec.mask_prob if y[i] < 0 else spec.random_prob / v + spec.keep_prob * (
              y[i] == x[i])
        elif y[i] != x[i]:
          w = 0.0
      for i in sel:
        num[i, x[i]] += w
  total = num.sum(axis=1, keepdims=True)
  return np.where(total > 0, num / np.where(total > 0, total, 1.0), 0.0)
