"""Orbax checkpoints of the train state, the RNG and the data position.

A checkpoint holds two items: ``state`` (the `TrainState` pytree, restored
with the shardings of the current mesh) and ``meta`` (JSON: the step, the
data-source position, the base PRNG key, the config). Retention keeps the
latest ``max_to_keep`` steps and, with ``keep_every = K``, every step that is a
multiple of K for ever (the checkpoint series of the continue-training
experiment). Orbax writes each step to a temporary directory and renames it
when complete, so a process that dies mid-write never replaces the last good
checkpoint. Saves run in a background thread; a save that fails there is
raised by the next `check_for_errors` (which the trainer calls every log step),
`save` or `wait`, naming the directory.
"""
import contextlib
import dataclasses
import os
from typing import Any

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies


class IncompatibleCheckpointError(ValueError):
  """The workdir holds a checkpoint that the current config cannot restore."""


class CheckpointSaveError(RuntimeError):
  """A checkpoint could not be written (earlier checkpoints are untouched)."""


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
          f"saving a checkpoint in {self.directory} failed ({type(e).__name__}: {e}); "
          f"checkpoints already there are untouched (latest: {self._finished_step()})") from e

  def _finished_step(self):
    try:
      return self.manager.latest_step()
    except Exception:  # pylint: disable=broad-except
      return "unknown"

  def restore_meta(self, step: int) -> dict:
    return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

  def restore(self, step: int, abstract_state) -> Restored:
    """Restores ``step`` into the structure, shapes and shardings of ``abstract_state``."""
    saved = self.manager.item_metadata(step)["state"]
    want, have = _describe(abstract_state), _describe(saved)
    if want != have:
      diff = sorted(set(want.items()) ^ set(have.items()))
      lines = [f"  {path}: checkpoint {have.get(path, 'absent')}, config {want.get(path, 'absent')}"
               for path in sorted({p for p, _ in diff})[:8]]
      raise IncompatibleCheckpointError(
          f"the checkpoint at step {step} in {self.directory} does not match the model and "
          "optimizer of this config:\n" + "\n".join(lines))
    out = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
    return Restored(state=out["state"], meta=out["meta"])

  def wait(self) -> None:
    with self._naming_failures():
      self.manager.wait_until_finished()

  def close(self) -> None:
    try:
      self.wait()
    finally:
      self.manager.close()
