"""Downstream accuracy of every checkpoint of a run: linear probes, fine-tuning, lookup table.

For each task of the run's language (PCFG: A, B, C; HMM: state_k; teacher:
class) a fixed labelled set is drawn once (``num_train`` + ``num_test``
sentences with the language's downstream length filter, seeded by
``config.seed``), so that every checkpoint is scored on the same sentences.
Written under ``downstream/`` at each checkpoint's step:

  <task>/probe_acc, probe_acc_std   linear probe on the frozen encoder's features
                                    (`flatness.probe`; mean and std over seeds)
  <task>/finetune_acc               full fine-tuning (`flatness.finetune`), if enabled
  <task>/lookup_acc, lookup_acc_std the paper's "lookup table" baseline: the same probe
                                    on the true conditionals p(x_i | x_-i), flattened
                                    [L * V], instead of model features (Sec. 4.3)

Accuracies are fractions in [0, 1]. The lookup baseline does not depend on the
checkpoint; it is computed once per call and written at every new step so that
each row of the metrics carries its reference.
"""
import dataclasses

import jax
import numpy as np
from absl import logging

from flatness import checkpoint_walk
from flatness import finetune
from flatness import probe


@dataclasses.dataclass
class TaskData:
  name: str
  num_classes: int
  train: tuple     # (tokens, lengths, labels)
  test: tuple


def task_data(language, tasks, num_train: int, num_test: int, seed: int) -> list[TaskData]:
  """Labelled downstream sentences for ``tasks`` (all of the language's when empty)."""
  known = language.tasks()
  if not known:
    raise ValueError(f"{type(language).__name__} defines no downstream task; use a pcfg, hmm "
                     "or teacher language")
  names = list(tasks) or sorted(known)
  unknown = [t for t in names if t not in known]
  if unknown:
    raise ValueError(f"downstream.tasks: {unknown} are not tasks of this language; it has "
                     f"{sorted(known)}")
  sample = getattr(language, "sample_downstream", language.sample)
  sents = sample(np.random.default_rng([seed, 15485863]), num_train + num_test)
  out = []
  for name in names:
    labels = np.asarray(language.task_labels(name, sents), np.int32)
    arrays = (sents.tokens, sents.lengths, labels)
    out.append(TaskData(name, known[name].num_classes,
                        tuple(a[:num_train] for a in arrays),
                        tuple(a[num_train:] for a in arrays)))
  return out


def lookup_features(language, tokens, lengths, width: int) -> np.ndarray:
  """float32 [n, width * V]: the true single-masked conditionals, zero past each length."""
  cond = np.asarray(language.conditionals(tokens[:, :width], np.minimum(lengths, width)),
                    np.float32)
  cond = np.pad(cond, ((0, 0), (0, width - cond.shape[1]), (0, 0)))
  return cond.reshape(len(cond), -1)


def probe_config(cfg) -> probe.ProbeConfig:
  return probe.ProbeConfig(**dict(cfg.probe))


class Evaluator:
  """The configured downstream metrics of one run's model family on fixed task data."""

  def __init__(self, setup, cfg):
    self.setup, self.cfg = setup, cfg
    self.tasks = task_data(setup.language, _names(cfg.tasks), int(cfg.num_train),
                           int(cfg.num_test), int(cfg.seed))
    self.probe_cfg = probe_config(cfg)
    self.ft_cfg = finetune.FinetuneConfig(**{k: v for k, v in dict(cfg.finetune).items()
                                             if k != "enabled"})
    self._lookup = None

  @property
  def required(self) -> list[str]:
    keys = ["probe_acc"] + (["finetune_acc"] if self.cfg.finetune.enabled else [])
    keys += ["lookup_acc"] if self.cfg.lookup else []
    return [f"{t.name}/{k}" for t in self.tasks for k in keys]

  def lookup(self) -> dict:
    if self._lookup is None:
      width, out = self.setup.model_cfg.seq_len - 2, {}
      for t in self.tasks:
        x_tr = lookup_features(self.setup.language, t.train[0], t.train[1], width)
        x_te = lookup_features(self.setup.language, t.test[0], t.test[1], width)
        r = probe.probe_accuracy(x_tr, t.train[2], x_te, t.test[2], t.num_classes,
                                 seeds=int(self.cfg.seeds), cfg=self.probe_cfg,
                                 seed=int(self.cfg.seed))
        out.update({f"{t.name}/lookup_acc": r["acc"], f"{t.name}/lookup_acc_std": r["acc_std"]})
      self._lookup = out
    return self._lookup

  def __call__(self, params, step: int = 0) -> dict:
    c, s, out = self.cfg, self.setup, {}
    for t in self.tasks:
      feats = [probe.features(s.objective, params, x[0], x[1], kind=c.features, mesh=s.mesh)
               for x in (t.train, t.test)]
      r = probe.probe_accuracy(feats[0], t.train[2], feats[1], t.test[2], t.num_classes,
                               seeds=int(c.seeds), cfg=self.probe_cfg, seed=int(c.seed))
      out.update({f"{t.name}/probe_acc": r["acc"], f"{t.name}/probe_acc_std": r["acc_std"]})
      if c.finetune.enabled:
        out[f"{t.name}/finetune_acc"] = finetune.finetune_accuracy(
            s.objective, params, t.train, t.test, t.num_classes,
            jax.random.key(int(c.seed) + step), mesh=s.mesh, cfg=self.ft_cfg)
    if c.lookup:
      out.update(self.lookup())
    return out


def _names(tasks) -> list[str]:
  if isinstance(tasks, str):
    return [t.strip() for t in tasks.split(",") if t.strip()]
  return list(tasks)


def evaluate_run(workdir: str, cfg, *, steps=None, mesh=None) -> dict[int, dict]:
  """Downstream metrics of every checkpoint of a run (see module docstring)."""
  def make(setup):
    evaluator = Evaluator(setup, cfg)
    logging.info("downstream tasks %s: %d train / %d test sentences",
                 [t.name for t in evaluator.tasks], cfg.num_train, cfg.num_test)
    return evaluator.required, evaluator
  return checkpoint_walk.walk(workdir, "downstream", make, steps=steps,
                              force=cfg.get("force", False), mesh=mesh)
