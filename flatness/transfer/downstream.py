"""Downstream accuracy of every checkpoint of a run: linear probes, fine-tuning, lookup table.

For each task of the run's language (PCFG: A, B, C; HMM: state_k; teacher:
class) a fixed labelled set is drawn once, seeded by ``config.seed`` and shared
by all tasks and all checkpoints: a pool of ``num_pool`` sentences and a test
set of ``num_test`` (the language's downstream length filter applies). Probe
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

from flatness.model import tokens as tok
from flatness.runtime import checkpoint_walk
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


def task_data(language, tasks, num_pool: int, num_test: int, seed: int) -> list[TaskData]:
  """Labelled pool and test sentences for ``tasks`` (all of the language's when empty).

  One draw of ``num_pool + num_test`` sentences (a function of ``seed`` only)
  serves every task; the arrays are shared between the tasks.
  """
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
  sents = sample(np.random.default_rng([seed, 15485863]), num_pool + num_test)
  pool = (sents.tokens[:num_pool], sents.lengths[:num_pool])
  test = (sents.tokens[num_pool:], sents.lengths[num_pool:])
  out = []
  for name in names:
    labels = np.asarray(language.task_labels(name, sents), np.int32)
    out.append(TaskData(name, known[name].num_classes, pool + (labels[:num_pool],),
                        test + (labels[num_pool:],)))
  return out


def lookup_features(language, tokens, lengths, width: int) -> np.ndarray:
  """float32 [n, width * V]: the true single-masked conditionals, zero past each length."""
  cond = np.asarray(language.conditionals(tokens[:, :width], np.minimum(lengths, width)),
                    np.float32)
  cond = np.pad(cond, ((0, 0), (0, width - cond.shape[1]), (0, 0)))
  return cond.reshape(len(cond), -1)


def probe_config(cfg) -> probe.ProbeConfig:
  fields = {f.name for f in dataclasses.fields(probe.ProbeConfig)}
  unknown = sorted(set(cfg.probe) - fields)
  if unknown:
    raise ValueError(f"downstream.probe: {unknown} are not fields of "
                     f"flatness.transfer.probe.ProbeConfig ({sorted(fields)}); the probe is "
                     "solved to convergence, not trained for epochs")
  return probe.ProbeConfig(**dict(cfg.probe))


def _metrics(name: str, kind: str, r: dict) -> dict:
  out = {f"{name}/{kind}": r["acc"], f"{name}/{kind}_stderr": r["acc_stderr"],
         f"{name}/{kind}_lo": r["acc_lo"], f"{name}/{kind}_hi": r["acc_hi"]}
  out.update({f"{name}/{kind}/seed{k}": a for k, a in enumerate(r["per_seed"])})
  return out


class Evaluator:
  """The configured downstream metrics of one run's model family on fixed task data."""

  def __init__(self, setup, cfg):
    self.setup, self.cfg = setup, cfg
    check_sizes(cfg.num_pool, cfg.num_train, cfg.num_test)
    self.tasks = task_data(setup.language, _names(cfg.tasks), int(cfg.num_pool),
                           int(cfg.num_test), int(cfg.seed))
    self.probe_cfg = probe_config(cfg)
    self.ft_cfg = finetune.FinetuneConfig(**{k: v for k, v in dict(cfg.finetune).items()
                                             if k != "enabled"})
    self._lookup = None

  @property
  def required(self) -> list[str]:
    # probe_acc_lo: checkpoints evaluated before seeds redrew the data lack it: redo them.
    keys = ["probe_acc", "probe_acc_lo"] + (["finetune_acc"] if self.cfg.finetune.enabled else [])
    keys += ["lookup_acc", "lookup_acc_lo"] if self.cfg.lookup else []
    return [f"{t.name}/{k}" for t in self.tasks for k in keys]

  def _probe(self, x_pool, x_test, t: TaskData) -> dict:
    c = self.cfg
    return probe.probe_accuracy(x_pool, t.pool[2], x_test, t.test[2], t.num_classes,
                                seeds=int(c.seeds), num_train=int(c.num_train),
                                cfg=self.probe_cfg, seed=int(c.seed))

  def _sentences(self):
    # task_data gives every task the same pool and test sentences: features once for all.
    t = self.tasks[0]
    return t.pool[:2], t.test[:2]

  def lookup(self) -> dict:
    if self._lookup is None:
      width, out = tok.max_words(self.setup.model_cfg.seq_len), {}
      x = [lookup_features(self.setup.language, tokens, lengths, width)
           for tokens, lengths in self._sentences()]
      for t in self.tasks:
        r = self._probe(x[0], x[1], t)
        logging.info("lookup %s: l2 %s, iterations %s, gradient norm %.2g", t.name, r["l2"],
                     r["iters"], r["grad_norm"])
        out.update(_metrics(t.name, "lookup_acc", r))
      self._lookup = out
    return self._lookup

  def __call__(self, params, step: int = 0) -> dict:
    c, s, out = self.cfg, self.setup, {}
    x = [probe.features(s.objective, params, tokens, lengths, kind=c.features, mesh=s.mesh)
         for tokens, lengths in self._sentences()]
    for t in self.tasks:
      r = self._probe(x[0], x[1], t)
      out.update(_metrics(t.name, "probe_acc", r))
      out[f"{t.name}/probe_grad_norm"] = r["grad_norm"]
      # On the log scale of the grid: an even number of seeds gives a geometric mean of two.
      out[f"{t.name}/probe_l2"] = float(np.exp(np.median(np.log(r["l2"]))))
      logging.info("probe %s step %d: l2 %s, iterations %s, gradient norm %.2g", t.name, step,
                   r["l2"], r["iters"], r["grad_norm"])
      if c.finetune.enabled:
        # Seed 0's training subset: the labelled sentences probe seed 0 fits on.
        rows = probe.subset_rows(len(t.pool[2]), int(c.num_train), int(c.seed), 0)
        out[f"{t.name}/finetune_acc"] = finetune.finetune_accuracy(
            s.objective, params, tuple(a[rows] for a in t.pool), t.test, t.num_classes,
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
    logging.info("downstream tasks %s: %d of a pool of %d sentences per seed, %d seeds, %d "
                 "test sentences", [t.name for t in evaluator.tasks], cfg.num_train,
                 cfg.num_pool, cfg.seeds, cfg.num_test)
    return evaluator.required, evaluator
  return checkpoint_walk.walk(workdir, "downstream", make, steps=steps,
                              force=cfg.get("force", False), mesh=mesh)
