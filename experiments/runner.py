"""Runs an experiment's sweep: pre-training, one evaluation pass, then the analysis.

`run_experiment` runs every run of the sweep (`experiments.sweep.expand`), or
the named ones, in ``<workdir>/<name>``: pre-training (`experiments.wiring.train`,
phase 1 first in a two-phase experiment), then one pass over the kept checkpoints
with the evaluators of ``config.evals`` (`experiments.wiring.evaluate_run`: loss gap,
curvature, probes); each stage resumes or skips what is done, so rerunning the
same command continues an interrupted experiment. Finally
`flatness.analysis.correlation` and `flatness.analysis.report` (and, for the mechanism experiment,
`flatness.analysis.drift_report`) write ``<workdir>/report``.
"""
import dataclasses
import os
import time
from typing import Callable

import jax
from absl import logging

from experiments import wiring
from experiments.sweep import Run, expand, select
from flatness.analysis import correlation as analysis
from flatness.analysis import drift_report
from flatness.analysis import report
from flatness.runtime import checkpointing


def evaluate_when(config) -> Callable[[int, dict], bool] | None:
  """Which checkpoints curvature and probes visit: all (None), or with ``analysis.evaluate =
  "within_tolerance"`` those whose ``eval/loss_gap`` is at most the tolerance: the only
  ones the correlations use, and the costly part of a run. The loss evaluator runs first
  in the pass, so every checkpoint has its gap by then."""
  mode = config.analysis.evaluate
  if mode not in ("all", "within_tolerance"):
    raise ValueError(f"analysis.evaluate: {mode!r}; choose 'all' or 'within_tolerance'")
  return wiring.within(tolerance(config)) if mode == "within_tolerance" else None


def _check_evals(config, when) -> None:
  """Refuses settings whose combination would silently evaluate nothing."""
  evals = list(config.evals)
  if when is None:
    return
  gated = [e for e in evals if e in ("curvature", "downstream")]
  if "loss" not in evals or any(evals.index(e) < evals.index("loss") for e in gated):
    raise ValueError(f"evals={tuple(evals)}: analysis.evaluate='within_tolerance' reads each "
                     "checkpoint's loss gap, so 'loss' must come before curvature and "
                     "downstream")
  if config.analysis.probe == "ends":
    raise ValueError("analysis.probe='ends' with analysis.evaluate='within_tolerance': the "
                     "ends are the first and last kept checkpoints, which need not be within "
                     "the tolerance; use evaluate='all' or probe='all'")


def probe_steps(config, workdir: str, *, probe_start: bool) -> list[int] | None:
  """Checkpoint steps the probes visit: all (None) with ``analysis.probe = "all"``; with
  ``"ends"`` only the last kept checkpoint, and the first when ``probe_start`` (a run
  whose start was probed in another run of the sweep leaves it out)."""
  mode = config.analysis.probe
  if mode not in ("all", "ends"):
    raise ValueError(f"analysis.probe: {mode!r}; choose 'all' or 'ends'")
  if mode == "all":
    return None
  ckpt = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"))
  try:
    available = ckpt.all_steps()
  finally:
    ckpt.close()
  if not available:
    return []
  return sorted({available[-1]} | ({available[0]} if probe_start else set()))


def phase1_dir(config, workdir: str) -> str:
  """Where an experiment's phase-1 runs live (``phase1_dir``, default its workdir)."""
  return config.phase1_dir or workdir


def run_phase1(run: Run, root: str, *, mesh=None) -> float:
  """Trains (or finishes) ``run``'s phase 1 in ``root`` and points the run at its last
  checkpoint; returns the seconds it took (nothing to do: about the time to check)."""
  if run.phase1 is None:
    return 0.0
  t0 = time.perf_counter()
  p1 = os.path.join(root, run.phase1.name)
  result = wiring.train(run.phase1.config, p1, mesh=mesh)
  if result.preempted:
    # Phase 2 must never start from an unfinished phase 1.
    raise RuntimeError(f"phase 1 ({p1}) was preempted at step {result.step}; relaunch the "
                       "same command to finish it and then phase 2")
  run.config.pretrain.init.update(workdir=p1, step=int(result.step))
  return time.perf_counter() - t0


def run_one(run: Run, workdir: str, *, mesh=None, stages=("pretrain", "evaluate"),
            phase1_root: str | None = None, probe_start: bool = True) -> dict:
  """Pre-trains (phase 1 first, in ``phase1_root``, default next to ``workdir``) and
  evaluates one run: one pass over its checkpoints with the evaluators of ``config.evals``
  (``probe_start``: see `probe_steps`); returns seconds per stage."""
  c, times = run.config, {}
  if "pretrain" in stages and run.phase1 is not None:
    root = phase1_root or os.path.dirname(os.path.normpath(workdir))
    times["phase1"] = run_phase1(run, root, mesh=mesh)
  if "pretrain" in stages:
    t0 = time.perf_counter()
    wiring.train(c.pretrain, workdir, mesh=mesh)
    times["pretrain"] = time.perf_counter() - t0
  if "evaluate" in stages:
    t0 = time.perf_counter()
    when = evaluate_when(c)
    _check_evals(c, when)
    options = {"curvature": dict(when=when, force=bool(c.measure.force)),
               "downstream": dict(when=when, force=bool(c.downstream.force),
                                  steps=probe_steps(c, workdir, probe_start=probe_start))}
    wiring.evaluate_run(workdir, c, list(c.evals), mesh=mesh, options=options)
    times["evaluate"] = time.perf_counter() - t0
  logging.info("run %s: %s", run.name, ", ".join(f"{k} {v:.0f}s" for k, v in times.items()))
  return times


def tolerance(config) -> float | None:
  """The loss-gap tolerance of ``config.analysis`` (None, from a negative value: all rows)."""
  tol = config.analysis.tolerance
  return None if tol is None or tol < 0 else float(tol)


@dataclasses.dataclass
class Analysis:
  rows: list[dict]                          # one per (run, checkpoint)
  correlations: list[analysis.Correlation]
  paths: dict[str, str]                     # report files, by name


def analyze_runs(workdirs, out_dir: str, *, tolerance: float | None, num_bootstrap: int = 1000,
                 drift_window: float = 0.0) -> Analysis:
  """Gathers the runs, correlates flatness with accuracy, writes the report (and, with a
  ``drift_window`` > 0, the mechanism's drift report); `experiments.analyze` runs this."""
  rows = analysis.gather(workdirs)
  corr = analysis.correlate(rows, tolerance=tolerance, num_bootstrap=num_bootstrap)
  paths = report.write(rows, corr, out_dir, tolerance=tolerance)
  if drift_window > 0:
    paths.update(drift_report.write(workdirs, out_dir, tolerance=tolerance, window=drift_window,
                                    rows=rows))
  return Analysis(rows, corr, paths)


def analyze(config, workdirs, out_dir: str) -> Analysis:
  """`analyze_runs` with the settings of ``config.analysis``."""
  return analyze_runs(workdirs, out_dir, tolerance=tolerance(config),
                      num_bootstrap=int(config.analysis.num_bootstrap),
                      drift_window=float(config.analysis.drift_window))


def run_experiment(config, workdir: str, *, only=(), mesh=None, analyze_after=True):
  """Runs the sweep (or the runs named in ``only``) and the analysis of all done runs."""
  runs = expand(config)
  timings, started = {}, set()
  for run in select(runs, only):
    # Runs continuing from one phase-1 run start from the same parameters: probed once.
    start = run.phase1.name if run.phase1 is not None else run.name
    timings[run.name] = run_one(run, os.path.join(workdir, run.name), mesh=mesh,
                                phase1_root=phase1_dir(config, workdir),
                                probe_start=start not in started)
    started.add(start)
  paths = {}
  if analyze_after and jax.process_index() == 0:   # one writer of the report
    done = [os.path.join(workdir, r.name) for r in runs
            if os.path.exists(os.path.join(workdir, r.name, "metrics.jsonl"))]
    paths = analyze(config, done, os.path.join(workdir, "report")).paths
  return timings, paths
