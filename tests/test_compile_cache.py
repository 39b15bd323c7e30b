"""The entry points' persistent compilation cache writes programs and reads them back."""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CHILD = """
import warnings
warnings.simplefilter("error")          # a failed cache read or write is a warning in JAX
from flatness.runtime import compile_cache
compile_cache.MIN_COMPILE_SECS = 0.0    # cache even this small program
assert compile_cache.enable() == {path!r}
import jax, jax.numpy as jnp
f = jax.jit(lambda x: jnp.sin(x) @ jnp.cos(x).T + {salt})
print(float(f(jnp.ones((8, 8))).sum()))
"""


def _run(path, salt):
  env = dict(os.environ, FLATNESS_COMPILATION_CACHE=path, JAX_PLATFORMS="cpu")
  env.pop("JAX_COMPILATION_CACHE_DIR", None)
  return subprocess.run([sys.executable, "-c", CHILD.format(path=path, salt=salt)], cwd=ROOT,
                        env=env, capture_output=True, text=True, check=True).stdout


def test_a_program_compiled_once_is_read_back_with_the_same_result(tmp_path):
  path = str(tmp_path / "cache")
  first = _run(path, 1.0)
  entries = sorted(os.listdir(path))
  assert entries, "nothing was written to the cache"
  assert _run(path, 1.0) == first             # read back: no new entry, same value
  assert sorted(os.listdir(path)) == entries
  _run(path, 2.0)                             # another program: a new entry
  assert len(os.listdir(path)) > len(entries)


def test_off_turns_it_off(monkeypatch):
  from flatness.runtime import compile_cache  # pylint: disable=g-import-not-at-top
  monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
  monkeypatch.setenv(compile_cache.ENV, "off")
  assert compile_cache.directory() is None
