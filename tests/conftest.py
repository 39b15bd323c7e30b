"""Test session setup: 8 fake CPU devices, so sharding is exercised on any machine.

XLA reads the device count when JAX initialises its backend, so this must run
before anything imports jax; pytest imports conftest.py first.
"""
import os

from launch import local  # absl only, no JAX

os.environ["XLA_FLAGS"] = local.with_device_count(os.environ.get("XLA_FLAGS", ""), 8)
# The suite is bound by XLA's CPU compiles, not by running the tiny programs: LLVM at -O0
# cuts a train step's compile by a fifth to two fifths (README, "Tests and CI"). XLA's HLO
# passes run as before, so results agree to float32 rounding. Setting the level in
# XLA_FLAGS overrides it.
if "--xla_backend_optimization_level" not in os.environ["XLA_FLAGS"]:
  os.environ["XLA_FLAGS"] += " --xla_backend_optimization_level=0"
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import tempfile  # pylint: disable=g-import-not-at-top,wrong-import-position

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import pytest  # pylint: disable=g-import-not-at-top,wrong-import-position
from absl import logging  # pylint: disable=g-import-not-at-top,wrong-import-position

logging.set_verbosity(logging.WARNING)

# Many tests build the same tiny computations from fresh closures; the persistent
# compilation cache (keyed on the HLO) compiles each of them once per session. pytest-xdist's
# workers (`-n 2`) inherit this process's environment, so they share one cache directory.
os.environ.setdefault("FLATNESS_TEST_JAX_CACHE", tempfile.mkdtemp(prefix="jaxcache"))
jax.config.update("jax_compilation_cache_dir", os.environ["FLATNESS_TEST_JAX_CACHE"])
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


@pytest.fixture
def workdir(tmp_path):
  return str(tmp_path / "run")
