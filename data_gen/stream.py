"""Training batches sampled from a language, forever, resumable by position.

A `flatness.training.input_pipeline.BatchSource`: batch ``i`` holds
``batch_size`` fresh sentences drawn from ``default_rng([seed, i])`` (the
population loss: no sentence is seen twice in expectation), and this process's
rows of it (`flatness.runtime.sharding.process_rows`), so that one process and
several train on the same global batches.
"""
from typing import Iterator, Sequence

import numpy as np

from flatness.runtime import sharding


class LanguageStream:
  """Fresh i.i.d. sentences; ``labels`` names downstream tasks to label each batch with."""

  def __init__(self, language, batch_size: int, seed: int, labels: Sequence[str] = ()):
    self.language, self.batch_size, self.seed, self.labels = language, batch_size, seed, labels

  def batch(self, index: int) -> dict:
    sents = self.language.sample(np.random.default_rng([self.seed, index]), self.batch_size)
    out = dict(tokens=sents.tokens.astype(np.int32), lengths=sents.lengths.astype(np.int32))
    for name in self.labels:
      out[f"label_{name}"] = np.asarray(self.language.task_labels(name, sents), np.int32)
    rows = sharding.process_rows(self.batch_size)
    return {k: v[rows] for k, v in out.items()}

  def batches(self, start: int) -> Iterator[dict]:
    i = start
    while True:
      yield self.batch(i)
      i += 1
