"""Vectorised PCFG sampling: all sentences of a chunk grow together, level by level.

The frontier of every derivation in a chunk is one flat array of nodes, in
sentence order and left to right within a sentence. Each round draws a rule for
every nonterminal node at once (inverse-CDF with one `searchsorted` over the
concatenated per-symbol cumulative rule probabilities) and replaces each node
by its children with `np.repeat`, which keeps the left-to-right order. A
sentence whose frontier outgrows ``max_length`` is dropped at once (rules never
shrink a frontier, since there are no empty rules), and so is one that ends
shorter than ``min_length``: rejection sampling, i.e. exact sampling from the
grammar conditioned on the length filter.
"""
import numpy as np

from data_gen.language import Sentences
from data_gen.pcfg.grammar import Grammar


class Sampler:

  def __init__(self, grammar: Grammar):
    g = grammar
    self.grammar = g
    lhs, kind, first, second, probs = [], [], [], [], []
    for a in range(g.num_nonterminals):
      for b, c in zip(*np.nonzero(g.binary[a])):
        lhs.append(a), kind.append(0), first.append(b), second.append(c)
        probs.append(g.binary[a, b, c])
      for w in np.flatnonzero(g.emission[a]):
        lhs.append(a), kind.append(1), first.append(w), second.append(-1)
        probs.append(g.emission[a, w])
    lhs, probs = np.asarray(lhs), np.asarray(probs, np.float64)
    totals = np.bincount(lhs, weights=probs, minlength=g.num_nonterminals)
    within = np.concatenate([np.cumsum(probs[lhs == a]) / totals[a]
                             for a in range(g.num_nonterminals) if totals[a] > 0])
    self._cum = lhs + within
    ends = np.r_[np.flatnonzero(np.diff(lhs)), len(lhs) - 1]
    self._cum[ends] = lhs[ends] + 1.0    # exact right ends: no rounding past a symbol's rules
    self._kind = np.asarray(kind, np.int8)
    self._first = np.asarray(first, np.int32)
    self._second = np.asarray(second, np.int32)
    self._start_cum = np.cumsum(g.start) / g.start.sum()

  def _chunk(self, rng, m, min_length, max_length):
    sym = np.minimum(np.searchsorted(self._start_cum, rng.random(m), side="right"),
                     len(self._start_cum) - 1).astype(np.int32)
    sent = np.arange(m, dtype=np.int32)
    word = np.full(m, -1, np.int32)      # >= 0 once the node is a word
    emitter = np.full(m, -1, np.int32)
    alive = np.ones(m, bool)
    while True:
      open_ = word < 0
      if not open_.any():
        break
      rules = np.searchsorted(self._cum, sym[open_] + rng.random(open_.sum()), side="right")
      kinds = self._kind[rules]
      counts = np.ones(len(sym), np.int64)
      counts[np.flatnonzero(open_)[kinds == 0]] = 2
      emit_nodes = np.flatnonzero(open_)[kinds == 1]
      word[emit_nodes] = self._first[rules[kinds == 1]]
      emitter[emit_nodes] = sym[emit_nodes]
      split = np.flatnonzero(open_)[kinds == 0]
      left, right = self._first[rules[kinds == 0]], self._second[rules[kinds == 0]]
      starts = np.cumsum(counts) - counts
      sym, sent, word, emitter = (np.repeat(x, counts) for x in (sym, sent, word, emitter))
      sym[starts[split]], sym[starts[split] + 1] = left, right
      # Frontier sizes only grow: drop sentences already too long.
      sizes = np.bincount(sent, minlength=m)
      alive &= sizes <= max_length
      keep = alive[sent]
      if not keep.all():
        sym, sent, word, emitter = sym[keep], sent[keep], word[keep], emitter[keep]
    lengths = np.bincount(sent, minlength=m)
    ok = alive & (lengths >= min_length) & (lengths <= max_length) & (lengths > 0)
    keep = ok[sent]
    sent, word, emitter = sent[keep], word[keep], emitter[keep]
    new_id = np.cumsum(ok) - 1
    rows = new_id[sent]
    offsets = np.cumsum(lengths[ok]) - lengths[ok]
    cols = np.arange(len(sent)) - offsets[rows]
    tokens = np.zeros((ok.sum(), max_length), np.int32)
    emitters = np.full((ok.sum(), max_length), -1, np.int32)
    tokens[rows, cols] = word
    emitters[rows, cols] = emitter
    return Sentences(tokens, lengths[ok].astype(np.int32), {"emitter": emitters})

  def sample(self, rng: np.random.Generator, n: int, *, min_length: int = 1,
             max_length: int = 31, chunk: int = 65536) -> Sentences:
    """n sentences with ``min_length <= length <= max_length``; tokens padded to max_length."""
    parts, have, acceptance, draws = [], 0, 1.0, 0
    while have < n:
      m = int(min(chunk, max(64, 1.2 * (n - have) / max(acceptance, 1e-3))))
      part = self._chunk(rng, m, min_length, max_length)
      draws += m
      acceptance = max(len(part) / m, 1e-3)
      parts.append(part)
      have += len(part)
      if have == 0 and draws >= 1000 * chunk:
        raise ValueError(f"no sentence of {min_length} to {max_length} words in {draws} draws")
    out = Sentences.concatenate(parts)
    return out.take(np.arange(n))
