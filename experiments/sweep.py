"""A sweep: an experiment config expanded into its runs (no JAX, for launchers too).

An experiment config (``experiments/configs/{continue_training,model_size,
algorithm,mechanism}.py``) holds four sections and a sweep:

  name        the experiment's name (rows of the analysis are grouped by it)
  pretrain    a full `experiments/configs/pretrain.py` config: the shared recipe
  measure     a `experiments/configs/measure.py` config (curvature metrics)
  downstream  a `experiments/configs/downstream.py` config (probes, lookup baseline)
  evals       the evaluators of each kept checkpoint, in order, in one pass with the params
              restored once (`experiments.wiring.EVALUATORS`: loss, curvature, downstream)
  analysis    ``tolerance``: loss gap (nats) under which checkpoints are correlated;
              ``evaluate``: ``all`` checkpoints are measured and probed, or only those
              ``within_tolerance`` (the ones the correlations use; ``loss`` must come
              before them in ``evals``); ``probe``: ``all`` of those probed, or the
              ``ends`` (each run's last kept checkpoint, and its first unless an earlier
              run started from the same phase-1 checkpoint; refused with
              ``within_tolerance``, whose ends need not be within it); ``drift_window``
              (mechanism only): steps over which `flatness.analysis.drift_report` fits the initial
              drift rates
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
  measure_seed_per_run  True: seed k also measures curvature on its own evaluation
              draws (``measure.seed + k``), so an across-seed spread covers them

`expand` turns a config into one `Run` per sweep entry and seed, each with its
own config and, in a two-phase experiment, the shared phase-1 run it continues
from; `select` picks runs by name. `experiments.runner` runs them.
"""
import copy
import dataclasses
import json

import ml_collections


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
      if c.get("measure_seed_per_run", False):
        r.measure.seed = int(c.measure.seed) + k
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
