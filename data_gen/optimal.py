"""Exact optimal pre-training losses, estimated over sampled sentences.

For each sentence the optimal loss is exact (computed from the generator); the
only randomness is which sentences (and, for BERT masking, which masks) are
drawn, so every loss is a ratio of means ``sum(loss) / sum(predictions)``
(pooled over tokens, as training losses are) reported with its delta-method
standard error. Units: nats per predicted token.

* `single_masked_loss`: ``E[sum_i H(p(x_i | x_{-i}))] / E[n]`` -- the paper's
  optimal loss (each position masked alone, the loss of the "lookup table").
* `causal_loss`: ``E[-log p(x)] / E[n + 1]`` -- next-token prediction of
  ``w_1 .. w_n, [SEP]``.
* `bert_masking_loss`: the loss of the Bayes-optimal predictor under BERT's
  masking rule (`flatness.model.masking.MaskingSpec`: ``k`` positions selected, each
  replaced by [MASK] / a random word / kept with probabilities 0.8 / 0.1 /
  0.1). Given the corrupted sentence ``y``, the selected set is
  ``S = M ∪ T`` with ``M`` the [MASK] positions and ``T`` an unknown set of
  ``k - |M|`` visible positions. For each candidate ``T`` the evidence is
  all-ones at ``M``, the noise channel ``c(y_i | w) = p_rand / V + p_keep [w = y_i]``
  on ``T`` and one-hot elsewhere; ``P(T | y) ∝ Z_T`` and the optimal prediction
  at a selected position ``i`` is ``P(x_i | y, i ∈ S) ∝ sum_{T: i ∈ M ∪ T}
  Z_T P(x_i | evidence_T)``. Exact per draw; languages with multilinear
  evidence only (PCFG, HMM).
* `emitter_entropy`: a diagnostic bound no model reaches, the entropy of each
  word given the PCFG nonterminal that emitted it (the parse known).
"""
import dataclasses
import itertools

import numpy as np

from flatness.model import masking


@dataclasses.dataclass(frozen=True)
class Estimate:
  value: float
  stderr: float
  sentences: int

  def as_dict(self):
    return dict(value=self.value, stderr=self.stderr, sentences=self.sentences)


def ratio_estimate(numerator, denominator) -> Estimate:
  """sum(num) / sum(den) with the delta-method standard error of a ratio of means."""
  x, y = np.asarray(numerator, np.float64), np.asarray(denominator, np.float64)
  n = len(x)
  r = x.sum() / y.sum()
  if n < 2:
    return Estimate(float(r), float("nan"), n)
  resid = x - r * y
  se = np.sqrt(np.var(resid, ddof=1) / n) / y.mean()
  return Estimate(float(r), float(se), n)


def _entropy_rows(p):
  return -np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0), axis=-1)


def single_masked_loss(language, sentences) -> Estimate:
  cond = language.conditionals(sentences.tokens, sentences.lengths).astype(np.float64)
  return ratio_estimate(_entropy_rows(cond).sum(axis=1), sentences.lengths)


def causal_loss(language, sentences) -> Estimate:
  lp = language.log_prob(sentences.tokens, sentences.lengths)
  return ratio_estimate(-lp, sentences.lengths + 1)


def emitter_entropy(language, sentences) -> Estimate:
  """Needs ``latent['emitter']`` from the PCFG sampler."""
  h = language.emitter_entropy()
  em = sentences.latent["emitter"]
  per_token = np.where(em >= 0, h[np.maximum(em, 0)], 0.0)
  return ratio_estimate(per_token.sum(axis=1), sentences.lengths)


def corrupt(rng, tokens, length, spec: masking.MaskingSpec, vocab: int):
  """One draw of BERT masking: (selected positions, corrupted words with -1 = [MASK])."""
  k = masking.num_predictions(length, spec)
  selected = np.sort(rng.choice(length, size=k, replace=False))
  y = np.array(tokens[:length], np.int64)
  u = rng.random(k)
  for pos, ui in zip(selected, u):
    if ui < spec.mask_prob:
      y[pos] = -1
    elif ui < spec.mask_prob + spec.random_prob:
      y[pos] = rng.integers(vocab)
  return selected, y


def _candidate_evidence(y, width, v, spec, max_candidates):
  """Evidence rows and selected masks of every selection consistent with corrupted y."""
  n = len(y)
  k = masking.num_predictions(n, spec)
  masked = np.flatnonzero(y < 0)
  visible = np.flatnonzero(y >= 0)
  r = k - len(masked)
  if r < 0:
    raise ValueError(f"{len(masked)} [MASK] tokens but BERT masking selects only {k}")
  cands = list(itertools.combinations(visible.tolist(), r))
  if len(cands) > max_candidates:
    raise ValueError(f"{len(cands)} candidate selections exceed max_candidates={max_candidates}")
  base = np.zeros((width, v), np.float32)
  base[visible, y[visible]] = 1.0
  base[masked] = 1.0
  channel = np.full(v, spec.random_prob / v, np.float32)
  ev = np.repeat(base[None], len(cands), axis=0)
  selected = np.zeros((len(cands), width), bool)
  selected[:, masked] = True
  for c, t in enumerate(cands):
    t = list(t)
    ev[c, t] = channel
    ev[c, t, y[t]] += spec.keep_prob
    selected[c, t] = True
  return ev, selected


def bayes_predictions(language, corrupted, spec: masking.MaskingSpec, *,
                      max_candidates: int = 20000):
  """For each corrupted sentence y (word ids, -1 = [MASK]): [n, V] optimal predictions.

  Row i is ``P(x_i = w | y, i selected)``; rows of positions that cannot have
  been selected are zero. All candidate selections of all sentences go through
  the exact computation in one batched call.
  """
  width, v = language.max_length, language.vocab_size
  evs, sels, owner = [], [], []
  for j, y in enumerate(corrupted):
    ev, sel = _candidate_evidence(np.asarray(y), width, v, spec, max_candidates)
    evs.append(ev), sels.append(sel), owner.append(np.full(len(ev), j))
  ev, sel, owner = np.concatenate(evs), np.concatenate(sels), np.concatenate(owner)
  lengths = np.array([len(corrupted[j]) for j in owner], np.int32)
  post, log_z = language.soft_conditionals(np.zeros((len(ev), width), np.int32), lengths, ev)
  out = []
  for j, y in enumerate(corrupted):
    rows = owner == j
    w = np.exp(log_z[rows] - np.max(log_z[rows]))               # P(T | y) up to a constant
    num = np.einsum("c,ci,civ->iv", w, sel[rows], post[rows].astype(np.float64))
    den = np.einsum("c,ci->i", w, sel[rows])
    q = np.where(den[:, None] > 0, num / np.where(den > 0, den, 1.0)[:, None], 0.0)
    out.append(q[:len(y)])
  return out


def bert_masking_loss(language, sentences, spec: masking.MaskingSpec = masking.MaskingSpec(),
                      seed: int = 0, chunk: int = 256) -> Estimate:
  if not hasattr(language, "soft_conditionals"):
    raise ValueError(f"{type(language).__name__} has no soft-evidence computation; the exact "
                     "BERT-masking loss needs a PCFG or an HMM")
  rng = np.random.default_rng(seed)
  losses, counts = [], []
  for start in range(0, len(sentences), chunk):
    rows = sentences.tokens[start:start + chunk]
    lengths = sentences.lengths[start:start + chunk]
    draws = [corrupt(rng, row, int(n), spec, language.vocab_size)
             for row, n in zip(rows, lengths)]
    preds = bayes_predictions(language, [y for _, y in draws], spec)
    for (selected, _), row, q in zip(draws, rows, preds):
      p = q[selected, row[selected]]
      losses.append(-np.sum(np.log(np.maximum(p, 1e-300))))
      counts.append(len(selected))
  return ratio_estimate(losses, counts)
