"""HMM: probabilities against enumeration and hmmlearn, and the Markov chain's closed forms."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import brute_force
from data_gen.hmm import HMM, HMMConfig, random_hmm
from data_gen.markov import MarkovChain

TINY = HMMConfig(num_states=3, vocab_size=3, length=4, transitions_per_state=2,
                 words_per_state=2, task_positions=(1, 3))


@pytest.fixture(scope="module")
def tiny():
  with jax.enable_x64(True):
    hmm = HMM.random(TINY, seed=2, dtype=jnp.float64, batch_size=8)
    joint = brute_force.hmm_joint(hmm.initial, hmm.transition, hmm.emission, TINY.length)
    probs = {}
    for (_, x), p in joint.items():
      probs[x] = probs.get(x, 0.0) + p
    sents = sorted(probs, key=lambda s: -probs[s])[:30]
    tokens = np.array(sents, np.int32)
    lengths = np.full(len(sents), TINY.length, np.int32)
    yield dict(hmm=hmm, joint=joint, probs=probs, sents=sents, tokens=tokens, lengths=lengths)


def test_log_probs_match_enumeration(tiny):
  lp = tiny["hmm"].log_prob(tiny["tokens"], tiny["lengths"])
  np.testing.assert_allclose(lp, [np.log(tiny["probs"][s]) for s in tiny["sents"]], rtol=1e-10)


def test_conditionals_match_enumeration(tiny):
  rng = np.random.default_rng(0)
  for mask in (None, rng.random(tiny["tokens"].shape) < 0.4):
    cond = tiny["hmm"].conditionals(tiny["tokens"], tiny["lengths"], mask)
    for r, s in enumerate(tiny["sents"]):
      hidden = [] if mask is None else list(np.flatnonzero(mask[r]))
      for i in range(len(s)):
        np.testing.assert_allclose(cond[r, i], brute_force.conditional(tiny["probs"], s, i, 3,
                                                                       mask=hidden), atol=1e-12)


def test_state_posteriors_match_enumeration(tiny):
  post = tiny["hmm"].state_posteriors(tiny["tokens"], tiny["lengths"])
  for r, s in enumerate(tiny["sents"][:10]):
    expected = np.zeros((TINY.length, TINY.num_states))
    for (z, x), p in tiny["joint"].items():
      if x == s:
        expected[np.arange(TINY.length), z] += p
    np.testing.assert_allclose(post[r], expected / expected.sum(1, keepdims=True), atol=1e-12)


def test_log_likelihood_agrees_with_hmmlearn():
  hmmlearn = pytest.importorskip("hmmlearn.hmm")
  cfg = HMMConfig(num_states=12, vocab_size=20, length=9, transitions_per_state=4,
                  words_per_state=6, task_positions=(2,))
  hmm = HMM.random(cfg, seed=5)
  ref = hmmlearn.CategoricalHMM(n_components=12)
  ref.startprob_, ref.transmat_, ref.emissionprob_ = hmm.initial, hmm.transition, hmm.emission
  ref.n_features = 20
  s = hmm.sample(np.random.default_rng(1), 25)
  ours = hmm.log_prob(s.tokens, s.lengths)
  theirs = [ref.score(row[:, None]) for row in s.tokens]
  np.testing.assert_allclose(ours, theirs, rtol=1e-5)


def test_markov_chain_is_an_hmm_with_identity_emissions():
  """The HMM machinery reproduces the Markov chain's closed-form conditionals and loss."""
  chain = MarkovChain(num_words=5, length=6, concentration=0.7, seed=3)
  hmm = HMM(chain.initial, chain.transition, np.eye(5), length=6, task_positions=())
  s = chain.sample(np.random.default_rng(0), 200)
  np.testing.assert_allclose(hmm.conditionals(s.tokens, s.lengths),
                             chain.conditionals(s.tokens, s.lengths), atol=1e-5)
  mask = np.random.default_rng(1).random(s.tokens.shape) < 0.3
  np.testing.assert_allclose(hmm.conditionals(s.tokens, s.lengths, mask),
                             chain.conditionals(s.tokens, s.lengths, mask), atol=1e-5)
  np.testing.assert_allclose(hmm.log_prob(s.tokens, s.lengths), chain.log_prob(s.tokens, s.lengths),
                             rtol=1e-5)


def test_sampling_frequencies_fit_the_model(tiny):
  hmm = tiny["hmm"]
  s = hmm.sample(np.random.default_rng(0), 20000)
  keys = sorted(tiny["probs"], key=lambda k: -tiny["probs"][k])
  idx = {k: i for i, k in enumerate(keys)}
  observed = np.bincount([idx[tuple(r)] for r in s.tokens.tolist()], minlength=len(keys))
  expected = np.array([tiny["probs"][k] for k in keys]) * len(s)
  assert brute_force.goodness_of_fit_pvalue(observed, expected) > 1e-3
  # Task labels are the sampled hidden states.
  np.testing.assert_array_equal(hmm.task_labels("state_1", s), s.latent["states"][:, 1])


def test_random_hmm_is_seeded_and_sparse():
  a, b = random_hmm(HMMConfig(), 0), random_hmm(HMMConfig(), 0)
  assert all(np.array_equal(x, y) for x, y in zip(a, b))
  assert not np.array_equal(a[1], random_hmm(HMMConfig(), 1)[1])
  assert ((a[1] > 0).sum(1) == 10).all() and ((a[2] > 0).sum(1) == 20).all()
  np.testing.assert_allclose(a[1].sum(1), 1) and np.testing.assert_allclose(a[2].sum(1), 1)
  with pytest.raises(ValueError, match="hmm.task_positions"):
    HMMConfig(length=8, task_positions=(10,))


def test_fast_conditionals_match_the_textbook_reference_at_paper_scale():
  from data_gen import reference  # pylint: disable=g-import-not-at-top
  hmm = HMM.random(HMMConfig(), seed=4)
  s = hmm.sample(np.random.default_rng(0), 10)
  fast = hmm.conditionals(s.tokens, s.lengths)
  for r in range(len(s)):
    np.testing.assert_allclose(
        fast[r], reference.hmm_conditionals(hmm.initial, hmm.transition, hmm.emission,
                                            s.tokens[r]), atol=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_float32_conditionals_agree_with_float64_to_1e_6(seed):
  """The paper-shaped HMM, 1,000 sentences: float32 within 1e-6 of float64 (it was 1.3e-5
  while the forward pass differentiated through its per-step normaliser)."""
  lang = HMM.random(HMMConfig(), seed=seed)
  s = lang.sample(np.random.default_rng(seed), 1000)
  c32 = np.asarray(lang.conditionals(s.tokens, s.lengths), np.float64)
  with jax.enable_x64(True):
    c64 = HMM.random(HMMConfig(), seed=seed, dtype=jnp.float64).conditionals(s.tokens,
                                                                              s.lengths)
  assert np.abs(c32 - c64).max() < 1e-6
