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
  phase1      empty, or the first phase of a two-phase experiment: sections of
              ``pretrain`` (``targets``, ``optimizer``, ``train``) that phase 1 uses
              instead. Phase 1 is plain pre-training (no adversary) with the run's model,
              data and seed, typically to the optimum; every sweep entry then continues
              from its last checkpoint (``pretrain.init``) with its own recipe, and only
              these phase-2 runs are measured, probed and analysed. Entries whose phase 1
              is identical (same model, data, seed) share one phase-1 run:
              ``phase1[_<entry>]_seed<k>`` in ``phase1_dir`` (default: the workdir;
              two experiments may share one, but not while both are running)
  phase1_seed -1: each pre-training seed has its own phase 1; k >= 0: every run continues
              from the phase 1 of seed k (one converged checkpoint), so that its seed
              varies only phase 2's sentences, masks and (for dropout) noise
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
import json
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


PHASE1_SECTIONS = ("targets", "optimizer", "train")


@dataclasses.dataclass
class Phase1:
  name: str
  config: ml_collections.ConfigDict    # a pretrain config


@dataclasses.dataclass
class Run:
  name: str
  config: ml_collections.ConfigDict    # the experiment config with this run's overrides
  phase1: Phase1 | None = None         # the run it continues from (two-phase experiments)


def phase1_config(config) -> ml_collections.ConfigDict | None:
  """Phase 1 of a run's experiment config: its pretrain section with ``phase1``'s sections
  in place, without adversary or init; None for a one-phase experiment."""
  sections = config.get("phase1") or {}
  if not sections:
    return None
  unknown = sorted(set(sections) - set(PHASE1_SECTIONS))
  if unknown:
    raise ValueError(f"phase1: {unknown} cannot differ between the phases; phase1 may set "
                     f"{list(PHASE1_SECTIONS)} (model and data are the run's own)")
  c = copy.deepcopy(config.pretrain)
  for k in sections:
    c[k] = copy.deepcopy(sections[k])
  if int(config.get("phase1_seed", -1)) >= 0:
    c.seed = int(config.phase1_seed)
  c.adversarial.lam = 0.0
  c.init.update(workdir="", step=-1)
  return c


def _attach_phase1(runs: list[Run]) -> None:
  """Gives each run its phase 1, one shared run per distinct phase-1 config, named
  ``phase1_seed<k>`` when the whole sweep shares one phase-1 recipe, else
  ``phase1_<first entry using it>_seed<k>`` (k: the pre-training seed)."""
  def identity(c):
    d = c.to_dict()
    # Names, and the adversary's inert settings (phase 1 has lam = 0), do not matter.
    for k in ("name", "group", "experiment", "adversarial"):
      d.pop(k, None)
    return json.dumps(d, sort_keys=True, default=str)
  configs = [(r, phase1_config(r.config)) for r in runs]
  configs = [(r, c, identity(c)) for r, c in configs if c is not None]
  firsts: dict[str, Run] = {}
  for r, _, key in configs:
    firsts.setdefault(key, r)
  seeds = {c.seed for _, c, _ in configs}
  shared = len(firsts) == len(seeds)       # one phase-1 recipe for the whole sweep
  for r, c, key in configs:
    first = firsts[key]
    name = ("phase1" if shared else f"phase1_{first.config.pretrain.group}") + f"_seed{c.seed}"
    c.update(name=name, group=name)
    r.phase1 = Phase1(name, c)


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
  _attach_phase1(runs)
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


def phase1_dir(config, workdir: str) -> str:
  """Where an experiment's phase-1 runs live (``phase1_dir``, default its workdir)."""
  return config.get("phase1_dir") or workdir


def run_phase1(run: Run, root: str, *, mesh=None) -> float:
  """Trains (or finishes) ``run``'s phase 1 in ``root`` and points the run at its last
  checkpoint; returns the seconds it took (nothing to do: about the time to check)."""
  if run.phase1 is None:
    return 0.0
  t0 = time.perf_counter()
  p1 = os.path.join(root, run.phase1.name)
  result = trainer.train(run.phase1.config, p1,
                         setup=trainer.build(run.phase1.config, mesh=mesh))
  if result.preempted:
    # Phase 2 must never start from an unfinished phase 1.
    raise RuntimeError(f"phase 1 ({p1}) was preempted at step {result.step}; relaunch the "
                       "same command to finish it and then phase 2")
  run.config.pretrain.init.update(workdir=p1, step=int(result.step))
  return time.perf_counter() - t0


def run_one(run: Run, workdir: str, *, mesh=None, stages=("pretrain", "measure",
                                                            "downstream"),
            phase1_root: str | None = None) -> dict:
  """Pre-trains (phase 1 first, in ``phase1_root``, default next to ``workdir``), measures
  and probes one run; returns seconds per stage."""
  c, times = run.config, {}
  if "pretrain" in stages and run.phase1 is not None:
    root = phase1_root or os.path.dirname(os.path.normpath(workdir))
    times["phase1"] = run_phase1(run, root, mesh=mesh)
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
    timings[run.name] = run_one(run, os.path.join(workdir, run.name), mesh=mesh,
                                phase1_root=phase1_dir(config, workdir))
  paths = {}
  if analyze_after and jax.process_index() == 0:   # one writer of the report
    done = [os.path.join(workdir, r.name) for r in runs
            if os.path.exists(os.path.join(workdir, r.name, "metrics.jsonl"))]
    paths = analyze(config, done, os.path.join(workdir, "report")).paths
  return timings, paths
