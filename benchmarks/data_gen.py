r"""Sampling and exact-conditional throughput of data_gen, against plain references.

  python -m benchmarks.data_gen [--num=2000] [--num_reference=40]

Side by side in one run, on a random grammar of the paper's shape (49
nonterminals below the root, 200 words, up to 16 words; the default of
`RandomGrammarConfig`) and on the paper's HMM shape (100 states, 200 words,
length 16):

* sampling: the vectorised samplers vs one Python call per node
  (`data_gen.reference.RecursiveSampler`) / per time step;
* all single-masked conditionals ("inside-outside"): the batched JAX code
  (bucketed by length, after compilation) vs textbook CKY inside-outside /
  forward-backward in numpy, one sentence at a time (`data_gen.reference`).

Prints sentences per second and the ratio; the targets are at least 500
sentences/s of PCFG inside-outside on 2 CPU cores and at least 50x the reference.
"""
import time

import numpy as np
from absl import app
from absl import flags

from data_gen import reference
from data_gen.hmm import HMM, HMMConfig
from data_gen.pcfg.language import PCFG
from data_gen.pcfg.random_grammar import RandomGrammarConfig, random_grammar

_NUM = flags.DEFINE_integer("num", 2000, "Sentences for our implementations.")
_NUM_REF = flags.DEFINE_integer("num_reference", 100, "Sentences for the references.")


def _rate(fn, n):
  start = time.perf_counter()
  fn()
  return n / (time.perf_counter() - start)


def _row(name, ours, ref):
  print(f"| {name} | {ours:,.0f} | {ref:,.1f} | {ours / ref:,.0f}x |", flush=True)


def main(argv):
  del argv
  n, m = _NUM.value, _NUM_REF.value
  grammar = random_grammar(RandomGrammarConfig(), seed=0)
  pcfg = PCFG(grammar)
  hmm = HMM.random(HMMConfig(), seed=0)
  rng = np.random.default_rng(0)
  sents = pcfg.sample(rng, n)
  hsents = hmm.sample(rng, n)
  pcfg.conditionals(sents.tokens, sents.lengths)      # compile every length bucket
  hmm.conditionals(hsents.tokens[:8], hsents.lengths[:8])
  rec = reference.RecursiveSampler(grammar)
  print("| benchmark | ours (sentences/s) | reference (sentences/s) | speed-up |")
  print("|---|---|---|---|")
  _row("PCFG sampling", _rate(lambda: pcfg.sample(rng, 100 * n), 100 * n),
       _rate(lambda: [rec.sample(rng) for _ in range(20 * m)], 20 * m))
  _row("PCFG inside-outside, all conditionals",
       _rate(lambda: pcfg.conditionals(sents.tokens, sents.lengths), n),
       _rate(lambda: [reference.pcfg_conditionals(grammar, s[:k])
                      for s, k in zip(sents.tokens[:m], sents.lengths[:m])], m))

  def hmm_reference_sample(count):
    cum_t, cum_e = np.cumsum(hmm.transition, 1), np.cumsum(hmm.emission, 1)
    for _ in range(count):
      z = int(np.searchsorted(np.cumsum(hmm.initial), rng.random()))
      for _ in range(hmm.length):
        np.searchsorted(cum_e[z], rng.random())
        z = min(int(np.searchsorted(cum_t[z], rng.random())), hmm.num_states - 1)

  _row("HMM sampling", _rate(lambda: hmm.sample(rng, 100 * n), 100 * n),
       _rate(lambda: hmm_reference_sample(20 * m), 20 * m))
  _row("HMM forward-backward, all conditionals",
       _rate(lambda: hmm.conditionals(hsents.tokens, hsents.lengths), n),
       _rate(lambda: [reference.hmm_conditionals(hmm.initial, hmm.transition, hmm.emission, s)
                      for s in hsents.tokens[:m]], m))


if __name__ == "__main__":
  app.run(main)
