"""TFDS datasets of a synthetic language, written as array_record (no TensorFlow).

One builder serves every language: its `BuilderConfig` is named by a hash of
the data config (language, knobs, seed) and the split sizes, so the same
config always maps to the same files, and a changed config to new ones.
Splits:

* ``train``, ``validation``, ``test``: pre-training sentences (the language's
  pre-training length filter). ``validation`` also stores, per sentence, the
  exact conditional ``p(x_i | x_{-i})`` of every position (``conditionals``
  [n, V]) and its entropy (``entropy`` [n]), so training can report loss minus
  optimum.
* ``<task>_train``, ``<task>_test`` for each downstream task of the language
  (the downstream length filter, e.g. 4 < n < 32 for the PCFG).

Every example has ``tokens`` [n] and one ``label_<task>`` per task (-1 where
undefined). Example ``i`` of a split comes from chunk ``i // chunk`` drawn with
``default_rng([seed, split, chunk])``: byte-identical for the same config.

Read with ``tfds.data_source`` (random access, no TensorFlow), or with
`load_split`, which builds the dataset first if needed.
"""
import dataclasses
import hashlib
import json
from typing import Any, Mapping

import numpy as np
import tensorflow_datasets as tfds

from data_gen import registry

CHUNK = 1024
SPLIT_IDS = {"train": 0, "validation": 1, "test": 2}


@dataclasses.dataclass(frozen=True)
class Sizes:
  train: int = 100_000
  validation: int = 1_000
  test: int = 1_000
  task_train: int = 10_000
  task_test: int = 2_000


def _plain(data) -> dict:
  """A config section (dict or ml_collections.ConfigDict) as plain JSON-able dicts."""
  if hasattr(data, "to_dict"):
    data = data.to_dict()
  out = {}
  for k, v in data.items():
    if hasattr(v, "to_dict") or isinstance(v, Mapping):
      out[k] = _plain(v)
    else:
      out[k] = list(v) if isinstance(v, tuple) else v
  return out


def config_name(data, sizes: Sizes) -> str:
  data = _plain(data)
  lang = data["language"]
  relevant = dict(language=lang, seed=data.get("seed", 0),
                  knobs=_plain(data.get(lang) or {}), sizes=dataclasses.asdict(sizes))
  digest = hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:12]
  return f"{lang}_{digest}"


class SyntheticLanguage(tfds.core.GeneratorBasedBuilder):
  """Pre-training and downstream splits of one `data_gen` language."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release."}

  def __init__(self, *, data: Mapping[str, Any], sizes: Sizes = Sizes(), **kwargs):
    self._data = _plain(data)
    self._sizes = sizes
    self._language = registry.make_language(self._data)
    config = tfds.core.BuilderConfig(name=config_name(self._data, sizes),
                                     description=json.dumps(self._data, sort_keys=True))
    super().__init__(config=config, file_format="array_record", **kwargs)

  @property
  def language(self):
    return self._language

  def _info(self):
    v = self._language.vocab_size
    feats = dict(tokens=tfds.features.Tensor(shape=(None,), dtype=np.int32),
                 conditionals=tfds.features.Tensor(shape=(None, v), dtype=np.float32),
                 entropy=tfds.features.Tensor(shape=(None,), dtype=np.float32))
    feats.update({f"label_{t}": np.int32 for t in self._language.tasks()})
    return tfds.core.DatasetInfo(builder=self, description=self.builder_config.description,
                                 features=tfds.features.FeaturesDict(feats))

  def _split_generators(self, dl_manager):
    del dl_manager
    s = self._sizes
    out = {"train": self._generate_examples("train", s.train),
           "validation": self._generate_examples("validation", s.validation, exact=True),
           "test": self._generate_examples("test", s.test)}
    for i, task in enumerate(self._language.tasks()):
      out[f"{task}_train"] = self._generate_examples(f"{task}_train", s.task_train, split_id=10 + 2 * i,
                                            downstream=True)
      out[f"{task}_test"] = self._generate_examples(f"{task}_test", s.task_test, split_id=11 + 2 * i,
                                           downstream=True)
    return out

  def _sample(self, rng, n, downstream):
    lang = self._language
    if downstream and hasattr(lang, "sample_downstream"):
      return lang.sample_downstream(rng, n)
    return lang.sample(rng, n)

  def _generate_examples(self, split, n, split_id=None, exact=False, downstream=False):
    lang, v = self._language, self._language.vocab_size
    sid = SPLIT_IDS.get(split, split_id)
    seed = int(self._data.get("seed", 0))
    for chunk_start in range(0, n, CHUNK):
      m = min(CHUNK, n - chunk_start)
      sents = self._sample(np.random.default_rng([seed, sid, chunk_start // CHUNK]), m,
                           downstream)
      labels = {t: lang.task_labels(t, sents) for t in lang.tasks()}
      cond = lang.conditionals(sents.tokens, sents.lengths) if exact else None
      for r in range(m):
        k = int(sents.lengths[r])
        ex = dict(tokens=sents.tokens[r, :k].astype(np.int32),
                  conditionals=np.zeros((0, v), np.float32), entropy=np.zeros(0, np.float32))
        if exact:
          p = cond[r, :k].astype(np.float64)
          ex["conditionals"] = p.astype(np.float32)
          ex["entropy"] = (-np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1)), 0),
                                   axis=1)).astype(np.float32)
        ex.update({f"label_{t}": np.int32(labels[t][r]) for t in labels})
        yield chunk_start + r, ex


def builder(data: Mapping[str, Any], sizes: Sizes = Sizes(), data_dir: str | None = None):
  return SyntheticLanguage(data=data, sizes=sizes, data_dir=data_dir)


def sizes_from_config(data: Mapping[str, Any]) -> Sizes:
  ds = data.get("dataset") or {}
  return Sizes(**{k: int(ds[k]) for k in dataclasses.asdict(Sizes()) if k in ds})


def load_split(data: Mapping[str, Any], split: str):
  """Random-access source of one split (builds the dataset on first use)."""
  ds = data.get("dataset") or {}
  b = builder(data, sizes_from_config(data), data_dir=ds.get("data_dir") or None)
  b.download_and_prepare()
  return b.as_data_source(split=split)
