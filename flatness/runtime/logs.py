"""Entry-point logging: keep our INFO lines, drop the libraries' INFO chatter.

Orbax logs every file rename of a checkpoint at INFO through absl; entry points
call `quiet_libraries()` so that a run's log shows progress, not plumbing. The
libraries' warnings and errors stay, each as its first line: when a disk fills
up, orbax's background threads log a traceback per thread, and the one line
that says what happened (`flatness.runtime.cli`) would sit under hundreds of theirs.
"""
import logging as std_logging

from absl import logging

_NOISY = ("/orbax/", "/etils/", "/tensorflow_datasets/", "/jax/_src/", "/asyncio/",
          "/concurrent/")


class _LibraryFilter(std_logging.Filter):

  def filter(self, record: std_logging.LogRecord) -> bool:
    if not any(part in record.pathname for part in _NOISY):
      return True
    if record.levelno < std_logging.WARNING:
      return False
    record.exc_info, record.exc_text, record.stack_info = None, None, None
    message = record.getMessage().strip().splitlines()
    record.msg, record.args = (message[0] if message else ""), None
    return True


def quiet_libraries() -> None:
  logging.set_verbosity(logging.INFO)
  handler = logging.get_absl_handler()
  if not any(isinstance(f, _LibraryFilter) for f in handler.filters):
    handler.addFilter(_LibraryFilter())
