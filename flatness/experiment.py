"""An experiment: a sweep of pre-training runs, each measured and probed, then analysed.

An experiment config (``experiments/configs/{continue_training,model_size,
algorithm}.py``) holds four sections and a sweep:

  name        the experiment's name (rows of the analysis are grouped by it)
  pretrain    a full `experiments/configs/pretrain.py` config: the shared recipe
  measure     a `experiments/configs/measure.py` config (curvature metrics)
  downstream  a `experiments/configs/downstream.py` config (probes, lookup baseline)
  analysis    ``tolerance``: loss gap (nats) under which checkpoints are correlated;
              ``evaluate``: ``all`` checkpoints are measured and probed, or only those
              ``within_tolerance`` (the ones the correlations use)
  sweep       a tuple of dicts, one per recipe: ``name`` plus dotted overrides of the
              sections above, e.g. ``{"name": "sgd", "pretrain.optimizer.name": "sgd"}``
  seeds       pre-training seeds per recipe (default 1). With ``seeds = N > 1`` each
              recipe runs N times as ``<name>_seed<k>`` with ``pretrain.seed = k``
              (model init, masks, dropout and the sampled training sentences; the
              language itself, ``pretrain.data.seed``, stays), and the analysis reports
              across-seed intervals and bootstraps over runs

`run_experiment` runs every run of the sweep (or the named ones) in
``<workdir>/<name>``: pre-training (`flatness.trainer`), then every checkpoint
through `flatness.measure` and `flatness.downstream`; each stage resumes or
skips what is done, so rerunning the same command continues an interrupted
experiment. Finally `flatness.analysis` and `flatness.report` write
``<workdir>/report``.
"""
import copy
import dataclasses
import os
import time

import jax
import ml_collections
from absl import logging

from flatness import analysis
from flatness import downstream
from flatness import measure
from flatness import metric_writers
from flatness import report
from flatness import trainer


@dataclasses.dataclass
class Run:
  name: str
  config: ml_collections.ConfigDict    # the experiment config with this run's overrides


def expand(config) -> list[Run]:
  """One `Run` per sweep entry and seed (the base config alone when the sweep is empty)."""
  entries = list(config.get("sweep") or ()) or [dict(name="base")]
  names = [e.get("name") for e in entries]
  if None in names or len(set(names)) != len(names):
    raise ValueError(f"sweep: every entry needs a distinct 'name'; got {names}")
  seeds = int(config.get("seeds", 1))
  if seeds < 1:
    raise ValueError(f"seeds must be a positive number of pre-training seeds, got {seeds}")
  runs = []
  for entry in entries:
    c = copy.deepcopy(config)
    with c.unlocked():
      del c["sweep"]
    overrides = {k: v for k, v in dict(entry).items() if k != "name"}
    for key in overrides:
      _check_key(c, key)
    c.update_from_flattened_dict(overrides)
    c.pretrain.experiment = config.name
    for k in range(seeds):
      r = copy.deepcopy(c)
      name = entry["name"] if seeds == 1 else f"{entry['name']}_seed{k}"
      r.pretrain.update(name=name, group=entry["name"], seed=int(c.pretrain.seed) + k)
      runs.append(Run(name, r))
  return runs


def _check_key(c, dotted: str):
  node = c
  for part in dotted.split("."):
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      raise ValueError(f"sweep: override {dotted!r} names no config field")
    node = node[part]


def select(runs: list[Run], only) -> list[Run]:
  if not only:
    return runs
  known = {r.name for r in runs}
  unknown = [n for n in only if n not in known]
  if unknown:
    raise ValueError(f"--runs: {unknown} are not in the sweep; it has {sorted(known)}")
  return [r for r in runs if r.name in set(only)]


def steps_to_evaluate(config, workdir: str) -> list[int] | None:
  """Checkpoint steps that measurement and probes visit: None (all of them), or with
  ``analysis.evaluate = "within_tolerance"`` only those whose ``eval/loss_gap`` is at most
  the tolerance: the only ones the correlations use, and the costly part of a run."""
  mode = config.analysis.get("evaluate", "all")
  if mode not in ("all", "within_tolerance"):
    raise ValueError(f"analysis.evaluate: {mode!r}; choose 'all' or 'within_tolerance'")
  tol = tolerance(config)
  if mode == "all" or tol is None:
    return None
  path = os.path.join(workdir, metric_writers.JSONL)
  gaps = {int(r["step"]): r["eval/loss_gap"] for r in metric_writers.read_jsonl(path)
          if "eval/loss_gap" in r}
  return sorted(s for s, g in gaps.items() if g <= tol)


def run_one(run: Run, workdir: str, *, mesh=None, stages=("pretrain", "measure",
                                                            "downstream")) -> dict:
  """Pre-trains, measures and probes one run; returns seconds per stage."""
  c, times = run.config, {}
  if "pretrain" in stages:
    t0 = time.perf_counter()
    trainer.train(c.pretrain, workdir, setup=trainer.build(c.pretrain, mesh=mesh))
    times["pretrain"] = time.perf_counter() - t0
  steps = None
  if {"measure", "downstream"} & set(stages):
    steps = steps_to_evaluate(c, workdir)
    if steps == []:
      logging.warning("run %s: no checkpoint within the loss-gap tolerance %s; nothing to "
                      "measure or probe", run.name, tolerance(c))
      return times
  if "measure" in stages:
    t0 = time.perf_counter()
    measure.measure_run(workdir, c.measure, steps=steps, mesh=mesh)
    times["measure"] = time.perf_counter() - t0
  if "downstream" in stages:
    t0 = time.perf_counter()
    downstream.evaluate_run(workdir, c.downstream, steps=steps, mesh=mesh)
    times["downstream"] = time.perf_counter() - t0
  logging.info("run %s: %s", run.name, ", ".join(f"{k} {v:.0f}s" for k, v in times.items()))
  return times


def tolerance(config) -> float | None:
  """The loss-gap tolerance of ``config.analysis`` (None, from a negative value: all rows)."""
  tol = config.analysis.get("tolerance")
  return None if tol is None or tol < 0 else float(tol)


@dataclasses.dataclass
class Analysis:
  rows: list[dict]                          # one per (run, checkpoint)
  correlations: list[analysis.Correlation]
  paths: dict[str, str]                     # report files, by name


def analyze(config, workdirs, out_dir: str) -> Analysis:
  """Gathers the runs, correlates flatness with accuracy, writes the report."""
  tol = tolerance(config)
  rows = analysis.gather(workdirs)
  corr = analysis.correlate(rows, tolerance=tol,
                            num_bootstrap=int(config.analysis.get("num_bootstrap", 1000)))
  return Analysis(rows, corr, report.write(rows, corr, out_dir, tolerance=tol))


def run_experiment(config, workdir: str, *, only=(), mesh=None, analyze_after=True):
  """Runs the sweep (or the runs named in ``only``) and the analysis of all done runs."""
  runs = expand(config)
  timings = {}
  for run in select(runs, only):
    timings[run.name] = run_one(run, os.path.join(workdir, run.name), mesh=mesh)
  paths = {}
  if analyze_after and jax.process_index() == 0:   # one writer of the report
    done = [os.path.join(workdir, r.name) for r in runs
            if os.path.exists(os.path.join(workdir, r.name, "metrics.jsonl"))]
    paths = analyze(config, done, os.path.join(workdir, "report")).paths
  return timings, paths
