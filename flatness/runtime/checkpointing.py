"""Orbax checkpoints of the train state, the RNG and the data position.

A checkpoint holds two items: ``state`` (the `TrainState` pytree, restored
with the shardings of the current mesh) and ``meta`` (JSON: the step, the
data-source position, the base PRNG key, the parameter count and the full
config of the run that wrote it). Retention keeps the
latest ``max_to_keep`` steps and, with ``keep_every = K``, every step that is a
multiple of K for ever (the checkpoint series of the continue-training
experiment). Orbax writes each step to a temporary directory and renames it
when complete, so a process that dies mid-write never replaces the last good
checkpoint. Saves run in a background thread; a save that fails there is
raised by the next `check_for_errors` (which the trainer calls every log step),
`save` or `wait`, naming the directory.

`restore_latest` resumes from the newest checkpoint that reads and validates:
a newer one that does not (a truncated array file, unreadable metadata, a
missing item) is reported in one line and moved aside to
``<directory>.damaged/<step>``, never deleted; when no checkpoint reads, it
refuses with `CheckpointRestoreError` and moves nothing.
"""
import contextlib
import dataclasses
import json
import os
from typing import Any, Callable

import jax
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils
from absl import logging
from etils import epath
from orbax.checkpoint import checkpoint_managers as policies


class IncompatibleCheckpointError(ValueError):
  """The workdir holds a checkpoint that the current config cannot restore."""


class CheckpointSaveError(RuntimeError):
  """A checkpoint could not be written (earlier checkpoints are untouched)."""


class CheckpointRestoreError(RuntimeError):
  """No checkpoint of a run directory can be read."""


class DamagedCheckpointError(RuntimeError):
  """One checkpoint's files cannot be read or do not hold what a checkpoint holds."""


META_KEYS = ("step", "data_position", "rng")


def absolute(directory) -> str:
  """``directory`` as an absolute local path; URIs (``gs://...``) unchanged.

  Orbax's tensorstore writer refuses relative paths, and only when the
  background save runs, so they are resolved here, up front.
  """
  directory = os.fspath(directory)
  if "://" in directory:
    return directory
  return os.path.abspath(os.path.expanduser(directory))


@dataclasses.dataclass
class Restored:
  state: Any
  meta: dict


def _reason(e: BaseException) -> str:
  """Why a file did not read, in one shortened line: the first line of the innermost
  exception (TensorStore's own error, e.g. ``OUT_OF_RANGE ... byte range``, sits under
  orbax's wrappers)."""
  while (e.__cause__ or e.__context__) is not None:
    e = e.__cause__ or e.__context__
  text = str(e).strip().strip('"').splitlines()[0] if str(e).strip() else ""
  text = f"{type(e).__name__}: {text}" if text else type(e).__name__
  # The cause often ends a long line of paths ("... No space left on device"): keep both ends.
  return text if len(text) <= 300 else f"{text[:150]} ... {text[-140:]}"


def _key_name(key) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def _describe(tree) -> dict[str, tuple]:
  """{'params/layer_0/attn/query/kernel': shape, ...}, the same for states and metadata."""
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {"/".join(_key_name(k) for k in path): tuple(getattr(leaf, "shape", ()))
          for path, leaf in flat}


class Checkpointer:
  """Thin wrapper over `ocp.CheckpointManager` for one run directory."""

  def __init__(self, directory: str, *, max_to_keep: int = 2, keep_every: int = 0,
               async_save: bool = True):
    if max_to_keep <= 0:
      raise ValueError(f"train.max_to_keep must be positive, got {max_to_keep}")
    if keep_every < 0:
      raise ValueError(f"train.keep_every must be >= 0 (0: keep no series), got {keep_every}")
    keep = [policies.LatestN(max_to_keep)]
    if keep_every:
      keep.append(policies.EveryNSteps(keep_every))
    options = ocp.CheckpointManagerOptions(
        preservation_policy=policies.AnyPreservationPolicy(keep),
        enable_async_checkpointing=async_save, create=True)
    self.directory = absolute(directory)
    self._params_reader = None      # restore_params' checkpointer, made on first use
    # Explicit handlers let a fresh manager read the metadata of an existing run.
    self.manager = ocp.CheckpointManager(
        self.directory, options=options,
        item_handlers=dict(state=ocp.StandardCheckpointHandler(),
                           meta=ocp.JsonCheckpointHandler()))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def save(self, step: int, state, meta: dict) -> None:
    with self._naming_failures():
      self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                      meta=ocp.args.JsonSave(meta)))

  def check_for_errors(self) -> None:
    """Raises `CheckpointSaveError` if a background save has failed."""
    with self._naming_failures():
      self.manager.check_for_errors()
      # The manager's finalize thread keeps a failure to itself until someone waits on
      # it; once no save is in progress, waiting costs nothing and surfaces it.
      if not self.manager.is_saving_in_progress():
        self.manager.wait_until_finished()

  @contextlib.contextmanager
  def _naming_failures(self):
    try:
      yield
    except Exception as e:  # pylint: disable=broad-except
      raise CheckpointSaveError(
          f"saving a checkpoint in {self.directory} failed ({_reason(e)}); the checkpoints "
          f"already there are untouched: the last checkpoint is step {self._finished_step()}. "
          "Fix the cause (e.g. free space) and rerun the same command to resume") from e

  def _finished_step(self):
    try:
      return self.manager.latest_step()
    except Exception:  # pylint: disable=broad-except
      return "unknown"

  def read_meta(self, step: int) -> dict:
    """The ``meta`` item of ``step``, checked; `DamagedCheckpointError` names the file."""
    path = epath.Path(self.directory) / str(step) / "meta" / "metadata"
    try:
      meta = json.loads(path.read_text())
    except (OSError, ValueError) as e:
      raise DamagedCheckpointError(f"{path}: {_reason(e)}") from e
    missing = [k for k in META_KEYS if k not in meta]
    if missing or meta["step"] != step:
      raise DamagedCheckpointError(f"{path}: not this step's metadata (missing {missing}, "
                                   f"step {meta.get('step')})")
    return meta

  def restore(self, step: int, abstract_state, meta: dict | None = None) -> Restored:
    """Restores ``step`` into the structure, shapes and shardings of ``abstract_state``.

    Raises `IncompatibleCheckpointError` when the saved state has another structure,
    `DamagedCheckpointError` (naming the file where it can) when its files do not read.
    """
    meta = self.read_meta(step) if meta is None else meta   # restore_latest has read it
    state_dir = epath.Path(self.directory) / str(step) / "state"
    if not state_dir.exists():
      raise DamagedCheckpointError(f"{state_dir}: missing (the checkpoint has no train state)")
    try:
      saved = self.manager.item_metadata(step)["state"]
    except Exception as e:  # pylint: disable=broad-except
      raise DamagedCheckpointError(
          f"{os.path.join(self.directory, str(step), 'state')}: {_reason(e)}") from e
    if saved is None:
      raise DamagedCheckpointError(
          f"{os.path.join(self.directory, str(step), 'state')}: missing or unreadable")
    want, have = _describe(abstract_state), _describe(saved)
    if want != have:
      diff = sorted(set(want.items()) ^ set(have.items()))
      lines = [f"  {path}: checkpoint {have.get(path, 'absent')}, config {want.get(path, 'absent')}"
               for path in sorted({p for p, _ in diff})[:8]]
      raise IncompatibleCheckpointError(
          f"the checkpoint at step {step} in {self.directory} does not match the model and "
          "optimizer of this config:\n" + "\n".join(lines))
    try:
      out = self.manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract_state)))
    except Exception as e:  # pylint: disable=broad-except
      raise DamagedCheckpointError(
          f"{os.path.join(self.directory, str(step), 'state')}: {_reason(e)}") from e
    return Restored(state=out["state"], meta=meta)

  def restore_params(self, step: int, abstract_params):
    """Only the params of ``step``, into the shapes and shardings of ``abstract_params``.

    What evaluation and the start of phase 2 need: the optimizer state (moments as
    large as the params, for Adam twice) is neither read nor allocated, and its
    structure need not match (a phase 2 may use another optimizer).
    Raises `IncompatibleCheckpointError` when the saved params have another
    structure, `DamagedCheckpointError` when the files do not read.
    """
    state_dir = epath.Path(self.directory) / str(step) / "state"
    if not state_dir.exists():
      raise DamagedCheckpointError(f"{state_dir}: missing (the checkpoint has no train state)")
    try:
      saved = self.manager.item_metadata(step)["state"]["params"]
    except Exception as e:  # pylint: disable=broad-except
      raise DamagedCheckpointError(f"{state_dir}: {_reason(e)}") from e
    want, have = _describe(abstract_params), _describe(saved)
    if want != have:
      paths = sorted({p for p, _ in set(want.items()) ^ set(have.items())})[:8]
      raise IncompatibleCheckpointError(
          f"the params at step {step} in {self.directory} do not match this model:\n"
          + "\n".join(f"  {p}: checkpoint {have.get(p, 'absent')}, model {want.get(p, 'absent')}"
                      for p in paths))
    item = {"params": abstract_params}
    if self._params_reader is None:
      self._params_reader = ocp.PyTreeCheckpointer()
    try:
      out = self._params_reader.restore(state_dir, args=ocp.args.PyTreeRestore(
          item=item, restore_args=ocp.checkpoint_utils.construct_restore_args(item),
          partial_restore=True))
    except Exception as e:  # pylint: disable=broad-except
      raise DamagedCheckpointError(f"{state_dir}: {_reason(e)}") from e
    return out["params"]

  def restore_latest(self, abstract_state, check_meta: Callable[[dict], None] | None = None
                     ) -> Restored | None:
    """The newest checkpoint that reads; None when the directory holds none.

    ``check_meta(meta)`` runs on each candidate's metadata before its arrays are read
    (the trainer compares the saved config with the current one there); what it raises
    propagates, as does `IncompatibleCheckpointError`. A damaged checkpoint is skipped
    with a one-line warning; once an older one restores, the damaged ones are moved to
    ``<directory>.damaged/`` (so the next run does not trip on them again). When none
    restores, nothing is moved and `CheckpointRestoreError` lists why each failed.
    """
    steps = self.all_steps()
    damaged = []
    for step in reversed(steps):
      try:
        meta = self.read_meta(step)
        if check_meta is not None:
          check_meta(meta)
        restored = self.restore(step, abstract_state, meta)
      except DamagedCheckpointError as e:
        logging.warning("checkpoint step %d is damaged, trying an older one: %s", step, e)
        damaged.append((step, e))
        continue
      for bad, why in damaged:
        aside = self._set_aside(bad)
        logging.warning("checkpoint step %d (%s) moved to %s; resuming from step %d", bad, why,
                        aside, step)
      return restored
    if damaged:
      raise CheckpointRestoreError(
          f"no checkpoint in {self.directory} can be read: "
          + "; ".join(f"step {s}: {e}" for s, e in damaged)
          + ". Nothing was moved or deleted; repair or remove them, or use a new --workdir")
    return None

  def _set_aside(self, step: int) -> str:
    """Moves ``<directory>/<step>`` to ``<directory>.damaged/<step>[.<n>]`` (process 0
    moves it; every process waits for that before re-reading the directory)."""
    aside_dir = epath.Path(self.directory.rstrip("/") + ".damaged")
    target, n = aside_dir / str(step), 1
    while target.exists():
      target, n = aside_dir / f"{step}.{n}", n + 1
    if jax.process_index() == 0:
      aside_dir.mkdir(parents=True, exist_ok=True)
      (epath.Path(self.directory) / str(step)).rename(target)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(f"flatness: set aside checkpoint {step}")
    self.manager.reload()
    return str(target)

  def wait(self) -> None:
    with self._naming_failures():
      self.manager.wait_until_finished()

  def close(self) -> None:
    try:
      self.wait()
    finally:
      if self._params_reader is not None:
        self._params_reader.close()
      self.manager.close()
