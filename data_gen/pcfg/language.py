"""A PCFG as a `Language`: sampling, exact probabilities and conditionals, tasks A/B/C.

Sentences are drawn from the grammar conditioned on ``min_length <= n <=
max_length`` (the paper: ``n < 32`` for pre-training, a filter its grammar
never meets, and ``4 < n < 32`` for downstream data). Exact probabilities
account for the filter: ``log p(x | filter) = log p(x) - log P(filter)``, with
``P(length = n)`` itself an inside computation over all-ones evidence.
Conditionals of single positions do not depend on the filter.
"""
import functools

import jax.numpy as jnp
import numpy as np
from absl import logging

from data_gen import evidence as evidence_lib
from data_gen.language import Language, Sentences
from data_gen.pcfg import tasks as tasks_lib
from data_gen.pcfg.grammar import Grammar
from data_gen.pcfg.inside import Inside
from data_gen.pcfg.sampler import Sampler


class PCFG(Language):

  def __init__(self, grammar: Grammar, *, min_length: int = 1, max_length: int = 31,
               downstream_min_length: int = 5, batch_size: int = 16, dtype=jnp.float32,
               description: dict | None = None):
    if not 1 <= min_length <= max_length:
      raise ValueError(f"pcfg: need 1 <= min_length <= max_length, got {min_length}, {max_length}")
    self.grammar = grammar
    self.words = grammar.words
    self.vocab_size = grammar.vocab_size
    # The longest sentence the grammar can derive within the filter (layered grammars
    # are much shorter than the filter: the paper's derives at most 16 words).
    possible = np.flatnonzero(grammar.length_probabilities(max_length) > 0)
    if not len(possible) or possible[-1] < min_length:
      raise ValueError(f"pcfg: the grammar derives no sentence of {min_length} to {max_length} "
                       "words")
    self.min_length, self.max_length = min_length, int(possible[-1])
    if downstream_min_length > self.max_length:
      logging.warning("pcfg: no sentence reaches the downstream minimum of %d words; downstream "
                      "data uses sentences of %d words", downstream_min_length, self.max_length)
      downstream_min_length = self.max_length
    self.downstream_min_length = downstream_min_length
    self.dtype = dtype
    self._description = description or {}
    self._sampler = Sampler(grammar)
    self._inside = Inside(grammar, dtype=dtype)
    self._batch = batch_size
    v = self.vocab_size

    def log_marg(tokens, lengths, mask):
      e = evidence_lib.one_hot_evidence(tokens, v, mask, dtype)
      return self._inside.log_marginal(e, lengths)

    def cond(tokens, lengths, mask):
      e = evidence_lib.one_hot_evidence(tokens, v, mask, dtype)
      return evidence_lib.conditionals(self._inside.log_marginal, e, lengths)

    def soft_cond(tokens, lengths, evid):
      return evidence_lib.posterior_marginals(self._inside.log_marginal, evid.astype(dtype),
                                              lengths), self._inside.log_marginal(evid, lengths)

    # One compiled program per bucket width. The layered inside costs about linearly in the
    # width but ~1.5 s to compile, so it buckets by 8 words (the paper's grammar: 2 programs,
    # about 8% more arithmetic than by 4); the dense one grows like width^3 and keeps 4.
    bucket = 8 if self._inside.method == "layered" else 4
    self._log_marginal = evidence_lib.Bucketed(log_marg, self.max_length, positional=(False,),
                                               batch_size=batch_size, bucket=bucket)
    self._cond = evidence_lib.Bucketed(cond, self.max_length, batch_size=batch_size,
                                       bucket=bucket)
    self._soft = evidence_lib.Bucketed(soft_cond, self.max_length, positional=(True, False),
                                       batch_size=batch_size, bucket=bucket)

  def config_dict(self) -> dict:
    return dict(kind="pcfg", min_length=self.min_length, max_length=self.max_length,
                **self._description)

  # ---- sampling
  def sample(self, rng, n, *, min_length=None, max_length=None) -> Sentences:
    lo, hi = min_length or self.min_length, max_length or self.max_length
    if not np.any(self.grammar.length_probabilities(hi)[lo:] > 0):
      raise ValueError(f"pcfg: the grammar derives no sentence of {lo} to {hi} words")
    return self._sampler.sample(rng, n, min_length=lo, max_length=hi)

  def sample_downstream(self, rng, n) -> Sentences:
    """Sentences for downstream tasks (the paper: 4 < length < 32)."""
    return self.sample(rng, n, min_length=max(self.downstream_min_length, self.min_length))

  # ---- exact probabilities
  @functools.cached_property
  def length_log_probs(self) -> np.ndarray:
    """float64 [max_length + 1]: log P(length = n) under the unfiltered grammar."""
    with np.errstate(divide="ignore"):
      return np.log(self.grammar.length_probabilities(self.max_length))

  @functools.cached_property
  def log_filter_probability(self) -> float:
    lp = self.length_log_probs[self.min_length:self.max_length + 1]
    return float(np.logaddexp.reduce(lp))

  def log_prob(self, tokens, lengths) -> np.ndarray:
    mask = np.zeros(np.shape(tokens), bool)
    lp = self._log_marginal(tokens, lengths, mask).astype(np.float64)
    return lp - self.log_filter_probability

  def conditionals(self, tokens, lengths, mask=None) -> np.ndarray:
    tokens = np.asarray(tokens)[:, :self.max_length]
    tokens = np.pad(tokens, ((0, 0), (0, self.max_length - tokens.shape[1])))
    mask = np.zeros(tokens.shape, bool) if mask is None else np.pad(
        np.asarray(mask, bool), ((0, 0), (0, self.max_length - np.shape(mask)[1])))
    return self._cond(tokens, lengths, mask)

  def soft_conditionals(self, tokens, lengths, evidence):
    """Posterior marginals and log marginal under arbitrary evidence rows [n, L, V]."""
    return self._soft(tokens, lengths, evidence)

  # ---- tasks
  def tasks(self):
    return self._tasks

  @functools.cached_property
  def _tasks(self):
    defined = tasks_lib.tasks(self.grammar, self.max_length)
    for name in sorted(set(tasks_lib.tasks(self.grammar)) - set(defined)):
      logging.warning("pcfg: task %s is skipped: it labels the first %d words, and this "
                      "grammar's sentences have at most %d", name, tasks_lib.SPANS[name],
                      self.max_length)
    return defined

  @functools.cached_property
  def _labeller(self):
    return tasks_lib.Labeller(self.grammar, self.max_length)

  def task_labels(self, name, sentences: Sentences) -> np.ndarray:
    return self._labeller(name, sentences.tokens, sentences.lengths)

  def emitter_entropy(self) -> np.ndarray:
    """[N]: entropy (nats) of the word a nonterminal emits, given that it emits one."""
    e = self.grammar.emission
    p = e / np.maximum(e.sum(axis=1, keepdims=True), 1e-300)
    return -np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0), axis=1)
