"""The pre-training loop: ``train(config, workdir, setup=, source=, validation=)``.

Takes what `experiments.wiring` builds from a config (the model, objective and
optimizer in a `Setup`, a batch source, a validation set), creates or restores
the train state (or, with ``config.init.workdir``, starts from another run's
checkpoint: phase 2 of a two-phase experiment), and runs the jitted
`train_step` over the batches, writing metrics (`flatness.runtime.metric_writers`)
and checkpoints (`flatness.runtime.checkpointing`).
Rerunning with the same workdir resumes exactly: the checkpoint holds the state,
the base PRNG key (step ``s`` uses ``fold_in(key, s)``), the index of the
next batch and the run's config, against which a resumption is checked (a
changed language, model or optimizer type is refused). A damaged newest
checkpoint falls back to the newest one that reads (`flatness.runtime.checkpointing`).

The run's record: ``config.json`` is the config it started with, written once
and never rewritten; ``run_log.jsonl`` gets a line per start, resumption (with
the config fields it changed, e.g. ``train.num_steps``) and failure.
"""
import contextlib
import dataclasses
import json
import math
import os
import time
from typing import Any, Callable, Iterator

import jax
import ml_collections
import numpy as np
from absl import logging

from flatness.model.objectives import Objective
from flatness.model.transformer import TransformerConfig, init_params, param_count
from flatness.runtime import checkpointing
from flatness.runtime import metric_writers
from flatness.runtime import sharding
from flatness.training import evaluation
from flatness.training import input_pipeline
from flatness.training import preemption
from flatness.training import run_config
from flatness.training import train_step as train_step_lib

CONFIG_JSON = "config.json"
RUN_INFO = "run_info.json"
RUN_LOG = "run_log.jsonl"


class NonFiniteLossError(RuntimeError):
  """The loss or gradient became NaN/inf; the last good checkpoint is left intact."""


@dataclasses.dataclass
class Setup:
  """The model, its objective, the optimizer and the mesh: what training and evaluation
  share (`experiments.wiring.setup` builds it from a config)."""
  model_cfg: TransformerConfig
  objective: Objective
  mesh: Any
  tx: Any
  schedule: Any
  targets: Callable | None = None    # the step's exact targets (None: the sampled words)

  def abstract_params(self):
    """Shapes, dtypes and shardings of the params, without allocating them."""
    shapes = jax.eval_shape(lambda k: init_params(self.model_cfg, k), jax.random.key(0))
    rep = sharding.replicated(self.mesh)
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=rep), shapes)

  def abstract_state(self):
    """Shapes, dtypes and shardings of the train state, without allocating it."""
    shapes = jax.eval_shape(self._init, jax.random.key(0))
    rep = sharding.replicated(self.mesh)
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=rep), shapes)

  def create_state(self, rng) -> train_step_lib.TrainState:
    return jax.jit(self._init, out_shardings=sharding.replicated(self.mesh))(rng)

  def state_from(self, params) -> train_step_lib.TrainState:
    """A fresh train state (step 0, new optimizer state) around given params."""
    return jax.jit(lambda p: train_step_lib.init_state(p, self.tx),
                   out_shardings=sharding.replicated(self.mesh))(params)

  def _init(self, rng):
    return train_step_lib.init_state(init_params(self.model_cfg, rng), self.tx)


def load_run_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a training run in ``workdir`` was started with."""
  path = os.path.join(workdir, CONFIG_JSON)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{workdir} has no {CONFIG_JSON}: not a training run")
  with open(path) as f:
    return ml_collections.ConfigDict(json.load(f))


def restore_params(workdir: str, step: int, abstract_params):
  """Params of checkpoint ``step`` (-1: the latest) of the run in ``workdir``, laid out as
  ``abstract_params``, and the checkpoint's metadata; the start of phase 2 of a two-phase
  run (its optimizer state is not read: phase 2 may use another optimizer)."""
  ckpt = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"))
  try:
    steps = ckpt.all_steps()
    if not steps:
      raise FileNotFoundError(f"init.workdir={workdir} has no checkpoint yet; train that run "
                              "(phase 1) first")
    step = steps[-1] if step < 0 else step
    if step not in steps:
      raise FileNotFoundError(
          f"init.workdir={workdir} has no checkpoint at step {step} (it has {steps}); "
          "train that run first or set init.step to one of its steps")
    meta = ckpt.read_meta(step)
    try:
      params = ckpt.restore_params(step, abstract_params)
    except checkpointing.IncompatibleCheckpointError as e:
      raise checkpointing.IncompatibleCheckpointError(
          f"init.workdir={workdir}: its model differs from this config's model; a two-phase "
          f"run must keep the model of the run it starts from ({e})") from e
  finally:
    ckpt.close()
  return params, dict(meta, step=step)


@dataclasses.dataclass
class TrainResult:
  state: train_step_lib.TrainState
  step: int
  eval_metrics: dict
  preempted: bool = False


def _config_dict(config) -> dict:
  """``config`` as JSON stores it (tuples become lists): what checkpoints and config.json hold."""
  return json.loads(json.dumps(config.to_dict(), default=str))


def _saved_config(workdir: str, meta: dict) -> dict | None:
  """The config of the run that wrote a checkpoint: its own copy (checkpoints hold one),
  else, for checkpoints written before they did, the run's config.json."""
  if "config" in meta:
    return meta["config"]
  path = os.path.join(workdir, CONFIG_JSON)
  if os.path.exists(path):
    with open(path) as f:
      return json.load(f)
  return None


def _check_resume_compatible(workdir: str, saved: dict | None, current: dict) -> None:
  if saved is None:
    raise checkpointing.IncompatibleCheckpointError(
        f"workdir {workdir} holds checkpoints that record no config and has no {CONFIG_JSON}: "
        "nothing says which language and model they belong to. Use a new --workdir.")
  fields = run_config.incompatible_fields(saved, current)
  if fields:
    raise checkpointing.IncompatibleCheckpointError(
        f"workdir {workdir} holds a checkpoint of a different run: config field(s) "
        + ", ".join(f"{f} (saved {_get(saved, f)!r}, now {_get(current, f)!r})"
                    for f in fields[:6])
        + " differ. Use a new --workdir, or restore the saved values.")


def _get(d, dotted):
  for part in dotted.split("."):
    if not isinstance(d, dict) or part not in d:
      return None
    d = d[part]
  return d


def _changes(saved: dict, current: dict, prefix="") -> dict:
  """{dotted field: [saved, current]} of every field that differs."""
  out = {}
  for k in sorted(set(saved) | set(current)):
    a, b = saved.get(k), current.get(k)
    if isinstance(a, dict) and isinstance(b, dict):
      out.update(_changes(a, b, f"{prefix}{k}."))
    elif a != b:
      out[f"{prefix}{k}"] = [a, b]
  return out


def _log_event(workdir: str, event: str, step: int, **fields) -> None:
  """Appends one line to the run's log (``run_log.jsonl``): starts, resumptions with the
  config fields they changed, failures. config.json is never rewritten; this is the record
  of what happened to the run since."""
  if jax.process_index() == 0:
    record = dict(time=time.strftime("%Y-%m-%dT%H:%M:%S%z"), event=event, step=int(step), **fields)
    with open(os.path.join(workdir, RUN_LOG), "a") as f:
      f.write(json.dumps(record, default=str) + "\n")


def _write_config(workdir: str, config: dict, num_params: int) -> None:
  """config.json (the config the run started with), and run_info.json (what
  `flatness.analysis.correlation` needs to group runs)."""
  if jax.process_index() == 0:
    with open(os.path.join(workdir, CONFIG_JSON), "w") as f:
      json.dump(config, f, indent=2, sort_keys=True, default=str)
    # config is the JSON record (a dict): runs written before a field existed lack it.
    name = config.get("name") or os.path.basename(os.path.normpath(workdir))
    info = dict(name=name, group=config.get("group") or name, seed=int(config["seed"]),
                experiment=config.get("experiment", ""), num_params=num_params,
                language=config["data"]["language"])
    with open(os.path.join(workdir, RUN_INFO), "w") as f:
      json.dump(info, f, indent=2)


def train(config, workdir: str, *, setup: Setup, source: input_pipeline.BatchSource,
          validation: evaluation.ValidationSet, loss_transform=None,
          stop_after: int | None = None) -> TrainResult:
  """Pre-trains per ``config``; resumes if ``workdir`` holds a checkpoint.

  Args:
    config: experiment config (see experiments/configs/pretrain.py): its ``train``,
      ``seed`` and ``init`` sections drive the loop; all of it is recorded.
    workdir: run directory: checkpoints, config.json, metrics.jsonl, tensorboard/.
    setup: model, objective, optimizer and mesh (`experiments.wiring.setup`).
    source: training batches, resumable by position.
    validation: evaluation set (sentences with their exact conditionals).
    loss_transform: passed to `make_train_step` (e.g. the adversarial algorithm of
      `flatness.training.adversarial`); None: plain pre-training.
    stop_after: stop (with a checkpoint) once this many steps are done in total,
      even if ``config.train.num_steps`` is larger; a later call continues.
  """
  t = run_config.train_config(config.train)
  os.makedirs(workdir, exist_ok=True)
  ckpt = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"),
                                    max_to_keep=t.max_to_keep, keep_every=t.keep_every)
  writer = metric_writers.MetricWriter(workdir)
  failed = False
  try:
    return _train(config, t, workdir, setup, ckpt, writer, source, validation, loss_transform,
                  stop_after)
  except Exception as e:
    failed = True
    with contextlib.suppress(Exception):   # the log is a record, never a second failure
      _log_event(workdir, "failed", ckpt.latest_step() or 0, error=f"{type(e).__name__}: {e}")
    raise
  finally:
    try:
      ckpt.close()
    except Exception:  # pylint: disable=broad-except
      if not failed:     # else the error in flight is the one to report, not its echo
        raise
    finally:
      writer.close()


@dataclasses.dataclass
class _Start:
  """Where a run starts: its own latest checkpoint, another run's (phase 2), or fresh."""
  state: train_step_lib.TrainState
  step: int
  position: int                      # batches of the data stream consumed so far
  base_key: Any                      # the run's key; step s uses fold_in(base_key, s)
  from_init: bool = False            # a phase 2 starting from another run's checkpoint
  resumed: bool = False              # from this run's own checkpoint


def _start(config, workdir: str, setup: Setup, ckpt: checkpointing.Checkpointer,
           current: dict) -> _Start:
  """Resumes from the newest readable checkpoint (checked against the config), else
  starts from ``config.init`` or a fresh init; records the start in the run's files."""
  base_key = jax.random.key(int(config.seed))
  restored = ckpt.restore_latest(
      setup.abstract_state(),
      check_meta=lambda meta: _check_resume_compatible(
          workdir, _saved_config(workdir, meta), current))
  if restored is not None:
    start = int(restored.meta["step"])
    saved = _saved_config(workdir, restored.meta)
    if not os.path.exists(os.path.join(workdir, CONFIG_JSON)):
      _write_config(workdir, saved, param_count(restored.state.params))   # the record, rebuilt
    if start < int(config.train.num_steps):   # a finished run relaunched logs nothing
      _log_event(workdir, "resume", start, changed=_changes(saved, current))
    logging.info("Resumed from step %d of %s", start, workdir)
    return _Start(restored.state, start, int(restored.meta["data_position"]),
                  jax.random.wrap_key_data(np.asarray(restored.meta["rng"], np.uint32)),
                  resumed=True)
  if config.init.workdir:
    params, meta = restore_params(config.init.workdir, int(config.init.step),
                                  setup.abstract_params())
    logging.info("Starting from step %d of %s", meta["step"], config.init.workdir)
    # Fresh sentences and masks: continue the source run's stream, and fold its stop into
    # the key so that step s of this run does not reuse the masks of its step s.
    begin = _Start(setup.state_from(params), 0, int(meta["data_position"]),
                   jax.random.fold_in(base_key, int(meta["step"])), from_init=True)
  else:
    begin = _Start(setup.create_state(jax.random.fold_in(base_key, 0)), 0, 0, base_key)
  _write_config(workdir, current, param_count(begin.state.params))
  _log_event(workdir, "start", 0)
  return begin


def _compile_step(t: run_config.TrainConfig, setup: Setup, loss_transform, per_call: int = 1):
  """The jitted, sharded train step (`flatness.training.train_step`); the state is donated.

  ``per_call = 1``: ``(state, batch, key) -> (state, metrics)``, one step, the key
  folded on the host. ``per_call = K > 1`` (`steps_per_call`): ``(state, batches,
  base_key) -> (state, metrics [K])``, where ``batches`` holds K consecutive global
  batches stacked on a leading axis and a `lax.scan` makes the K steps, step ``s`` with
  the key ``fold_in(base_key, s)``, ``s`` the state's own counter: one dispatch and one
  transfer per K steps (`_Stepper`).
  """
  step_fn = train_step_lib.make_train_step(
      setup.objective, setup.tx, schedule=setup.schedule,
      grad_accum_steps=t.grad_accum_steps, loss_transform=loss_transform,
      targets=setup.targets, fast_kernels=t.fast_kernels)
  rep, data = sharding.replicated(setup.mesh), sharding.batch_sharding(setup.mesh)
  if per_call == 1:
    return jax.jit(step_fn, in_shardings=(rep, data, rep), out_shardings=(rep, rep),
                   donate_argnums=(0,))

  def steps(state, batches, base_key):
    def one(st, batch):
      return step_fn(st, batch, jax.random.fold_in(base_key, st.step))
    return jax.lax.scan(one, state, batches)

  return jax.jit(steps, in_shardings=(rep, sharding.stacked_batch_sharding(setup.mesh), rep),
                 out_shardings=(rep, rep),
                 donate_argnums=(0,))


def steps_per_call(t: run_config.TrainConfig) -> int:
  """K of `_compile_step`: the largest divisor of every periodic action's period (log,
  evaluation, checkpoint) up to ``train.steps_per_call``, so that calls end on those
  steps. 1 with several processes, whose coordinated preemption point is a step each
  checks."""
  if jax.process_count() > 1:
    return 1
  period = math.gcd(t.log_every, t.eval_every, t.checkpoint_every)
  return max(k for k in range(1, t.steps_per_call + 1) if period % k == 0)


class _Stepper:
  """Feeds `_compile_step`'s function K host batches at a time (fewer before
  ``num_steps`` or the next periodic action, so that a call never steps past them); with
  K = 1 one batch per call, its key folded on the host, as the plain loop."""

  def __init__(self, jitted, mesh, base_key, per_call: int, periods):
    self.jitted, self.mesh, self.per_call, self.periods = jitted, mesh, per_call, periods
    self.raw_key = base_key
    # On the mesh for the scan's calls (single-process only: K = 1 with several processes,
    # where a host-local key could not be put on other processes' devices).
    self.base_key = (jax.device_put(base_key, sharding.replicated(mesh)) if per_call > 1
                     else None)

  def count(self, step: int, last: int) -> int:
    """Steps of the next call from ``step``."""
    k = min(self.per_call, last - step)
    for p in self.periods:
      k = min(k, int(p) - step % int(p))
    return k

  def __call__(self, state, batches: Iterator[dict], step: int, last: int):
    """(state, metrics, steps made, tokens) of one call from ``step``; the metrics are
    stacked [K] when K > 1."""
    if self.per_call == 1:
      local = next(batches)
      tokens = input_pipeline.num_tokens(local)
      state, metrics = self.jitted(state, sharding.global_batch(local, self.mesh),
                                   jax.random.fold_in(self.raw_key, step))
      return state, metrics, 1, tokens * jax.process_count()
    k = self.count(step, last)
    local = [next(batches) for _ in range(k)]
    tokens = sum(input_pipeline.num_tokens(b) for b in local)
    stacked = sharding.global_batches(local, self.mesh)
    state, metrics = self.jitted(state, stacked, self.base_key)
    return state, metrics, k, tokens * jax.process_count()


class _MetricLog:
  """The train metrics of the steps since the last flush, fetched in one transfer.

  The step's metrics stay on the device until a flush (every ``log_every`` steps,
  before an evaluation or a save), so the loop never waits on the host. A flush
  checks every step's finiteness (a NaN stops the run before anything is saved),
  writes the last step's metrics and the throughput since the previous flush.
  """

  def __init__(self, writer, ckpt, workdir: str):
    self.writer, self.ckpt, self.workdir = writer, ckpt, workdir
    self.pending: list[tuple[int, dict]] = []
    self.tokens, self.timer = 0, None

  def add(self, step: int, metrics: dict, tokens: int, count: int | None = None) -> None:
    """The metrics of the step that ended at ``step``; with ``count``, of the ``count``
    steps up to ``step``, stacked on a leading axis."""
    self.pending.append((step, metrics, count))
    self.tokens += tokens

  def pause(self) -> None:
    """Evaluation time is not training time: the next rate starts after it."""
    self.timer = None

  def flush(self, step: int) -> None:
    self.ckpt.check_for_errors()   # a failed background save stops the run here
    fetched = []
    for s, m, count in jax.device_get(self.pending):
      if count is None:
        fetched.append((s, m))
      else:
        fetched.extend((s - count + 1 + i, {k: v[i] for k, v in m.items()})
                       for i in range(count))
    self.pending.clear()
    for s, m in fetched:
      if not m["finite"]:
        raise NonFiniteLossError(
            f"non-finite loss at step {s} (loss={float(m['loss'])}, objective="
            f"{float(m.get('objective', m['loss']))}, grad_norm="
            f"{float(m['grad_norm'])}); stopped without saving, so the last good checkpoint "
            f"({self.ckpt.latest_step()}) in {self.workdir} is intact. Try a lower "
            "optimizer.learning_rate or set optimizer.clip_norm.")
    if not fetched:
      return
    last_step, last = fetched[-1]
    scalars = {f"train/{k}": v for k, v in last.items() if k not in ("finite", "predictions")}
    now = time.perf_counter()
    if self.timer is not None:
      t0, s0 = self.timer
      scalars["perf/steps_per_sec"] = (step - s0) / (now - t0)
      scalars["perf/tokens_per_sec"] = self.tokens / (now - t0)
    self.timer, self.tokens = (now, step), 0
    self.writer.write_scalars(last_step, scalars)
    logging.info("step %d: train/loss=%.4f%s", last_step, float(last["loss"]),
                 f" ({scalars['perf/steps_per_sec']:.1f} steps/s)"
                 if "perf/steps_per_sec" in scalars else "")


def _evaluate(setup: Setup, params, validation, batch_size: int, writer, step: int) -> dict:
  metrics = evaluation.evaluate(setup.objective, params, validation, mesh=setup.mesh,
                                batch_size=batch_size)
  writer.write_scalars(step, {f"eval/{k}": v for k, v in metrics.items()})
  logging.info("step %d: %s", step, " ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
  return metrics


def _save(ckpt, log: _MetricLog, step: int, state, position: int, base_key, meta: dict):
  """Flushes the metrics (a NaN is never saved), then checkpoints with the data position."""
  log.flush(step)
  if ckpt.latest_step() == step:
    return
  key_data = np.asarray(jax.random.key_data(base_key)).tolist()
  ckpt.save(step, state, dict(meta, step=step, data_position=position, rng=key_data))


def _due(step: int, every, last: int) -> bool:
  return step % int(every) == 0 or step == last


def _train(config, t: run_config.TrainConfig, workdir, setup, ckpt, writer, source, validation,
           loss_transform, stop_after):
  """The loop: one step per batch, with the periodic actions (log, evaluate, save) and a
  preemption check after each."""
  current = _config_dict(config)
  begin = _start(config, workdir, setup, ckpt, current)
  state, step, position, base_key = begin.state, begin.step, begin.position, begin.base_key
  if begin.resumed:
    writer.drop_after(step)      # metrics written after the checkpoint are redone
  meta = dict(num_params=param_count(state.params), config=current)
  logging.info("Model: %d parameters; mesh %s over %d devices (%d processes)", meta["num_params"],
               dict(setup.mesh.shape), setup.mesh.size, jax.process_count())
  per_call = steps_per_call(t)
  jitted = _compile_step(t, setup, loss_transform, per_call)
  num_steps = t.num_steps if stop_after is None else min(t.num_steps, stop_after)
  if int(state.step) != step:
    raise RuntimeError(f"the train state counts {int(state.step)} steps, the run {step}")
  stepper = _Stepper(jitted, setup.mesh, base_key, per_call,
                     (t.log_every, t.eval_every, t.checkpoint_every))
  eval_bs = t.eval_batch_size
  batches = input_pipeline.prefetch(source.batches(position), size=t.prefetch)
  guard = preemption.PreemptionGuard()
  log, eval_metrics = _MetricLog(writer, ckpt, workdir), {}
  if begin.from_init:
    # The starting point of phase 2 is its first measured checkpoint.
    eval_metrics = _evaluate(setup, state.params, validation, eval_bs, writer, 0)
    _save(ckpt, log, 0, state, position, base_key, meta)
  try:
    while step < num_steps:
      state, metrics, k, tokens = stepper(state, batches, step, num_steps)
      step, position = step + k, position + k
      log.add(step, metrics, tokens, k if stepper.per_call > 1 else None)
      if _due(step, t.log_every, num_steps):
        log.flush(step)
      if _due(step, t.eval_every, num_steps):
        log.flush(step)
        eval_metrics = _evaluate(setup, state.params, validation, eval_bs, writer, step)
        log.pause()
      if _due(step, t.checkpoint_every, num_steps):
        _save(ckpt, log, step, state, position, base_key, meta)
      if guard.should_stop(step):
        _save(ckpt, log, step, state, position, base_key, meta)
        ckpt.wait()
        logging.warning("Preempted: saved step %d and stopping", step)
        return TrainResult(state, step, eval_metrics, preempted=True)
    _save(ckpt, log, step, state, position, base_key, meta)   # no-op when just saved
    ckpt.wait()
    writer.flush()
    return TrainResult(state, step, eval_metrics)
  finally:
    batches.close()     # stops the prefetch thread
    guard.close()
