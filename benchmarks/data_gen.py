r"""Sampling and exact-conditional throughput of data_gen, against plain and batched references.

  python -m benchmarks.data_gen [--num=2000] [--num_numpy=500] [--num_reference=40] \
      [--repeats=5] [--grammar_file=PATH] [--dense]

PCFG: the paper's grammar (``--grammar_file``, by default
``../shared/paper/rule_deep_mlm.txt`` beside the repository; 49 nonterminals in
layers of 10, 200 words, up to 16 words). Without that file it falls back to
``random_grammar(RandomGrammarConfig(), seed=0)``, a generated grammar of the
same shape (the first line printed says which one ran). HMM: the paper's shape
(100 states, 200 words, length 16).

Rows, each measured side by side in one run:

* sampling: the vectorised samplers vs one Python call per node
  (`data_gen.reference.RecursiveSampler`) / per time step;
* PCFG inside-outside, all single-masked conditionals ``p(x_i | x_-i)`` of
  every position of every sentence, float32, through the public
  ``PCFG.conditionals`` (batched JAX, bucketed by length; for a layered
  grammar such as the paper's `data_gen.pcfg.layered` is picked
  automatically), against two references:

  - **batched numpy** (`data_gen.pcfg.batched_reference`): textbook inside-outside
    vectorised over a batch of sentences of equal length and over the start
    positions of each span length (one ``matmul`` per split point), binary
    rules through their distinct child pairs ``(B_k, C_k)`` (262 for the
    paper's grammar instead of 49^2), an explicit outside pass, float64, one
    BLAS thread. It uses no layer structure: it is the general algorithm,
    written as a numpy user would batch it;
  - **textbook** (`data_gen.reference.pcfg_conditionals`): one sentence at a
    time, dense ``[N, N, N]`` rule tensor, loops over spans and splits;

  our timing and the numpy one alternate ``--repeats`` times and the medians
  are reported; the textbook one runs once on ``--num_reference`` sentences;
* HMM forward-backward, all conditionals, vs textbook forward-backward.

Then the compile time of all length buckets: of the conditionals (first call
minus a steady-state call, ``jax.jit`` per bucket width of `evidence.Bucketed`)
and of the sentence probabilities (forward only). ``--dense`` adds a row for
the general path (`data_gen.pcfg.inside.inside_prefix`, chosen for grammars
without layers) on the same grammar; its compilation takes about 35 s.

Targets (issue 15): PCFG conditionals at least 10x the batched numpy
reference (goal 30x), and compiling all buckets in at most 10 s.
"""
import os
import statistics
import time

import jax.numpy as jnp
import numpy as np
from absl import app
from absl import flags

from data_gen import evidence as evidence_lib
from data_gen import reference
from data_gen.hmm import HMM, HMMConfig
from data_gen.pcfg import batched_reference
from data_gen.pcfg import rule_file
from data_gen.pcfg.inside import Inside
from data_gen.pcfg.language import PCFG
from data_gen.pcfg.random_grammar import RandomGrammarConfig, random_grammar

try:
  from threadpoolctl import threadpool_limits  # pylint: disable=g-import-not-at-top
except ImportError:  # the reference then uses whatever OPENBLAS_NUM_THREADS allows
  threadpool_limits = None

PAPER_GRAMMAR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared",
                             "paper", "rule_deep_mlm.txt")

_NUM = flags.DEFINE_integer("num", 2000, "Sentences for our implementations.")
_NUM_NUMPY = flags.DEFINE_integer("num_numpy", 500, "Sentences for the batched numpy reference.")
_NUM_REF = flags.DEFINE_integer("num_reference", 40, "Sentences for the one-at-a-time references.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Alternating timings of ours and batched numpy.")
_GRAMMAR = flags.DEFINE_string("grammar_file", PAPER_GRAMMAR,
                               "Rule file of the PCFG; a generated grammar of the paper's shape "
                               "if it does not exist.")
_DENSE = flags.DEFINE_bool("dense", False, "Also time the general (dense) inside path.")


def _seconds(fn):
  start = time.perf_counter()
  fn()
  return time.perf_counter() - start


def _rate(fn, n):
  return n / _seconds(fn)


def _row(name, ours, ref):
  print(f"| {name} | {ours:,.0f} | {ref:,.1f} | {ours / ref:,.1f}x |", flush=True)


def _one_blas_thread(fn):
  if threadpool_limits is None:
    return fn()
  with threadpool_limits(limits=1, user_api="blas"):
    return fn()


def _dense_conditionals(grammar, max_length):
  """The general path on the same grammar, wired as `PCFG.conditionals` wires its own."""
  inside = Inside(grammar, jnp.float32, method="dense")
  v = grammar.vocab_size

  def cond(tokens, lengths, mask):
    e = evidence_lib.one_hot_evidence(tokens, v, mask, jnp.float32)
    return evidence_lib.conditionals(inside.log_marginal, e, lengths)

  bucketed = evidence_lib.Bucketed(cond, max_length, batch_size=16)
  return lambda tokens, lengths: bucketed(tokens, lengths, np.zeros(tokens.shape, bool))


def _grammar():
  """The paper's grammar if its file is there, else a generated one of its shape; and which."""
  if os.path.exists(_GRAMMAR.value):
    return (rule_file.load_rule_file(_GRAMMAR.value),
            f"the paper's grammar ({os.path.normpath(_GRAMMAR.value)})")
  return (random_grammar(RandomGrammarConfig(), seed=0),
          f"random_grammar(RandomGrammarConfig(), seed=0) ({_GRAMMAR.value} not found), "
          "a generated grammar of the paper's shape")


def _hmm_rows(hmm, hsents, rng, n: int, m: int) -> None:
  """HMM sampling and conditionals against one-sentence numpy references."""
  def reference_sample(count):
    cum_t, cum_e = np.cumsum(hmm.transition, 1), np.cumsum(hmm.emission, 1)
    for _ in range(count):
      z = int(np.searchsorted(np.cumsum(hmm.initial), rng.random()))
      for _ in range(hmm.length):
        np.searchsorted(cum_e[z], rng.random())
        z = min(int(np.searchsorted(cum_t[z], rng.random())), hmm.num_states - 1)

  _row("HMM sampling", _rate(lambda: hmm.sample(rng, 100 * n), 100 * n),
       _rate(lambda: reference_sample(20 * m), 20 * m))
  _row("HMM forward-backward, all conditionals",
       _rate(lambda: hmm.conditionals(hsents.tokens, hsents.lengths), n),
       _rate(lambda: [reference.hmm_conditionals(hmm.initial, hmm.transition, hmm.emission, s)
                      for s in hsents.tokens[:m]], m))


def main(argv):
  del argv
  n, n_np, m = _NUM.value, _NUM_NUMPY.value, _NUM_REF.value
  grammar, source = _grammar()
  pcfg = PCFG(grammar)
  hmm = HMM.random(HMMConfig(), seed=0)
  rng = np.random.default_rng(0)
  sents = pcfg.sample(rng, n)
  hsents = hmm.sample(rng, n)
  tokens, lengths = sents.tokens, sents.lengths
  print(f"PCFG: {source}; {grammar.num_nonterminals} nonterminals, {grammar.vocab_size} words, "
        f"sentences of {lengths.min()} to {lengths.max()} words (mean {lengths.mean():.1f}); "
        f"inside path: {pcfg._inside.method}.")       # pylint: disable=protected-access

  # Compilation: every length bucket on the first call; the same call again is the run alone.
  first = _seconds(lambda: pcfg.conditionals(tokens, lengths))
  again = _seconds(lambda: pcfg.conditionals(tokens, lengths))
  first_lp = _seconds(lambda: pcfg.log_prob(tokens, lengths))
  again_lp = _seconds(lambda: pcfg.log_prob(tokens, lengths))
  hmm.conditionals(hsents.tokens[:8], hsents.lengths[:8])

  ours, numpy_rates = [], []
  for _ in range(_REPEATS.value):
    ours.append(_rate(lambda: pcfg.conditionals(tokens, lengths), n))
    numpy_rates.append(_one_blas_thread(lambda: _rate(
        lambda: batched_reference.conditionals(grammar, tokens[:n_np], lengths[:n_np]), n_np)))
  ours_rate, numpy_rate = statistics.median(ours), statistics.median(numpy_rates)
  textbook_rate = _rate(lambda: [reference.pcfg_conditionals(grammar, s[:k])
                                 for s, k in zip(tokens[:m], lengths[:m])], m)
  agree = np.abs(pcfg.conditionals(tokens[:n_np], lengths[:n_np])
                 - batched_reference.conditionals(grammar, tokens[:n_np], lengths[:n_np])).max()

  rec = reference.RecursiveSampler(grammar)
  print()
  print("| benchmark | ours (sentences/s) | reference (sentences/s) | speed-up |")
  print("|---|---|---|---|")
  _row("PCFG sampling", _rate(lambda: pcfg.sample(rng, 100 * n), 100 * n),
       _rate(lambda: [rec.sample(rng) for _ in range(20 * m)], 20 * m))
  _row("PCFG inside-outside, all conditionals, vs batched numpy", ours_rate, numpy_rate)
  _row("PCFG inside-outside, all conditionals, vs textbook", ours_rate, textbook_rate)
  if _DENSE.value:
    dense = _dense_conditionals(grammar, pcfg.max_length)
    dense_first = _seconds(lambda: dense(tokens, lengths))
    dense_rate = statistics.median(_rate(lambda: dense(tokens, lengths), n)
                                   for _ in range(_REPEATS.value))
    _row("PCFG inside-outside, general (dense) path, vs batched numpy", dense_rate, numpy_rate)
  _hmm_rows(hmm, hsents, rng, n, m)

  print()
  print(f"PCFG inside-outside: {n:,} sentences (ours), {n_np:,} (batched numpy), {m} (textbook); "
        f"medians of {_REPEATS.value} alternating timings, ours "
        f"{min(ours):,.0f}-{max(ours):,.0f}, numpy {min(numpy_rates):,.0f}-{max(numpy_rates):,.0f}"
        f" sentences/s; max |ours (float32) - numpy (float64)| = {agree:.1e}.")
  print(f"Compile, all length buckets: conditionals {first - again:.1f} s, sentence "
        f"probabilities {first_lp - again_lp:.1f} s"
        + (f", general path conditionals {dense_first - n / dense_rate:.1f} s" if _DENSE.value
           else "") + ".")


if __name__ == "__main__":
  app.run(main)
