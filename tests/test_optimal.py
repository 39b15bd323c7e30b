"""Optimal losses: estimators against exact expectations over enumerated languages."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import brute_force
from data_gen import optimal
from data_gen.hmm import HMM, HMMConfig
from data_gen.language import Sentences
from data_gen.markov import MarkovChain
from data_gen.pcfg.language import PCFG
from data_gen.pcfg.random_grammar import RandomGrammarConfig, random_grammar
from flatness.model import masking

TINY_PCFG = RandomGrammarConfig(num_start=2, levels=2, symbols_per_level=3, rules_per_symbol=3,
                                words_per_last_symbol=3, vocab_size=4, emit_low=0.2,
                                emit_high=0.5)
TINY_HMM = HMMConfig(num_states=3, vocab_size=3, length=4, transitions_per_state=2,
                     words_per_state=2, task_positions=(1,))


@pytest.fixture(scope="module", params=["pcfg", "hmm"])
def lang(request):
  with jax.enable_x64(True):
    if request.param == "pcfg":
      g = random_grammar(TINY_PCFG, 4)
      language = PCFG(g, max_length=4, dtype=jnp.float64, batch_size=32)
      probs = brute_force.pcfg_language(g, 4)
    else:
      language = HMM.random(TINY_HMM, seed=1, dtype=jnp.float64, batch_size=32)
      probs = {}
      for (_, x), p in brute_force.hmm_joint(language.initial, language.transition,
                                             language.emission, 4).items():
        probs[x] = probs.get(x, 0.0) + p
    yield language, probs


def test_ratio_estimate():
  est = optimal.ratio_estimate([2.0, 4.0, 6.0], [1.0, 2.0, 3.0])
  assert est.value == 2.0 and est.stderr == 0.0
  rng = np.random.default_rng(0)
  x, y = rng.random(4000), 1 + rng.random(4000)
  ests = [optimal.ratio_estimate(x[i::20], y[i::20]) for i in range(20)]
  spread = np.std([e.value for e in ests])
  assert np.mean([e.stderr for e in ests]) == pytest.approx(spread, rel=0.5)


def _sample(language, n, seed=0):
  return language.sample(np.random.default_rng(seed), n)


def test_single_masked_and_causal_losses_match_exact_expectations(lang):
  language, probs = lang
  v = language.vocab_size
  with jax.enable_x64(True):
    num = den = causal = 0.0
    total = sum(probs.values())
    for s, p in probs.items():
      p = p / total
      num += p * sum(brute_force.entropy(brute_force.conditional(probs, s, i, v))
                     for i in range(len(s)))
      den += p * len(s)
      causal += p * -np.log(p)
    exact_mlm = num / den
    exact_causal = causal / sum(p / total * (len(s) + 1) for s, p in probs.items())
    sents = _sample(language, 3000)
    mlm = optimal.single_masked_loss(language, sents)
    cz = optimal.causal_loss(language, sents)
  assert abs(mlm.value - exact_mlm) < 4 * mlm.stderr
  assert abs(cz.value - exact_causal) < 4 * cz.stderr
  assert 0 < mlm.stderr < 0.02 and 0 < cz.stderr < 0.05


def test_bert_masking_predictions_match_enumeration(lang):
  """P(x_i | y, i selected) against a sum over every (sentence, selection) consistent with y."""
  language, probs = lang
  v = language.vocab_size
  spec = masking.MaskingSpec(rate=0.5, max_predictions=3)    # several selections per sentence
  rng = np.random.default_rng(3)
  sents = _sample(language, 12, seed=5)
  draws = [optimal.corrupt(rng, row, int(n), spec, v) for row, n in zip(sents.tokens,
                                                                          sents.lengths)]
  with jax.enable_x64(True):
    preds = optimal.bayes_predictions(language, [y for _, y in draws], spec)
  for (selected, y), q in zip(draws, preds):
    truth = brute_force.bert_targets(probs, y, spec, v)
    for i in selected:
      np.testing.assert_allclose(q[i], truth[i], atol=1e-10)


def test_markov_closed_forms():
  chain = MarkovChain(num_words=5, length=6, concentration=0.5, seed=2)
  hmm = HMM(chain.initial, chain.transition, np.eye(5), length=6, task_positions=())
  sents = _sample(chain, 2000)
  single = optimal.single_masked_loss(hmm, sents)
  causal = optimal.causal_loss(hmm, sents)
  assert abs(single.value - chain.optimal_mlm_loss()) < 4 * single.stderr
  assert abs(causal.value - chain.optimal_causal_loss()) < 4 * causal.stderr


def test_bert_masking_loss_estimates_its_exact_expectation(lang):
  """The Monte Carlo estimate against the expectation over every sentence and masking draw."""
  language, probs = lang
  spec, v = masking.MaskingSpec(), language.vocab_size
  total = sum(probs.values())
  outcomes, weights, truths = [], [], []
  for x, p in probs.items():
    n = len(x)
    k = masking.num_predictions(n, spec)
    for sel in itertools.combinations(range(n), k):
      # Each selected position: [MASK], a random word (any of V), or kept.
      choices = [[(-1, spec.mask_prob)] + [(w, spec.random_prob / v + spec.keep_prob * (w == x[i]))
                                           for w in range(v)] for i in sel]
      for combo in itertools.product(*choices):
        y = np.array(x)
        w = p / total / len(list(itertools.combinations(range(n), k)))
        for i, (val, pr) in zip(sel, combo):
          y[i] = val
          w *= pr
        outcomes.append(y), weights.append(w), truths.append((x, sel))
  with jax.enable_x64(True):
    preds = optimal.bayes_predictions(language, outcomes, spec)
    num = sum(w * -np.sum(np.log([q[i, x[i]] for i in sel]))
              for w, q, (x, sel) in zip(weights, preds, truths))
    den = sum(w * len(sel) for w, (_, sel) in zip(weights, truths))
    est = optimal.bert_masking_loss(language, _sample(language, 1500, seed=9), spec, seed=1)
  assert abs(est.value - num / den) < 4 * est.stderr


def test_emitter_entropy_matches_expected_counts():
  g = random_grammar(RandomGrammarConfig(num_start=3, levels=3, symbols_per_level=4,
                                         rules_per_symbol=4, words_per_last_symbol=10,
                                         vocab_size=20), 0)
  language = PCFG(g)        # max_length 31 never binds for 3 levels (at most 8 words)
  counts = g.expected_counts()
  emits = counts * g.emit_probability()
  exact = emits @ language.emitter_entropy() / emits.sum()
  est = optimal.emitter_entropy(language, _sample(language, 4000))
  assert abs(est.value - exact) < 4 * est.stderr


def test_teacher_refuses_bert_masking_loss():
  from data_gen.teacher import Teacher, TeacherConfig  # pylint: disable=g-import-not-at-top
  teacher = Teacher(TeacherConfig(vocab_size=5, num_classes=2, max_length=4, hidden_size=8,
                                  num_heads=1, num_layers=1, mlp_dim=16))
  with pytest.raises(ValueError, match="PCFG or an HMM"):
    optimal.bert_masking_loss(teacher, Sentences(np.zeros((1, 4), np.int32), np.array([4])))
