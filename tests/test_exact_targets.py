"""Exact-target pre-training (``targets='exact'``) against enumeration and the sampled loss.

The truths: brute-force enumeration of sentences and selections (`brute_force`,
no code shared with `data_gen.bert_targets`), `data_gen.optimal`'s candidate
enumeration, the Monte Carlo mean of sampled-label gradients, and the step of
``targets='sampled'`` as it was before the option existed.
"""
import itertools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import brute_force
import resume_check
from data_gen import bert_targets
from data_gen import optimal
from data_gen.hmm import HMM, HMMConfig
from data_gen.markov import MarkovChain
from data_gen.pcfg import layered
from data_gen.pcfg.grammar import Grammar
from data_gen.pcfg.language import PCFG
from data_gen.pcfg.random_grammar import SMALL, RandomGrammarConfig, random_grammar
from experiments import wiring
from experiments.configs import pretrain
from flatness.model import masking
from flatness.model import objectives
from flatness.model import tokens as tok
from flatness.model.objectives import Objective
from flatness.model.transformer import Transformer, TransformerConfig, init_params
from flatness.runtime import sharding
from flatness.training import train_step as train_step_lib

TINY_PCFG = RandomGrammarConfig(num_start=2, levels=2, symbols_per_level=3, rules_per_symbol=3,
                                words_per_last_symbol=3, vocab_size=4, emit_low=0.2,
                                emit_high=0.5)
TINY_HMM = HMMConfig(num_states=3, vocab_size=3, length=4, transitions_per_state=2,
                     words_per_state=2, task_positions=(1,))
# Several selections per sentence, and every kind of corruption often.
WIDE = masking.MaskingSpec(rate=0.5, max_predictions=3, mask_prob=0.4, random_prob=0.3)


def _markov_probs(chain):
  probs = {}
  for x in itertools.product(range(chain.vocab_size), repeat=chain.length):
    probs[x] = chain.initial[x[0]] * np.prod([chain.transition[a, b] for a, b in zip(x, x[1:])])
  return probs


def _recursive_grammar():
  """S -> S A (0.3) | A A (0.5) | a (0.2); A -> a (0.6) | b (0.4): a cycle S -> S."""
  binary = np.zeros((2, 2, 2))
  binary[0, 0, 1], binary[0, 1, 1] = 0.3, 0.5
  emission = np.array([[0.2, 0.0], [0.6, 0.4]])
  return Grammar(nonterminals=("S", "A"), words=("a", "b"), start=np.array([1.0, 0.0]),
                 binary=binary, emission=emission, root="S", root_is_unary=False)


@pytest.fixture(scope="module", params=["pcfg", "hmm", "markov"])
def lang(request):
  """(language in float64, {sentence: probability}, vocabulary, longest sentence)."""
  with jax.enable_x64(True):
    if request.param == "pcfg":
      g = random_grammar(TINY_PCFG, 4)
      language = PCFG(g, max_length=4, dtype=jnp.float64, batch_size=32)
      probs = brute_force.pcfg_language(g, 4)
    elif request.param == "hmm":
      language = HMM.random(TINY_HMM, seed=1, dtype=jnp.float64, batch_size=32)
      probs = {}
      for (_, x), p in brute_force.hmm_joint(language.initial, language.transition,
                                             language.emission, 4).items():
        probs[x] = probs.get(x, 0.0) + p
    else:
      language = MarkovChain(num_words=3, length=4, concentration=0.5, seed=1)
      probs = _markov_probs(language)
  return language, probs   # not inside the x64 context: it would outlive this fixture


def _objective(language, spec, dtype="float64", hidden=8):
  cfg = TransformerConfig(vocab_size=tok.model_vocab_size(language.vocab_size),
                          seq_len=language.max_length + 2, hidden_size=hidden, num_layers=1,
                          num_heads=1, mlp_dim=hidden, dropout_rate=0.0,
                          attention_dropout_rate=0.0, dtype=dtype, param_dtype=dtype)
  return Objective(Transformer(cfg), spec)


def _views(prepared, raw):
  """Per sentence: the corrupted words y the model sees (-1 = [MASK])."""
  out = []
  for ids, n in zip(np.asarray(prepared["ids"]), np.asarray(raw["lengths"])):
    words = ids[1:n + 1].astype(np.int64)
    out.append(np.where(words == tok.MASK, -1, words - tok.NUM_SPECIAL))
  return out


def _prepared(language, objective, n, seed, **sample):
  sents = language.sample(np.random.default_rng(seed), n, **sample)
  raw = dict(tokens=jnp.asarray(sents.tokens[:, :language.max_length], jnp.int32),
             lengths=jnp.asarray(sents.lengths, jnp.int32))
  return objective.prepare(jax.random.key(seed), raw), raw


def test_targets_match_enumeration(lang):
  """The batch's own corruption ([MASK], random word, kept word) through the objective's
  masking and `exact_targets`, against brute force over sentences and selections."""
  language, probs = lang
  v = language.vocab_size
  with jax.enable_x64(True):
    obj = _objective(language, WIDE)
    prepared, raw = _prepared(language, obj, 24, seed=3)
    q = np.asarray(jax.jit(bert_targets.exact_targets(language, obj, jnp.float64))(prepared, raw))
  kinds = set()
  weights, positions = np.asarray(prepared["weights"]), np.asarray(prepared["positions"])
  labels = np.asarray(prepared["labels"])
  for b, y in enumerate(_views(prepared, raw)):
    truth = brute_force.bert_targets(probs, y, WIDE, v)
    for p in range(positions.shape[1]):
      if weights[b, p] == 0:
        np.testing.assert_array_equal(q[b, p], 0.0)
        continue
      i = positions[b, p] - 1
      kinds.add("mask" if y[i] < 0 else "kept" if y[i] == labels[b, p] - tok.NUM_SPECIAL
                else "random")
      np.testing.assert_array_equal(q[b, p, :tok.NUM_SPECIAL], 0.0)
      np.testing.assert_allclose(q[b, p, tok.NUM_SPECIAL:], truth[i], atol=1e-12)
  assert kinds == {"mask", "kept", "random"}


@pytest.mark.parametrize("by", ["height", "length"])
def test_polynomial_marginals_match_enumeration(by):
  """Z(t) = sum_x p(x) prod_i sum_d t^d e[i, d, x_i] for random evidence, coefficient by
  coefficient, for both inside algorithms, a recursive grammar, an HMM and a chain."""
  rng = np.random.default_rng(0)
  cases = [(PCFG(random_grammar(TINY_PCFG, 4), max_length=4),
            brute_force.pcfg_language(random_grammar(TINY_PCFG, 4), 4))]
  recursive = _recursive_grammar()
  assert layered.heights(recursive.binary) is None
  with pytest.raises(ValueError, match="cycle"):
    bert_targets.poly_inside(recursive, by="height")
  assert list(layered.heights(random_grammar(SMALL, 0).binary)[:3]) == [3, 3, 3]
  if by == "length":
    cases.append((PCFG(recursive, max_length=4), brute_force.pcfg_language(recursive, 4)))
    hmm = HMM.random(TINY_HMM, seed=1)
    joint = brute_force.hmm_joint(hmm.initial, hmm.transition, hmm.emission, 4)
    hmm_probs = {}
    for (_, x), p in joint.items():
      hmm_probs[x] = hmm_probs.get(x, 0.0) + p
    chain = MarkovChain(num_words=3, length=4, concentration=0.5, seed=1)
    cases += [(hmm, hmm_probs), (chain, _markov_probs(chain))]
  with jax.enable_x64(True):
    for language, probs in cases:
      length, v, d1 = language.max_length, language.vocab_size, 3
      lengths = np.array([1, 2, 3, 4, 4, 3]) if not isinstance(language, (HMM, MarkovChain)) \
          else np.full(6, length)
      ev = rng.random((len(lengths), length, d1, v))
      coef, scale = bert_targets.poly_marginal(language, jnp.float64, by)(
          jnp.asarray(ev), jnp.asarray(lengths))
      got = np.asarray(coef) * np.exp(np.asarray(scale))[:, None]
      for r, n in enumerate(lengths):
        want = np.zeros(d1)
        for x, p in probs.items():
          if len(x) == n:
            poly = np.array([1.0])
            for i, w in enumerate(x):
              poly = np.convolve(poly, ev[r, i, :, w])[:d1]
            want += p * poly
        np.testing.assert_allclose(got[r], want, rtol=1e-10)


def test_targets_match_bayes_predictions_on_pcfg_small():
  """The `pcfg_small` grammar under the default masking rule, against
  `data_gen.optimal.bayes_predictions`, which enumerates the candidate selections."""
  spec = masking.MaskingSpec(rate=0.3, max_predictions=3)    # up to 3 selected words
  with jax.enable_x64(True):
    language = PCFG(random_grammar(SMALL, 0), dtype=jnp.float64)
    obj = _objective(language, spec)
    prepared, raw = _prepared(language, obj, 24, seed=1, min_length=5)   # one bucket
    q = np.asarray(jax.jit(bert_targets.exact_targets(language, obj, jnp.float64))(prepared, raw))
    views = _views(prepared, raw)
    truth = optimal.bayes_predictions(language, views, spec)
  positions, weights = np.asarray(prepared["positions"]), np.asarray(prepared["weights"])
  for b in range(len(views)):
    for p in np.flatnonzero(weights[b]):
      np.testing.assert_allclose(q[b, p, tok.NUM_SPECIAL:], truth[b][positions[b, p] - 1],
                                 atol=1e-10)


def test_float32_targets_on_the_paper_shape():
  """The training dtype, whose range the inside algorithm's scaling must cover, on a
  random grammar of the paper's shape (49 nonterminals, 200 words, up to 16 words):
  float32 against float64."""
  language = PCFG(random_grammar(RandomGrammarConfig(), 0))
  sents = language.sample(np.random.default_rng(0), 16)
  rng = np.random.default_rng(1)
  draws = [optimal.corrupt(rng, row, int(n), masking.MaskingSpec(), language.vocab_size)
           for row, n in zip(sents.tokens, sents.lengths)]
  words = np.zeros((16, language.max_length), np.int32)
  masked = np.zeros((16, language.max_length), bool)
  for j, (_, y) in enumerate(draws):
    words[j, :len(y)], masked[j, :len(y)] = np.maximum(y, 0), y < 0
  q32 = np.asarray(jax.jit(bert_targets.BertTargets(language, masking.MaskingSpec()))(
      words, masked, sents.lengths))
  with jax.enable_x64(True):
    q64 = np.asarray(jax.jit(bert_targets.BertTargets(language, masking.MaskingSpec(),
                                                      jnp.float64))(
        words, masked, sents.lengths))
  assert sents.lengths.max() >= 12 and np.all(np.isfinite(q32))
  np.testing.assert_allclose(q32, q64, atol=1e-5)
  selected = np.concatenate([sel + language.max_length * j for j, (sel, _) in enumerate(draws)])
  np.testing.assert_allclose(q64.reshape(-1, language.vocab_size)[selected].sum(1), 1.0,
                             atol=1e-12)


def _enumerated_batch(language, probs, spec, seq_len):
  """Every (sentence, selection, corruption) outcome as one prediction weighted by its
  probability: (prepared batch, raw batch)."""
  v = language.vocab_size
  rows = []
  for x, p in probs.items():
    n = len(x)
    sels = list(itertools.combinations(range(n), masking.num_predictions(n, spec)))
    assert len(sels[0]) == 1      # one prediction per outcome keeps the batch simple
    for (i,) in sels:
      for y_i, c in [(-1, spec.mask_prob)] + [
          (w, spec.random_prob / v + spec.keep_prob * (w == x[i])) for w in range(v)]:
        rows.append((x, i, y_i, p * c / len(sels)))
  width = language.max_length
  tokens = np.array([list(x) + [0] * (width - len(x)) for x, _, _, _ in rows], np.int32)
  lengths = np.array([len(x) for x, _, _, _ in rows], np.int32)
  ids = np.array(tok.encode(tokens, lengths, seq_len))
  pos = np.array([[i + 1] for _, i, _, _ in rows], np.int32)
  ids[np.arange(len(rows)), pos[:, 0]] = [tok.MASK if y < 0 else y + tok.NUM_SPECIAL
                                         for _, _, y, _ in rows]
  labels = np.array([[x[i] + tok.NUM_SPECIAL] for x, i, _, _ in rows], np.int32)
  weights = np.array([[w] for _, _, _, w in rows])
  prepared = dict(ids=jnp.asarray(ids), positions=jnp.asarray(pos), labels=jnp.asarray(labels),
                  weights=jnp.asarray(weights))
  return prepared, dict(tokens=jnp.asarray(tokens), lengths=jnp.asarray(lengths))


def test_loss_at_the_generator_is_the_bert_masking_optimum():
  """Logits = log q: the exact-target loss, in expectation over every sentence, selection
  and corruption, equals the Bayes loss of BERT masking, E[-log P(x_i | y, i in S)] with
  `data_gen.optimal`'s predictions; every example's gradient is zero there, while a
  sampled label's is not."""
  spec = masking.MaskingSpec()
  with jax.enable_x64(True):
    g = random_grammar(TINY_PCFG, 4)
    language = PCFG(g, max_length=4, dtype=jnp.float64, batch_size=32)
    probs = brute_force.pcfg_language(g, 4)
    total = sum(probs.values())
    probs = {x: p / total for x, p in probs.items()}
    obj = _objective(language, spec)
    prepared, raw = _enumerated_batch(language, probs, spec, obj.model.cfg.seq_len)
    q = jax.jit(bert_targets.exact_targets(language, obj, jnp.float64))(prepared, raw)
    logits = jnp.log(q)
    terms = objectives.nll_terms(logits, prepared["labels"], prepared["weights"], q)
    exact_loss = float(terms["nll_sum"] / terms["weight_sum"])
    views = _views(prepared, raw)
    bayes = optimal.bayes_predictions(language, views, spec)
    w = np.asarray(prepared["weights"])[:, 0]
    pos, lab = np.asarray(prepared["positions"])[:, 0] - 1, np.asarray(prepared["labels"])[:, 0]
    bayes_loss = -np.sum(w * np.log([bq[i, x - tok.NUM_SPECIAL]
                                     for bq, i, x in zip(bayes, pos, lab)])) / w.sum()
    ones = jnp.ones_like(prepared["weights"])
    grad_exact = jax.grad(lambda z: objectives.nll_terms(
        z, prepared["labels"], ones, q)["nll_sum"])(logits)
    onehot = jax.nn.one_hot(prepared["labels"], q.shape[-1], dtype=q.dtype)
    grad_sampled = jax.grad(lambda z: objectives.nll_terms(
        z, prepared["labels"], ones, onehot)["nll_sum"])(logits)
  assert exact_loss == pytest.approx(bayes_loss, rel=1e-10)
  assert 0 < exact_loss < np.log(language.vocab_size)
  assert np.max(np.abs(np.asarray(grad_exact))) < 1e-12
  assert np.max(np.abs(np.asarray(grad_sampled))) > 0.1


def test_population_gradient_is_unchanged_and_less_noisy():
  """Summed over every outcome of a chain (sentence, selection, corruption) with its
  probability, the exact-target gradient equals the sampled-label gradient (same
  population loss); per outcome, its spread around that mean is smaller."""
  spec = masking.MaskingSpec()
  chain = MarkovChain(num_words=3, length=3, concentration=0.5, seed=2)
  with jax.enable_x64(True):
    obj = _objective(chain, spec)
    prepared, raw = _enumerated_batch(chain, _markov_probs(chain), spec,
                                      obj.model.cfg.seq_len)
    q = jax.jit(bert_targets.exact_targets(chain, obj, jnp.float64))(prepared, raw)
    params = init_params(obj.model.cfg, jax.random.key(0))

    def loss(p, batch):
      return obj.loss_terms(p, batch)["nll_sum"]

    exact_batch = dict(prepared, targets=q)
    flat = lambda t: jnp.concatenate([x.ravel() for x in jax.tree.leaves(t)])
    total_grad = jax.jit(lambda batch: flat(jax.grad(loss)(params, batch)))
    g_sampled = np.asarray(total_grad(prepared))
    g_exact = np.asarray(total_grad(exact_batch))

    @jax.jit
    def per_outcome(batch):
      one = lambda row: flat(jax.grad(loss)(params, jax.tree.map(
          lambda x: x[None], dict(row, weights=jnp.ones_like(row["weights"])))))
      return jax.vmap(one)(batch)

    w = np.asarray(prepared["weights"])[:, 0]
    spreads = []
    for batch in (prepared, exact_batch):
      g = np.asarray(per_outcome(batch))
      spreads.append(np.sum(w[:, None] * (g - g_sampled[None]) ** 2))
  np.testing.assert_allclose(g_exact, g_sampled, rtol=1e-9,
                             atol=1e-12 * np.linalg.norm(g_sampled))
  assert np.isclose(w.sum(), 1.0)
  assert spreads[1] < 0.8 * spreads[0]


def test_monte_carlo_mean_of_sampled_gradients_is_the_exact_gradient():
  """Fixed corrupted inputs; labels drawn from the brute-force conditional given each
  input: the mean of 2000 sampled-label gradients is the exact-target gradient within
  its standard error, coordinate by coordinate."""
  g = random_grammar(TINY_PCFG, 4)
  probs = brute_force.pcfg_language(g, 4)
  with jax.enable_x64(True):
    language = PCFG(g, max_length=4, dtype=jnp.float64, batch_size=32)
    obj = _objective(language, WIDE)
    prepared, raw = _prepared(language, obj, 6, seed=5)
    q = jax.jit(bert_targets.exact_targets(language, obj, jnp.float64))(prepared, raw)
    params = init_params(obj.model.cfg, jax.random.key(1))
    flat = lambda t: jnp.concatenate([x.ravel() for x in jax.tree.leaves(t)])
    loss = lambda p, batch: obj.loss_terms(p, batch)["nll_sum"]
    exact = np.asarray(jax.jit(lambda b: flat(jax.grad(loss)(params, b)))(
        dict(prepared, targets=q)))

    positions, weights = np.asarray(prepared["positions"]), np.asarray(prepared["weights"])
    truth = np.zeros(positions.shape + (language.vocab_size,))
    for b, y in enumerate(_views(prepared, raw)):
      bt = brute_force.bert_targets(probs, y, WIDE, language.vocab_size)
      for p in np.flatnonzero(weights[b]):
        truth[b, p] = bt[positions[b, p] - 1]
    rng = np.random.default_rng(0)
    draws = 2000
    cum = np.cumsum(np.where(weights[..., None] > 0, truth, 1.0 / language.vocab_size), -1)
    u = rng.random((draws,) + positions.shape + (1,))
    labels = np.minimum((cum[None] <= u).sum(-1), language.vocab_size - 1) + tok.NUM_SPECIAL
    grads = jax.jit(jax.vmap(lambda lab: flat(jax.grad(loss)(params, dict(prepared,
                                                                          labels=lab)))))
    per_draw = np.asarray(grads(jnp.asarray(labels, jnp.int32)))
  mean, se = per_draw.mean(0), per_draw.std(0, ddof=1) / np.sqrt(draws)
  noisy = se > 1e-12 * np.abs(exact).max()
  assert noisy.sum() > 100
  assert np.max(np.abs(mean - exact)[noisy] / se[noisy]) < 5
  np.testing.assert_allclose(mean[~noisy], exact[~noisy], atol=1e-10 * np.abs(exact).max())


def _small_config(targets="sampled"):
  c = pretrain.get_config("tiny")
  c.model.update(hidden_size=16, mlp_dim=32)
  c.targets = targets
  return c


def test_sampled_is_unchanged_and_exact_uses_the_same_masks():
  """``targets='sampled'`` (the default) reproduces the step as it was before the option
  existed (losses recorded then); on the same batch and rng ``'exact'`` scores the same
  predictions (same count, same accuracy) with a different loss; one-hot targets through
  the soft cross-entropy give the sampled loss and gradient."""
  c = _small_config()
  assert pretrain.get_config("tiny").targets == "sampled"
  c.train.batch_size = 16
  b = wiring.build(c, mesh=sharding.make_mesh(1))
  s, source = b.setup, b.source()
  state = s.create_state(jax.random.key(0))
  assert wiring.training_targets(c.targets, b.language, s.objective) is None
  step = jax.jit(train_step_lib.make_train_step(s.objective, s.tx, schedule=s.schedule))
  exact_step = jax.jit(train_step_lib.make_train_step(
      s.objective, s.tx, targets=wiring.training_targets("exact", b.language, s.objective)))
  recorded = [(2.4911539554595947, 1.6064306497573853), (2.5223548412323, 1.7145968675613403),
              (2.5408804416656494, 1.8640512228012085), (2.50339412689209, 1.6148122549057007)]
  for i, (loss, grad_norm) in enumerate(recorded):
    batch, rng = sharding.global_batch(source.batch(i), s.mesh), jax.random.fold_in(
        jax.random.key(0), i)
    _, m_exact = exact_step(state, batch, rng)
    state, m = step(state, batch, rng)
    assert float(m["loss"]) == pytest.approx(loss, rel=1e-5)
    assert float(m["grad_norm"]) == pytest.approx(grad_norm, rel=1e-5)
    assert float(m_exact["predictions"]) == float(m["predictions"])
    assert float(m_exact["accuracy"]) == float(m["accuracy"])
    assert abs(float(m_exact["loss"]) - float(m["loss"])) > 1e-4

  logits = jax.random.normal(jax.random.key(7), (16, 5, s.model_cfg.vocab_size))
  labels = jax.random.randint(jax.random.key(8), (16, 5), 0, s.model_cfg.vocab_size)
  weights = (jax.random.uniform(jax.random.key(9), (16, 5)) < 0.7).astype(jnp.float32)
  hard = jax.value_and_grad(lambda z: objectives.nll_terms(z, labels, weights)["nll_sum"])
  soft = jax.value_and_grad(lambda z: objectives.nll_terms(
      z, labels, weights, jax.nn.one_hot(labels, s.model_cfg.vocab_size))["nll_sum"])
  (v_hard, g_hard), (v_soft, g_soft) = hard(logits), soft(logits)
  assert float(v_soft) == pytest.approx(float(v_hard), rel=1e-6)
  np.testing.assert_allclose(g_soft, g_hard, atol=1e-6)


def test_exact_run_resumes_exactly(tmp_path):
  """K steps, stop, resume, K more == 2K steps straight, with exact targets on 8 devices."""
  c = _small_config("exact")
  c.data.num_validation = 16
  c.train.update(batch_size=16, num_steps=6, log_every=2, eval_every=3, checkpoint_every=3)
  result = resume_check.assert_resume_is_exact(c, str(tmp_path), stop_after=3)
  assert np.isfinite(result.eval_metrics["loss_gap"])


@pytest.mark.parametrize("field,value", [
    ("targets", "soft"),
    ("model.causal", True),
    ("data.language", "teacher"),
])
def test_unsupported_exact_targets_fail_at_start(workdir, field, value):
  c = _small_config("sampled" if field == "targets" else "exact")
  c.data.teacher.update(vocab_size=8, max_length=6, hidden_size=8, num_layers=1, num_heads=1,
                        mlp_dim=8)
  node, name = (c, field) if "." not in field else (c[field.split(".")[0]],
                                                    field.split(".")[1])
  node[name] = value
  with pytest.raises(ValueError, match="targets"):
    wiring.train(c, workdir)
  assert not os.path.exists(os.path.join(workdir, "checkpoints"))
