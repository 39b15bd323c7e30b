"""Batch sources: where training batches come from, resumable by position.

Training consumes process-local numpy batches ``{tokens [b, L], lengths [b],
...}`` (``b`` = global batch / process count). A source yields them for global
batch indices ``start, start + 1, ...``; the checkpoint stores the index of the
next batch, so a resumed run sees exactly the batches an uninterrupted run
would. Each global batch is the same whatever the number of processes (process
``p`` feeds rows ``[p*b, (p+1)*b)`` of it), so one process and two processes
train on identical data.

* `data_gen.stream.LanguageStream` (outside the library: it samples a language):
  fresh sentences forever, batch ``i`` from ``default_rng([seed, i])``.
* `ArraySource`: a finite dataset (arrays in memory, or any random-access
  source such as ``tfds.data_source``), reshuffled every epoch.
* `IteratorSource`: any iterable of batches; resuming skips by consuming.
"""
import queue
import threading
from typing import Any, Callable, Iterable, Iterator, Mapping, Protocol, Sequence

import numpy as np

from flatness.runtime import sharding


class BatchSource(Protocol):
  batch_size: int

  def batches(self, start: int) -> Iterator[dict]:
    ...


def pad_records(records: Sequence[Mapping[str, Any]], width: int) -> dict:
  """List of ``{tokens [n_i], ...}`` records -> padded batch arrays."""
  toks = np.zeros((len(records), width), np.int32)
  lengths = np.zeros(len(records), np.int32)
  for r, rec in enumerate(records):
    t = np.asarray(rec["tokens"])[:width]
    toks[r, :len(t)] = t
    lengths[r] = len(t)
  out = dict(tokens=toks, lengths=lengths)
  for key in records[0]:
    if key.startswith("label_"):
      out[key] = np.asarray([rec[key] for rec in records], np.int32)
  return out


class ArraySource:
  """A finite dataset, read by index and reshuffled every epoch.

  ``data`` is either a dict of equal-length arrays (``tokens`` [N, L],
  ``lengths`` [N], optional ``label_*`` [N]) or a random-access sequence of
  records (``len`` and ``__getitem__``; e.g. ``tfds.data_source(...)[split]``).
  """

  def __init__(self, data, batch_size: int, seed: int, width: int, shuffle: bool = True):
    self.data, self.batch_size, self.seed, self.width, self.shuffle = (
        data, batch_size, seed, width, shuffle)
    self.size = len(data["lengths"]) if isinstance(data, Mapping) else len(data)
    if self.size == 0:
      raise ValueError("ArraySource: the dataset is empty")
    self._perm_cache: dict[int, np.ndarray] = {}

  def _perm(self, epoch: int) -> np.ndarray:
    if not self.shuffle:
      return np.arange(self.size)
    if epoch not in self._perm_cache:
      self._perm_cache = {epoch: np.random.default_rng([self.seed, epoch]).permutation(self.size)}
    return self._perm_cache[epoch]

  def indices(self, index: int) -> np.ndarray:
    rows = sharding.process_rows(self.batch_size)
    g = index * self.batch_size + np.arange(self.batch_size)[rows]
    epochs = g // self.size
    return np.array([self._perm(int(e))[int(k)] for e, k in zip(epochs, g % self.size)])

  def batch(self, index: int) -> dict:
    idx = self.indices(index)
    if isinstance(self.data, Mapping):
      out = {k: np.asarray(v)[idx] for k, v in self.data.items()}
      out["tokens"] = out["tokens"][:, :self.width]
      return out
    getitems = getattr(self.data, "__getitems__", None)
    records = getitems(list(map(int, idx))) if getitems else [self.data[int(i)] for i in idx]
    return pad_records(records, self.width)

  def batches(self, start: int) -> Iterator[dict]:
    i = start
    while True:
      yield self.batch(i)
      i += 1


class IteratorSource:
  """Wraps an iterable of process-local batches; ``batches(start)`` skips ``start``."""

  def __init__(self, iterable: Iterable[dict], batch_size: int):
    self.iterable, self.batch_size = iterable, batch_size

  def batches(self, start: int) -> Iterator[dict]:
    it = iter(self.iterable)
    for _ in range(start):
      next(it)
    return it


def num_tokens(batch: Mapping[str, Any]) -> int:
  """Real tokens of a batch: its words plus [CLS] and [SEP] per sentence (no padding)."""
  return int(np.sum(batch["lengths"])) + 2 * len(batch["lengths"])


def prefetch(iterator: Iterator, size: int = 2, transform: Callable | None = None) -> Iterator:
  """Runs ``iterator`` (and ``transform``) in a background thread, ``size`` items ahead."""
  q: queue.Queue = queue.Queue(maxsize=size)
  done, stop = object(), threading.Event()

  def put(item) -> bool:
    while not stop.is_set():
      try:
        q.put(item, timeout=0.1)
        return True
      except queue.Full:
        continue
    return False

  def work():
    try:
      for item in iterator:
        if not put(transform(item) if transform else item):
          return     # the consumer has gone: do not hold a thread and its batches for ever
    except BaseException as e:  # re-raised in the consumer
      put(e)
    put(done)

  threading.Thread(target=work, daemon=True).start()
  try:
    while True:
      item = q.get()
      if item is done:
        return
      if isinstance(item, BaseException):
        raise item
      yield item
  finally:
    stop.set()
