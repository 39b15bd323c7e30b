"""The paper's PCFG downstream tasks A, B and C, exactly as its public code labels them.

All three compare inside probabilities under the grammar's *raw* rule numbers
(not renormalised; `Grammar.with_raw_probabilities`), in float64:

* A: the start symbol ``S1 .. Sk`` with the largest inside probability of the
  whole sentence, without the root's prior ``P(S -> Sk)``; label ``k - 1``.
* B: among all nonterminals (start symbols first, then ``A1_0 .. A4_9`` in
  file order), the one with the largest inside probability of the span of the
  first 4 words; the label is its index in the *sorted* list of all
  left-hand sides of the rule file (the root ``S`` included, so with the
  paper's grammar ``A1_0 .. A4_9`` are 0..39, ``S`` 40 and ``S1 .. S9`` 41..49).
* C: the same for the first 2 words.

Ties (including "no symbol derives this span", all probabilities 0) go to the
first candidate in that order, as Python's ``max`` over the authors' ordered
dict does. Sentences shorter than the task's span get label -1; a grammar
whose sentences are all shorter than a task's span does not define that task.
"""
import jax
import jax.numpy as jnp
import numpy as np

from data_gen import evidence as evidence_lib
from data_gen.language import Task
from data_gen.pcfg.grammar import Grammar
from data_gen.pcfg.inside import Inside

SPANS = {"A": None, "B": 4, "C": 2}


def label_names(grammar: Grammar) -> list[str]:
  """The sorted left-hand sides: B/C labels index this list."""
  names = list(grammar.nonterminals)
  if grammar.root_is_unary:
    names.append(grammar.root)
  return sorted(names)


def start_symbols(grammar: Grammar) -> list[int]:
  return [int(a) for a in np.flatnonzero(grammar.start)]


def candidates(grammar: Grammar) -> list[int]:
  """B/C candidates in tie-breaking order: start symbols, then the rest in file order."""
  starts = start_symbols(grammar)
  return starts + [a for a in range(grammar.num_nonterminals) if a not in starts]


def tasks(grammar: Grammar, max_length: int | None = None) -> dict[str, Task]:
  """The tasks; with ``max_length`` (the longest sentence) only those it can define."""
  n_start, n_all = len(start_symbols(grammar)), len(label_names(grammar))
  out = {
      "A": Task("A", n_start, "most likely start symbol of the whole sentence"),
      "B": Task("B", n_all, "most likely nonterminal spanning the first 4 words"),
      "C": Task("C", n_all, "most likely nonterminal spanning the first 2 words"),
  }
  return {k: t for k, t in out.items()
          if max_length is None or SPANS[k] is None or SPANS[k] <= max_length}


class Labeller:
  """Task labels of many sentences (float64 inside probabilities, raw rule numbers)."""

  def __init__(self, grammar: Grammar, max_length: int, batch_size: int = 128):
    self.grammar = grammar
    raw = grammar.with_raw_probabilities()
    with jax.enable_x64(True):
      self._inside = Inside(raw, dtype=jnp.float64)
    v = grammar.vocab_size

    def prefix(tokens, lengths):
      e = evidence_lib.one_hot_evidence(tokens, v, dtype=jnp.float64)
      return self._inside.prefix_log_inside(e, lengths)

    self._prefix = evidence_lib.Bucketed(prefix, max_length, batch_size=batch_size)
    names = label_names(grammar)
    self._cands = candidates(grammar)
    self._cand_labels = np.array([names.index(grammar.nonterminals[a]) for a in self._cands])
    self._starts = start_symbols(grammar)

  def __call__(self, task: str, tokens, lengths) -> np.ndarray:
    if task not in SPANS:
      raise ValueError(f"unknown PCFG task {task!r}; the tasks are A, B and C")
    lengths = np.asarray(lengths)
    with jax.enable_x64(True):
      logb = self._prefix(tokens, lengths)                        # [n, L, N]
    if task == "A":
      whole = logb[np.arange(len(lengths)), lengths - 1][:, self._starts]
      return np.argmax(whole, axis=1).astype(np.int32)
    span = SPANS[task]
    if span > logb.shape[1]:          # no sentence reaches the span: the task is undefined
      return np.full(len(lengths), -1, np.int32)
    scores = logb[:, span - 1][:, self._cands]
    labels = self._cand_labels[np.argmax(scores, axis=1)]
    return np.where(lengths >= span, labels, -1).astype(np.int32)
