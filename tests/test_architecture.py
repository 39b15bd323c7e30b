"""Which part may import which: the rules of the README's architecture paragraph.

Static (every import statement, including those inside functions, read with
`ast`) and dynamic (a fresh interpreter that launches sweeps must never load
JAX).
"""
import ast
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUMERIC = ("jax", "flax", "optax", "orbax", "tensorflow")

# The library still builds its language from the config in these modules (the step of
# the architecture issue still open): the list is exact, so a new one fails, and so does
# one that no longer needs the exception.
LIBRARY_IMPORTS_DATA_GEN = {"flatness/model/objectives.py", "flatness/training/trainer.py"}


def _modules(package):
  for dirpath, _, files in os.walk(os.path.join(ROOT, package)):
    for f in files:
      if f.endswith(".py"):
        yield os.path.relpath(os.path.join(dirpath, f), ROOT)


def _imports(path) -> set[str]:
  tree = ast.parse(open(os.path.join(ROOT, path)).read(), path)
  out = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      out |= {a.name for a in node.names}
    elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
      out.add(node.module)
  return out


def _offenders(package, forbidden, allowed=frozenset()):
  bad = {}
  for path in _modules(package):
    hits = sorted(m for m in _imports(path)
                  if any(m == f or m.startswith(f + ".") for f in forbidden))
    if hits and path not in allowed:
      bad[path] = hits
  return bad


@pytest.mark.parametrize("package,forbidden", [
    ("flatness", ("experiments", "launch")),
    ("data_gen", ("experiments", "launch")),
    ("launch", ("flatness",) + NUMERIC),
])
def test_forbidden_imports(package, forbidden):
  assert _offenders(package, forbidden) == {}


def test_library_imports_data_gen_only_where_listed():
  found = set(_offenders("flatness", ("data_gen",)))
  assert found == LIBRARY_IMPORTS_DATA_GEN


def test_launching_a_sweep_loads_no_jax():
  """Expanding every experiment's sweeps into commands, as `launch.sweep` does."""
  code = """
import sys
from experiments.configs import algorithm, continue_training, mechanism, model_size
import launch.sweep as ls
for module in (algorithm, continue_training, mechanism, model_size):
  for variant in ("tiny", "pcfg_compact", "pcfg"):
    config = module.get_config(variant)
    assert ls.plan("local", "cfg", config, "/tmp/w") and ls.plan("slurm", "cfg", config, "/w")
print(sorted({m.split(".")[0] for m in sys.modules} & {%s}))
""" % ", ".join(repr(m) for m in NUMERIC + ("flatness",))
  out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                       check=True)
  assert out.stdout.strip() == "[]", out.stdout


def test_jax_free_sections_name_every_built_in_language():
  from data_gen import registry  # pylint: disable=g-import-not-at-top
  from data_gen import sections  # pylint: disable=g-import-not-at-top
  assert set(sections.LANGUAGES) == set(registry.BUILDERS)
  assert set(sections.sections()) == set(sections.LANGUAGES)
