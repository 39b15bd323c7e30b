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

# Which subpackage of flatness may import which (besides itself): the layers of the
# README's architecture paragraph.
LAYERS = {
    "runtime": set(),
    "model": set(),
    "curvature": {"model", "runtime"},
    "transfer": {"model", "runtime"},
    "training": {"model", "runtime", "transfer"},     # transfer.probe: the adversary's features
    "analysis": {"runtime"},
}


def _modules(package, root=ROOT):
  for dirpath, _, files in os.walk(os.path.join(root, package)):
    for f in files:
      if f.endswith(".py"):
        yield os.path.relpath(os.path.join(dirpath, f), root)


def _imports(path, root=ROOT) -> set[str]:
  tree = ast.parse(open(os.path.join(root, path)).read(), path)
  out = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      out |= {a.name for a in node.names}
    elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
      out.add(node.module)
  return out


def _offenders(package, forbidden, root=ROOT):
  bad = {}
  for path in _modules(package, root):
    hits = sorted(m for m in _imports(path, root)
                  if any(m == f or m.startswith(f + ".") for f in forbidden))
    if hits:
      bad[path] = hits
  return bad


def test_a_forbidden_import_is_found_wherever_it_hides(tmp_path):
  (tmp_path / "flatness" / "model").mkdir(parents=True)
  (tmp_path / "flatness" / "model" / "bad.py").write_text(
      "import numpy as np\n\ndef f():\n  from data_gen import registry\n  import flatness.training.trainer\n")
  assert _offenders("flatness", ("data_gen",), tmp_path) == {
      "flatness/model/bad.py": ["data_gen"]}
  assert _offenders("flatness/model", ("flatness.training",), tmp_path) == {
      "flatness/model/bad.py": ["flatness.training.trainer"]}


@pytest.mark.parametrize("package,forbidden", [
    # The library takes arrays and iterators: it never builds a language or reads a config
    # file (experiments.wiring does).
    ("flatness", ("data_gen", "experiments", "launch")),
    # Languages use the model's tokens, masking and model (the teacher), and the runtime.
    ("data_gen", ("experiments", "launch", "flatness.training", "flatness.curvature",
                  "flatness.transfer", "flatness.analysis")),
    ("launch", ("flatness",) + NUMERIC),
])
def test_forbidden_imports(package, forbidden):
  assert _offenders(package, forbidden) == {}


@pytest.mark.parametrize("layer", sorted(LAYERS))
def test_library_layers(layer):
  others = {f"flatness.{p}" for p in LAYERS if p != layer and p not in LAYERS[layer]}
  assert _offenders(f"flatness/{layer}", tuple(others)) == {}


def test_every_module_of_the_library_is_in_a_layer():
  top = {p for p in os.listdir(os.path.join(ROOT, "flatness"))
         if not p.startswith(("_", "."))}
  assert top == set(LAYERS), "flatness/ holds only the subpackages (and __init__.py)"


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
