"""Running the project's entry points as a user would: in a fresh process."""
import os
import subprocess
import sys

import jax

from launch import local

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def env(devices: int = 1) -> dict:
  """A CPU environment with ``devices`` fake devices, sharing the test session's
  persistent compilation cache and XLA flags, outside any multi-process launch."""
  out = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS=local.with_device_count(os.environ.get("XLA_FLAGS", ""), devices),
             JAX_COMPILATION_CACHE_DIR=jax.config.jax_compilation_cache_dir or "",
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
  for k in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID", "FLATNESS_DEBUG"):
    out.pop(k, None)
  return out


def run_module(module: str, *args, timeout: int = 600) -> subprocess.CompletedProcess:
  """``python -m module args`` from the repository root, output captured."""
  return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, env=env(1),
                        capture_output=True, text=True, timeout=timeout)
