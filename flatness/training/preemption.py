"""Stop at a step boundary on SIGTERM (TPU preemption notice, SLURM time limit).

Single process: a SIGTERM handler sets a flag, and the training loop saves a
checkpoint and returns at the next step boundary; the entry point then exits
with `PREEMPTED_EXIT_CODE` so launchers can tell "preempted, relaunch me" from
success and failure. Several processes: JAX's preemption sync manager (part of
`jax.distributed`; it catches SIGTERM itself) picks one step at which every
process saves together.
"""
import signal
import threading

import jax
from absl import logging
from jax.experimental import multihost_utils

PREEMPTED_EXIT_CODE = 75   # EX_TEMPFAIL: temporary failure, retry


class PreemptionGuard:

  def __init__(self):
    self._stop = False
    self._previous = None
    if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)

  def _on_sigterm(self, signum, frame):
    del signum, frame
    logging.warning("SIGTERM received: will checkpoint and stop at the next step boundary")
    self._stop = True

  def should_stop(self, step: int) -> bool:
    if jax.process_count() > 1:
      try:
        return multihost_utils.reached_preemption_sync_point(step)
      except RuntimeError:   # preemption service disabled: no coordinated stop
        return False
    return self._stop

  def close(self) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
      self._previous = None
