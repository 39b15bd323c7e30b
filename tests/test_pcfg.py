"""PCFG: loader checks, and every probability against brute-force enumeration (float64) and nltk.

Both inside algorithms are checked: the general (dense) one on the recursive
grammar, the layered one (`data_gen.pcfg.layered`, picked automatically) on
layered grammars, and the two against each other on layered grammars of
several shapes.
"""
import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from nltk.grammar import Nonterminal, PCFG as NltkPCFG, ProbabilisticProduction
from nltk.parse.pchart import InsideChartParser

import brute_force
from data_gen import evidence as evidence_lib
from data_gen import reference
from data_gen.language import Sentences
from data_gen.pcfg import batched_reference
from data_gen.pcfg import layered
from data_gen.pcfg import rule_file
from data_gen.pcfg import tasks as tasks_lib
from data_gen.pcfg.inside import Inside
from data_gen.pcfg.language import PCFG
from data_gen.pcfg.random_grammar import RandomGrammarConfig, SMALL, random_grammar

RECURSIVE = """\
S S1 0.6
S S2 0.4
S1 A B 0.7
S1 B B 0.3
S2 B A 1.0
A A A 0.25
A a 0.25
A a 0.20
A b 0.3
B b 0.5
B c 0.3
B A B 0.2
"""
TINY = RandomGrammarConfig(num_start=2, levels=2, symbols_per_level=3, rules_per_symbol=3,
                           words_per_last_symbol=3, vocab_size=5, emit_low=0.2, emit_high=0.5)
PAPER = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "paper", "rule_deep_mlm.txt")


def _write(tmp_path, text, name="g.txt"):
  path = tmp_path / name
  path.write_text(text)
  return str(path)


@pytest.fixture(scope="module")
def x64():
  with jax.enable_x64(True):
    yield


def _mixed_layers(grammar, seed, emit=0.3):
  """A layered grammar whose sentences may also start one layer down and whose top layer emits.

  A third of the start mass moves to the first level's symbols, and each start
  symbol emits a word with probability ``emit`` (its binary rules scaled down).
  """
  rng = np.random.default_rng(seed)
  top = np.flatnonzero(grammar.start)
  level1 = np.array([grammar.index(n) for n in grammar.nonterminals if n.startswith("A1_")])
  start = grammar.start * 2 / 3
  start[level1] += rng.dirichlet(np.ones(len(level1))) / 3
  binary, emission = grammar.binary.copy(), grammar.emission.copy()
  binary[top] *= 1 - emit
  emission[top, rng.integers(grammar.vocab_size, size=len(top))] += emit
  return dataclasses.replace(grammar, start=start, binary=binary, emission=emission)


def _grammars(tmp_path_factory):
  path = tmp_path_factory.mktemp("g") / "recursive.txt"
  path.write_text(RECURSIVE)
  return {"recursive": rule_file.load_rule_file(str(path)), "layered": random_grammar(TINY, 3),
          "layered_mixed": _mixed_layers(random_grammar(TINY, 5), 0)}


@pytest.fixture(scope="module", params=["recursive", "layered", "layered_mixed"])
def case(request, tmp_path_factory, x64):
  grammar = _grammars(tmp_path_factory)[request.param]
  max_len = 5 if request.param == "recursive" else TINY.max_length
  lang = PCFG(grammar, max_length=max_len, dtype=jnp.float64, batch_size=16)
  assert lang._inside.method == ("dense" if request.param == "recursive" else "layered")
  probs = brute_force.pcfg_language(grammar, max_len)
  sents = sorted(probs, key=lambda s: -probs[s])[:40]
  tokens = np.zeros((len(sents), max_len), np.int32)
  for r, s in enumerate(sents):
    tokens[r, :len(s)] = s
  lengths = np.array([len(s) for s in sents], np.int32)
  return dict(grammar=grammar, lang=lang, probs=probs, sents=sents, tokens=tokens,
              lengths=lengths, max_len=max_len)


def test_loader_sums_duplicates_and_folds_the_root(tmp_path):
  g = rule_file.load_rule_file(_write(tmp_path, RECURSIVE))
  assert g.nonterminals == ("S1", "S2", "A", "B") and g.words == ("a", "b", "c")
  assert g.root == "S" and g.root_is_unary
  np.testing.assert_allclose(g.start, [0.6, 0.4, 0, 0])
  assert g.emission[g.index("A"), g.words.index("a")] == pytest.approx(0.45)
  assert g.binary[g.index("A"), g.index("A"), g.index("A")] == pytest.approx(0.25)


@pytest.mark.parametrize("text,message", [
    ("S A 1.0\nA a b c d\n", ":2: expected 'LHS RHS prob'"),
    ("S A 1.0\nA a x\n", ":2: probability 'x' is not a number"),
    ("S A 1.0\nA a -0.5\nA b 1.5\n", ":2: probability -0.5"),
    ("S A 1.0\nA a 0.5\nA b 0.3\n", ":2: the rules of A sum to 0.8"),
    ("S A 1.0\nA B C 1.0\nB b 1.0\n", r":2: symbol C \(on the right of A\) has no rules"),
    ("S A 1.0\nA A A 1.0\n", ":1: symbols that derive no finite sentence .*A \\(line 2\\)"),
    ("S S1 1.0\nS1 S2 0.5\nS1 A A 0.5\nS2 S1 0.5\nS2 A A 0.5\nA a 1.0\n",
     ":4: unary cycle S1 -> S2 -> S1"),
    ("", "no rules"),
])
def test_loader_rejects_malformed_files(tmp_path, text, message):
  with pytest.raises(rule_file.GrammarFileError, match=message):
    rule_file.load_rule_file(_write(tmp_path, text))


def test_loader_unreachable_symbol_is_a_warning_or_strict_error(tmp_path):
  path = _write(tmp_path, "S A 1.0\nA a 1.0\nZ z 1.0\n")
  with pytest.raises(rule_file.GrammarFileError, match=":3: symbol Z is unreachable"):
    rule_file.load_rule_file(path, strict=True)
  assert "Z" in rule_file.load_rule_file(path).nonterminals
  with pytest.raises(rule_file.GrammarFileError, match="no such grammar file"):
    rule_file.load_rule_file(str(tmp_path / "missing.txt"))


@pytest.mark.skipif(not os.path.exists(PAPER), reason="the paper's grammar is not beside the repo")
def test_paper_grammar_shape():
  g = rule_file.load_rule_file(PAPER)
  assert g.num_nonterminals == 49 and g.vocab_size == 200 and g.root_is_unary
  assert g.nonterminals[:10] == tuple(f"S{i}" for i in range(1, 10)) + ("A1_0",)
  # Duplicate lines summed: every left-hand side sums to 1 within the file's 2.4e-4.
  assert np.all(np.abs(g.mass - 1) < 2.5e-4)
  names = tasks_lib.label_names(g)
  assert names[:2] == ["A1_0", "A1_1"] and names[40:42] == ["S", "S1"] and len(names) == 50
  # Layered: A4 (words only) .. A1, then S1 .. S9, so the fast inside path applies.
  assert [len(ids) for ids in layered.layers(g)] == [10, 10, 10, 10, 9]


def test_random_grammar_has_the_paper_shape_and_round_trips(tmp_path):
  g = random_grammar(RandomGrammarConfig(), seed=1)
  assert g.num_nonterminals == 49 and g.vocab_size == 200
  row_sums = g.binary.sum((1, 2)) + g.emission.sum(1)
  np.testing.assert_allclose(row_sums, 1.0)
  lang = PCFG(g)
  s = lang.sample(np.random.default_rng(0), 2000)
  assert s.lengths.min() >= 2 and s.lengths.max() == 16
  path = str(tmp_path / "rules.txt")
  rule_file.save_rule_file(g, path)
  back = rule_file.load_rule_file(path)
  assert back.nonterminals == g.nonterminals
  np.testing.assert_allclose(back.binary, g.binary, atol=1e-12)
  np.testing.assert_allclose(back.emission[:, [back.words.index(w) for w in g.words]],
                             g.emission, atol=1e-12)
  np.testing.assert_allclose(back.start, g.start, atol=1e-12)


def test_sentence_probabilities_match_enumeration(case):
  lp = case["lang"].log_prob(case["tokens"], case["lengths"])
  total = sum(case["probs"].values())   # P(length <= max_len): the length filter
  expected = [np.log(case["probs"][s] / total) for s in case["sents"]]
  np.testing.assert_allclose(lp, expected, rtol=1e-10)


def test_sentence_probabilities_match_nltk(case):
  """nltk's inside chart parser, summing the probabilities of every parse, as an
  independent implementation (ROOT -> start symbol carries the start distribution)."""
  g = case["grammar"]
  nts, root = [Nonterminal(n) for n in g.nonterminals], Nonterminal("ROOT<test>")
  rules = [ProbabilisticProduction(root, [nts[a]], prob=float(p))
           for a, p in enumerate(g.start) if p > 0]
  rules += [ProbabilisticProduction(nts[a], [nts[b], nts[c]], prob=float(g.binary[a, b, c]))
            for a, b, c in zip(*np.nonzero(g.binary))]
  rules += [ProbabilisticProduction(nts[a], [g.words[w]], prob=float(g.emission[a, w]))
            for a, w in zip(*np.nonzero(g.emission))]
  parser = InsideChartParser(NltkPCFG(root, rules))
  n = min(12, len(case["sents"]))
  nltk_lp = [np.log(sum(t.prob() for t in parser.parse([g.words[w] for w in sent])))
             for sent in case["sents"][:n]]
  lp = case["lang"].log_prob(case["tokens"][:n], case["lengths"][:n])
  # Ours is conditioned on the length filter: log p(s) - log P(length <= max_length).
  np.testing.assert_allclose(lp - np.array(nltk_lp), -np.log(sum(case["probs"].values())),
                             atol=1e-10)


def test_single_masked_conditionals_match_enumeration(case):
  cond = case["lang"].conditionals(case["tokens"], case["lengths"])
  v = case["grammar"].vocab_size
  for r, s in enumerate(case["sents"][:15]):
    for i in range(len(s)):
      np.testing.assert_allclose(cond[r, i], brute_force.conditional(case["probs"], s, i, v),
                                 atol=1e-12)
    assert np.all(cond[r, len(s):] == 0)


def test_masked_conditionals_match_enumeration(case):
  rng = np.random.default_rng(0)
  v = case["grammar"].vocab_size
  mask = rng.random(case["tokens"].shape) < 0.4
  cond = case["lang"].conditionals(case["tokens"], case["lengths"], mask)
  for r, s in enumerate(case["sents"][:15]):
    hidden = [j for j in range(len(s)) if mask[r, j]]
    for i in range(len(s)):
      expected = brute_force.conditional(case["probs"], s, i, v, mask=hidden)
      np.testing.assert_allclose(cond[r, i], expected, atol=1e-12)
  np.testing.assert_allclose(cond.sum(-1)[np.arange(cond.shape[1]) < case["lengths"][:, None]],
                             1.0, atol=1e-12)


def test_task_labels_match_enumeration(case):
  g = case["grammar"]
  raw = brute_force.pcfg_strings(g.with_raw_probabilities(), case["max_len"])
  names = tasks_lib.label_names(g)
  starts = tasks_lib.start_symbols(g)
  cands = tasks_lib.candidates(g)
  sents = Sentences(case["tokens"], case["lengths"])
  for task, span in (("A", None), ("B", 4), ("C", 2)):
    labels = case["lang"].task_labels(task, sents)
    for r, s in enumerate(case["sents"]):
      if span is not None and len(s) < span:
        assert labels[r] == -1
        continue
      key = s if span is None else s[:span]
      pool = starts if span is None else cands
      scores = [raw[a].get(key, 0.0) for a in pool]
      best = pool[int(np.argmax(scores))]          # np.argmax: first of equal maxima
      expected = pool.index(best) if span is None else names.index(g.nonterminals[best])
      assert labels[r] == expected, (task, s)


def test_ties_go_to_the_first_candidate(tmp_path):
  # S1 and S2 derive exactly the same sentences with the same probabilities.
  g = rule_file.load_rule_file(_write(tmp_path, "S S1 0.5\nS S2 0.5\nS1 A A 1.0\n"
                                                "S2 A A 1.0\nA a 0.5\nA b 0.5\n"))
  lang = PCFG(g, max_length=4)
  labels = lang.task_labels("A", Sentences(np.array([[0, 1, 0, 0]]), np.array([2])))
  assert labels.tolist() == [0]


def test_sampling_frequencies_fit_the_grammar(tmp_path):
  path = _write(tmp_path, RECURSIVE)
  g = rule_file.load_rule_file(path)
  lang = PCFG(g, max_length=4)
  probs = brute_force.pcfg_language(g, 4)
  total = sum(probs.values())
  s = lang.sample(np.random.default_rng(0), 40000)
  counts = {}
  for row, n in zip(s.tokens, s.lengths):
    key = tuple(row[:n].tolist())
    counts[key] = counts.get(key, 0) + 1
  keys = sorted(probs, key=lambda k: -probs[k])
  expected = np.array([probs[k] / total for k in keys]) * len(s)
  observed = np.array([counts.get(k, 0) for k in keys])
  assert set(counts) <= set(probs)
  assert brute_force.goodness_of_fit_pvalue(observed, expected) > 1e-3


def test_same_seed_same_sentences_different_seed_different():
  lang = PCFG(random_grammar(SMALL, 0))
  a = lang.sample(np.random.default_rng(7), 500)
  b = lang.sample(np.random.default_rng(7), 500)
  c = lang.sample(np.random.default_rng(8), 500)
  assert a.tokens.tobytes() == b.tokens.tobytes() and a.tokens.tobytes() != c.tokens.tobytes()
  assert random_grammar(SMALL, 0).binary.tobytes() != random_grammar(SMALL, 1).binary.tobytes()


@pytest.mark.parametrize("cfg,seed", [
    (RandomGrammarConfig(), 2),
    # Skewed rule and word weights: a harder case for float32 scaling.
    (RandomGrammarConfig(concentration=0.1, emit_low=0.01, emit_high=0.9), 4),
])
def test_fast_conditionals_match_the_textbook_reference_at_paper_scale(cfg, seed):
  """On the paper's grammar shape (too large to enumerate): float32 layered JAX vs float64 CKY.

  1e-5 is the float32 accuracy the layered path promises (it measures ~2e-7).
  """
  g = random_grammar(cfg, seed)
  lang = PCFG(g, max_length=8)       # one length bucket keeps the compilation small
  assert lang._inside.method == "layered"
  s = lang.sample(np.random.default_rng(0), 8, min_length=5)
  fast = lang.conditionals(s.tokens, s.lengths)
  assert fast.dtype == np.float32
  for r in range(len(s)):
    n = s.lengths[r]
    np.testing.assert_allclose(fast[r, :n], reference.pcfg_conditionals(g, s.tokens[r, :n]),
                               atol=1e-5)


def test_layers_are_detected_from_the_rule_tensor(tmp_path):
  g = random_grammar(RandomGrammarConfig(), seed=1)
  ids = layered.layers(g)
  assert [g.nonterminals[i[0]] for i in ids] == ["A4_0", "A3_0", "A2_0", "A1_0", "S1"]
  assert [len(i) for i in ids] == [10, 10, 10, 10, 9]
  assert [layered.longest(g)[i].max() for i in ids] == [1, 2, 4, 8, 16]
  assert Inside(g).method == "layered"
  # Not layered: a recursive grammar, and one rule that skips a layer.
  recursive = rule_file.load_rule_file(_write(tmp_path, RECURSIVE))
  assert layered.layers(recursive) is None and Inside(recursive).method == "dense"
  skip = g.binary.copy()
  skip[g.index("A1_0"), g.index("A2_0"), g.index("A3_0")] = 0.01
  skipping = dataclasses.replace(g, binary=skip)
  assert layered.layers(skipping) is None and Inside(skipping).method == "dense"
  with pytest.raises(ValueError, match="not layered"):
    Inside(skipping, method="layered")
  with pytest.raises(ValueError, match="unknown inside method"):
    Inside(g, method="sparse")
  assert Inside(g, method="dense").method == "dense"


# Layered grammars of several shapes: (config, seed, start mass also one layer down and an
# emitting top layer, longest sentence compared). The dense path compiles slowly (~3 s at
# 4 words), so the sentences stay short; 4 words still exercise full charts, prefix and
# suffix spans, and layers whose longest span (8 and 16 words for four levels) does not fit.
LAYERED_SHAPES = {
    "one binary layer": (RandomGrammarConfig(num_start=2, levels=1, symbols_per_level=3,
                                             words_per_last_symbol=4, vocab_size=6), 0, False, 2),
    "four levels": (RandomGrammarConfig(num_start=2, levels=4, symbols_per_level=3,
                                        rules_per_symbol=4, words_per_last_symbol=4,
                                        vocab_size=10), 2, False, 4),
    "three levels, mixed start, emitting top": (SMALL, 3, True, 4),
}


@pytest.mark.parametrize("shape", sorted(LAYERED_SHAPES))
def test_layered_and_dense_inside_agree(shape, x64):
  """log Z and its gradient (whose rows are the conditionals) by both paths, float64,
  under one-hot evidence with masked (all-ones) rows and under soft evidence."""
  cfg, seed, mixed, max_len = LAYERED_SHAPES[shape]
  g = random_grammar(cfg, seed)
  if mixed:
    g = _mixed_layers(g, seed)
  s = PCFG(g).sample(np.random.default_rng(seed), 12, max_length=max_len)
  tokens = jnp.asarray(s.tokens[:, :max_len])
  lengths = jnp.asarray(s.lengths)
  rng = np.random.default_rng(0)
  mask = jnp.asarray(rng.random(tokens.shape) < 0.3)
  one_hot = evidence_lib.one_hot_evidence(tokens, g.vocab_size, mask, jnp.float64)
  soft = one_hot + 0.5 * jnp.asarray(rng.random(one_hot.shape))
  out = {}
  for method in ("dense", "layered"):
    inside = Inside(g, jnp.float64, method=method)

    def value_and_grad(e, lengths, inside=inside):
      total = lambda e: (lambda v: (jnp.sum(v), v))(inside.log_marginal(e, lengths))
      (_, log_z), grad = jax.value_and_grad(total, has_aux=True)(e)
      return log_z, grad

    fn = jax.jit(value_and_grad)
    out[method] = [fn(e, lengths) for e in (one_hot, soft)]
  for dense, fast in zip(out["dense"], out["layered"]):
    for a, b in zip(dense, fast):
      assert np.all(np.isfinite(b))
      np.testing.assert_allclose(b, a, rtol=1e-10, atol=1e-13)


def test_batched_numpy_reference_matches_the_textbook():
  """The benchmark's baseline (`data_gen.pcfg.batched_reference`) is correct."""
  g = random_grammar(SMALL, 0)
  s = PCFG(g).sample(np.random.default_rng(0), 20)
  got = batched_reference.conditionals(g, s.tokens, s.lengths)
  for r in range(len(s)):
    n = s.lengths[r]
    np.testing.assert_allclose(got[r, :n], reference.pcfg_conditionals(g, s.tokens[r, :n]),
                               rtol=1e-12, atol=1e-15)
    assert np.all(got[r, n:] == 0)
