"""Seeded random grammars with the structure of the paper's PCFG.

The paper's grammar (``rule_deep_mlm.txt`` of the authors' code) has a root
``S -> S1 .. S9``; each ``Sk`` has one binary rule to two level-1 symbols;
levels ``A1 .. A4`` have 10 symbols each; a symbol of levels 1 to 3 has about 20 binary rules to pairs of
next-level symbols plus one word emission (with probability between 0.04 and
0.42 in the file); level-4 symbols only emit words (about 100 each). With the
defaults below the generator reproduces that shape: 9 + 40 = 49 nonterminals
below the root, 200 words, sentences of 2 to 16 words.

Draws: the start distribution ~ Dirichlet(1); for each symbol the children of
its binary rules uniformly with replacement (duplicates merged, as the rule
file sums them), its words uniformly without replacement, and the weights of
its binary rules and of its words ~ Dirichlet(``concentration``); its
probability of emitting a word ~ Uniform(``emit_low``, ``emit_high``) at the
inner levels, 1 at the last level.
"""
import dataclasses

import numpy as np

from data_gen.pcfg.grammar import Grammar


@dataclasses.dataclass(frozen=True)
class RandomGrammarConfig:
  num_start: int = 9              # S1 .. Sk
  levels: int = 4                 # A1 .. A<levels>
  symbols_per_level: int = 10
  rules_per_symbol: int = 20      # binary rules of an inner-level symbol (before merging)
  words_per_inner_symbol: int = 1
  words_per_last_symbol: int = 100
  vocab_size: int = 200
  emit_low: float = 0.04          # an inner symbol's emission probability ~ U(low, high)
  emit_high: float = 0.42
  concentration: float = 1.0      # Dirichlet concentration of rule and word weights

  def __post_init__(self):
    for name in ("num_start", "levels", "symbols_per_level", "rules_per_symbol",
                 "words_per_inner_symbol", "words_per_last_symbol", "vocab_size"):
      if getattr(self, name) <= 0:
        raise ValueError(f"pcfg.{name} must be positive, got {getattr(self, name)}")
    if max(self.words_per_inner_symbol, self.words_per_last_symbol) > self.vocab_size:
      raise ValueError("pcfg.words_per_*_symbol cannot exceed pcfg.vocab_size")
    if not 0.0 <= self.emit_low <= self.emit_high < 1.0:
      raise ValueError(f"pcfg.emit_low/emit_high must satisfy 0 <= low <= high < 1, got "
                       f"{self.emit_low}, {self.emit_high}")
    if self.concentration <= 0:
      raise ValueError(f"pcfg.concentration must be positive, got {self.concentration}")

  @property
  def max_length(self) -> int:
    return 2 ** self.levels


# A grammar a small CPU model learns to its optimal loss in minutes.
SMALL = RandomGrammarConfig(num_start=3, levels=3, symbols_per_level=4, rules_per_symbol=5,
                            words_per_last_symbol=12, vocab_size=32, emit_low=0.1,
                            emit_high=0.4, concentration=1.0)

# Smaller still (24 words, 3 symbols a level, 4 rules a symbol): a 2-layer, 64-wide model
# trained on exact targets gets within 1% of its optimal loss in about 75 s of a 2-core
# CPU (benchmarks/convergence.py). With seed 2 (COMPACT_SEED) no downstream task has a
# majority class of half the sentences (A 0.36, B 0.26, C 0.31).
COMPACT = RandomGrammarConfig(num_start=3, levels=3, symbols_per_level=3, rules_per_symbol=4,
                              words_per_last_symbol=8, vocab_size=24, emit_low=0.1,
                              emit_high=0.4, concentration=1.0)
COMPACT_SEED = 2


def random_grammar(cfg: RandomGrammarConfig = RandomGrammarConfig(), seed: int = 0) -> Grammar:
  rng = np.random.default_rng(seed)
  k, s = cfg.num_start, cfg.symbols_per_level
  names = [f"S{i + 1}" for i in range(k)]
  names += [f"A{lvl + 1}_{j}" for lvl in range(cfg.levels) for j in range(s)]
  n, v = len(names), cfg.vocab_size
  level_ids = lambda lvl: k + lvl * s + np.arange(s)   # lvl counts from 0 (= A1)
  binary = np.zeros((n, n, n))
  emission = np.zeros((n, v))
  for i in range(k):
    b, c = rng.choice(level_ids(0), size=2)
    binary[i, b, c] = 1.0
  for lvl in range(cfg.levels):
    last = lvl == cfg.levels - 1
    for a in level_ids(lvl):
      p_emit = 1.0 if last else rng.uniform(cfg.emit_low, cfg.emit_high)
      n_words = cfg.words_per_last_symbol if last else cfg.words_per_inner_symbol
      words = rng.choice(v, size=n_words, replace=False)
      emission[a, words] = p_emit * rng.dirichlet(np.full(n_words, cfg.concentration))
      if not last:
        children = rng.choice(level_ids(lvl + 1), size=(cfg.rules_per_symbol, 2))
        weights = (1 - p_emit) * rng.dirichlet(np.full(cfg.rules_per_symbol, cfg.concentration))
        np.add.at(binary[a], (children[:, 0], children[:, 1]), weights)
  start = np.zeros(n)
  start[:k] = rng.dirichlet(np.ones(k))
  return Grammar(nonterminals=tuple(names), words=tuple(f"w{i}" for i in range(v)),
                 start=start, binary=binary, emission=emission, root="S", root_is_unary=True,
                 mass=np.ones(n))
