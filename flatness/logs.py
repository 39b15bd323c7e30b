"""Entry-point logging: keep our INFO lines, drop the libraries' INFO chatter.

Orbax logs every file rename of a checkpoint at INFO through absl; entry points
call `quiet_libraries()` so that a run's log shows progress, not plumbing.
"""
import logging as std_logging

from absl import logging

_NOISY = ("/orbax/", "/etils/", "/tensorflow_datasets/", "/jax/_src/")


class _LibraryFilter(std_logging.Filter):

  def filter(self, record: std_logging.LogRecord) -> bool:
    if record.levelno >= std_logging.WARNING:
      return True
    return not any(part in record.pathname for part in _NOISY)


def quiet_libraries() -> None:
  logging.set_verbosity(logging.INFO)
  handler = logging.get_absl_handler()
  if not any(isinstance(f, _LibraryFilter) for f in handler.filters):
    handler.addFilter(_LibraryFilter())
