"""Downstream accuracy of every checkpoint of a run: linear probes, fine-tuning, lookup table.

For each task of the run's language (PCFG: A, B, C; HMM: state_k; teacher:
class) a fixed labelled set is drawn once (`experiments.wiring.task_data`),
seeded by ``config.seed`` and shared by all tasks and all checkpoints: a pool of
``num_pool`` sentences and a test set of ``num_test`` (the language's
downstream length filter applies); this module gets them as arrays. Probe
seed ``s`` fits on ``num_train`` sentences drawn from the pool without
replacement by ``np.random.default_rng([seed, s])`` (`flatness.transfer.probe.subset_rows`)
and is scored on the whole test set, so two checkpoints see the same draws and
can be compared seed by seed (`flatness.transfer.probe.paired_difference`). Written
under ``downstream/`` at each checkpoint's step:

  <task>/probe_acc               linear probe on the frozen encoder's features
                                 (`flatness.transfer.probe`): mean test accuracy over seeds
  <task>/probe_acc_stderr        its standard error over seeds (sd / sqrt(seeds))
  <task>/probe_acc_lo, _hi       95% Student-t interval over seeds (NaN with one seed)
  <task>/probe_acc/seed<k>       seed k's accuracy, k = 0 .. seeds - 1
  <task>/probe_grad_norm         largest ||grad F|| of any probe solve (convergence
                                 check: below ``probe.tol`` when every solve converged)
  <task>/probe_l2                median over seeds (log scale) of the held-out-chosen l2
  <task>/finetune_acc            full fine-tuning (`flatness.transfer.finetune`) on seed 0's
                                 training subset, if enabled
  <task>/lookup_acc, lookup_acc_stderr, lookup_acc_lo, lookup_acc_hi, lookup_acc/seed<k>
                                 the paper's "lookup table" baseline: the same probes
                                 on the true conditionals p(x_i | x_-i), flattened
                                 [L * V], instead of model features (Sec. 4.3)

Accuracies are fractions in [0, 1]. The interval covers the variation from
redrawing the labelled training subset from the pool; the pool and the test
set are fixed, so it is not an interval for the population accuracy (the test
set's own sampling error, about sqrt(acc (1 - acc) / num_test), is not in it;
it is common to all checkpoints). The lookup baseline does not depend on the
checkpoint; it is computed once per call and written at every new step so
that each row of the metrics carries its reference.
"""
import dataclasses

import jax
import numpy as np
from absl import logging

from flatness.runtime import config_types
from flatness.transfer import finetune
from flatness.transfer import probe


@dataclasses.dataclass
class TaskData:
  name: str
  num_classes: int
  pool: tuple      # (tokens, lengths, labels): the probes' training subsets come from here
  test: tuple      # (tokens, lengths, labels): every probe is scored on all of it


def check_sizes(num_pool: int, num_train: int, num_test: int) -> None:
  """Each seed draws ``num_train`` of the pool without replacement: it must fit."""
  if not 0 < int(num_train) <= int(num_pool) or int(num_test) < 1:
    raise ValueError(f"downstream: need 0 < num_train <= num_pool and num_test >= 1, got "
                     f"num_train={num_train}, num_pool={num_pool}, num_test={num_test}")


@dataclasses.dataclass(frozen=True)
class DownstreamConfig:
  """The ``downstream`` section (`experiments/configs/downstream.py` documents each field)."""
  tasks: str                    # comma-separated; "": every task of the language
  num_pool: int
  num_train: int
  num_test: int
  seeds: int
  seed: int
  features: str
  lookup: bool
  force: bool
  probe: probe.ProbeConfig
  finetune: finetune.FinetuneConfig | None     # None: fine-tuning off

  def __post_init__(self):
    check_sizes(self.num_pool, self.num_train, self.num_test)
    if self.features not in probe.FEATURES:
      raise ValueError(f"downstream.features: unknown {self.features!r}; choose from "
                       f"{probe.FEATURES}")


def downstream_config(section) -> DownstreamConfig:
  """``config.downstream`` typed (``finetune.enabled = False`` becomes ``finetune=None``)."""
  if isinstance(section, DownstreamConfig):
    return section
  fields = dict(section)
  if "tasks" in fields and not isinstance(fields["tasks"], str):   # a sequence of names
    fields["tasks"] = ",".join(fields["tasks"])
  if "probe" in fields:
    fields["probe"] = config_types.from_section(probe.ProbeConfig, fields["probe"],
                                                "downstream.probe")
  if "finetune" in fields:
    ft = fields["finetune"]
    fields["finetune"] = (config_types.from_section(finetune.FinetuneConfig, ft,
                                                    "downstream.finetune", ignore=("enabled",))
                          if ft["enabled"] else None)
  return config_types.from_section(DownstreamConfig, fields, "downstream")


def _metrics(name: str, kind: str, r: dict) -> dict:
  out = {f"{name}/{kind}": r["acc"], f"{name}/{kind}_stderr": r["acc_stderr"],
         f"{name}/{kind}_lo": r["acc_lo"], f"{name}/{kind}_hi": r["acc_hi"]}
  out.update({f"{name}/{kind}/seed{k}": a for k, a in enumerate(r["per_seed"])})
  return out


class Evaluator:
  """The configured downstream metrics of one model family on fixed labelled arrays; a
  checkpoint evaluator (`flatness.runtime.checkpoint_walk`) writing under ``downstream/``.

  ``tasks``: every task's pool and test arrays (one set of sentences for all tasks,
  `experiments.wiring.task_data`); ``lookup_features``: ``(pool, test)`` float32
  ``[n, width * V]``, the true conditionals of those sentences (the lookup-table
  baseline), needed when ``cfg.lookup``.
  """
  prefix = "downstream"

  def __init__(self, objective, cfg, tasks: list[TaskData], *, mesh, lookup_features=None):
    cfg = downstream_config(cfg)
    self.objective, self.cfg, self.tasks, self.mesh = objective, cfg, tasks, mesh
    if cfg.lookup and lookup_features is None:
      raise ValueError("downstream.lookup needs the true conditionals of the task sentences "
                       "(lookup_features)")
    self.lookup_features = lookup_features
    self._lookup = None
    self.required = self._required()

  def _required(self) -> list[str]:
    # probe_acc_lo: checkpoints evaluated before seeds redrew the data lack it: redo them.
    keys = ["probe_acc", "probe_acc_lo"] + (["finetune_acc"] if self.cfg.finetune else [])
    keys += ["lookup_acc", "lookup_acc_lo"] if self.cfg.lookup else []
    return [f"{t.name}/{k}" for t in self.tasks for k in keys]

  def _probe(self, x_pool, x_test, t: TaskData) -> dict:
    c = self.cfg
    return probe.probe_accuracy(x_pool, t.pool[2], x_test, t.test[2], t.num_classes,
                                seeds=c.seeds, num_train=c.num_train, cfg=c.probe,
                                seed=c.seed)

  def _sentences(self):
    # task_data gives every task the same pool and test sentences: features once for all.
    t = self.tasks[0]
    return t.pool[:2], t.test[:2]

  def lookup(self) -> dict:
    if self._lookup is None:
      x, out = self.lookup_features, {}
      for t in self.tasks:
        r = self._probe(x[0], x[1], t)
        logging.info("lookup %s: l2 %s, iterations %s, gradient norm %.2g", t.name, r["l2"],
                     r["iters"], r["grad_norm"])
        out.update(_metrics(t.name, "lookup_acc", r))
      self._lookup = out
    return self._lookup

  def __call__(self, params, step: int = 0) -> dict:
    c, out = self.cfg, {}
    x = [probe.features(self.objective, params, tokens, lengths, kind=c.features, mesh=self.mesh)
         for tokens, lengths in self._sentences()]
    for t in self.tasks:
      r = self._probe(x[0], x[1], t)
      out.update(_metrics(t.name, "probe_acc", r))
      out[f"{t.name}/probe_grad_norm"] = r["grad_norm"]
      # On the log scale of the grid: an even number of seeds gives a geometric mean of two.
      out[f"{t.name}/probe_l2"] = float(np.exp(np.median(np.log(r["l2"]))))
      logging.info("probe %s step %d: l2 %s, iterations %s, gradient norm %.2g", t.name, step,
                   r["l2"], r["iters"], r["grad_norm"])
      if c.finetune is not None:
        # Seed 0's training subset: the labelled sentences probe seed 0 fits on.
        rows = probe.subset_rows(len(t.pool[2]), c.num_train, c.seed, 0)
        out[f"{t.name}/finetune_acc"] = finetune.finetune_accuracy(
            self.objective, params, tuple(a[rows] for a in t.pool), t.test, t.num_classes,
            jax.random.key(c.seed + step), mesh=self.mesh, cfg=c.finetune)
    if c.lookup:
      out.update(self.lookup())
    return out
