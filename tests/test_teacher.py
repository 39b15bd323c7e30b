"""Teacher transformer: its distribution is normalised, sampled faithfully, scored exactly."""
import itertools

import numpy as np
import pytest

import brute_force
from data_gen.teacher import Teacher, TeacherConfig

CFG = TeacherConfig(vocab_size=3, num_classes=2, min_length=1, max_length=3, hidden_size=8,
                    num_layers=1, num_heads=1, mlp_dim=16, init_std=0.5)


@pytest.fixture(scope="module")
def teacher():
  t = Teacher(CFG, seed=1, batch_size=4)
  sents = [s for n in range(1, 4) for s in itertools.product(range(3), repeat=n)]
  tokens = np.zeros((len(sents), 3), np.int32)
  for r, s in enumerate(sents):
    tokens[r, :len(s)] = s
  lengths = np.array([len(s) for s in sents], np.int32)
  probs = dict(zip(sents, np.exp(t.log_prob(tokens, lengths))))
  return t, sents, tokens, lengths, probs


def test_distribution_is_normalised(teacher):
  _, _, _, _, probs = teacher
  assert sum(probs.values()) == pytest.approx(1.0, abs=1e-5)


def test_sampling_frequencies_fit_the_teacher(teacher):
  t, sents, _, _, probs = teacher
  s = t.sample(np.random.default_rng(0), 20000)
  assert s.lengths.min() >= 1 and s.lengths.max() <= 3
  idx = {k: i for i, k in enumerate(sents)}
  observed = np.bincount([idx[tuple(r[:n])] for r, n in zip(s.tokens.tolist(), s.lengths)],
                         minlength=len(sents))
  expected = np.array([probs[k] for k in sents]) * len(s)
  assert brute_force.goodness_of_fit_pvalue(observed, expected) > 1e-3
  assert set(np.unique(s.latent["class"])) == {0, 1}


def test_conditionals_and_class_posteriors_match_enumeration(teacher):
  t, sents, tokens, lengths, probs = teacher
  long = lengths == 3
  cond = t.conditionals(tokens[long], lengths[long])
  for r, s in enumerate(np.array(sents, dtype=object)[long]):
    for i in range(3):
      np.testing.assert_allclose(cond[r, i], brute_force.conditional(probs, s, i, 3), atol=1e-5)
  with pytest.raises(ValueError, match="single-masked"):
    t.conditionals(tokens, lengths, mask=np.ones_like(tokens, bool))
  # p(c | x) by Bayes' rule from the per-class likelihoods, which sum to p(x) over c.
  ll = t.class_log_likelihoods(tokens, lengths)
  np.testing.assert_allclose(np.logaddexp.reduce(ll, axis=1) - np.log(2),
                             np.log([probs[s] for s in sents]), rtol=1e-5)
  post = t.class_posteriors(tokens, lengths)
  np.testing.assert_allclose(post, np.exp(ll) / np.exp(ll).sum(1, keepdims=True), rtol=1e-5)
