"""JAX's persistent compilation cache for the entry points.

An experiment compiles the same programs many times: each run of a sweep builds
its own train step, curvature and probe functions, and their XLA programs are
identical whenever the shapes are (the same model and batch size). With the
cache on disk a program compiled once is loaded afterwards: on the 2-core CPU
a tiny sweep's per-run measurement fell from 13 s to 2 s (README, "Benchmarks").
Results are unchanged: a cached executable is the one the compiler produced.

The directory is ``$JAX_COMPILATION_CACHE_DIR`` when set (JAX's own variable),
else ``$FLATNESS_COMPILATION_CACHE``, else ``~/.cache/flatness/jax``;
``FLATNESS_COMPILATION_CACHE=off`` turns it off. It has no size limit (JAX's
``jax_compilation_cache_max_size`` needs the ``filelock`` package, which is not a
dependency, and without it every cache read fails): a sweep adds a few MB (3 MB for
the mechanism's tiny sweep); delete the directory to clear it.
"""
import os

ENV = "FLATNESS_COMPILATION_CACHE"
DEFAULT = os.path.join("~", ".cache", "flatness", "jax")
# Programs that compile faster than this are not worth a disk write and a read.
MIN_COMPILE_SECS = 0.5


def directory() -> str | None:
  """Where the cache lives, or None when it is off."""
  if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    return os.environ["JAX_COMPILATION_CACHE_DIR"]
  value = os.environ.get(ENV, DEFAULT)
  return None if value.lower() in ("", "0", "off", "none") else os.path.expanduser(value)


def enable() -> str | None:
  """Turns the cache on (see the module docstring); returns its directory or None."""
  path = directory()
  if path is None:
    return None
  import jax  # pylint: disable=g-import-not-at-top  (launch/ imports this module's caller)
  jax.config.update("jax_compilation_cache_dir", path)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECS)
  return path
