"""One evaluation pass per checkpoint: params restored once (without the optimizer state),
a loss gap at every checkpoint whatever eval_every was, skips, conditions, another device
count; and the typed config sections and the per-function cache it rests on."""
import dataclasses
import json
import os

import jax
import numpy as np
import pytest
from absl import logging

from experiments import runner
from experiments import wiring
from experiments.configs import downstream as downstream_configs
from experiments.configs import measure as measure_configs
from experiments.configs import mechanism
from experiments.configs import pretrain
from flatness.curvature import measure
from flatness.runtime import checkpoint_walk
from flatness.runtime import checkpointing
from flatness.runtime import config_types
from flatness.runtime import fn_cache
from flatness.runtime import sharding
from flatness.training import evaluation
from flatness.transfer import downstream


def _config():
  c = pretrain.get_config("tiny")
  c.model.update(hidden_size=8, mlp_dim=16, num_layers=1)
  c.data.num_validation = 16
  # eval_every = 5 fires at none of the checkpoints 3, 6 (only at the end, 6).
  c.train.update(batch_size=12, num_steps=6, log_every=3, eval_every=5, checkpoint_every=3,
                 max_to_keep=5)
  return c


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A run trained on one device with a batch of 12 (not divisible by 8 devices)."""
  workdir = str(tmp_path_factory.mktemp("pass") / "run")
  wiring.train(_config(), workdir, mesh=sharding.make_mesh(1))
  return workdir


def _rows(workdir):
  return checkpoint_walk.known_rows(workdir)


def test_params_alone_restore_equal_to_the_full_state(trained):
  built = wiring.trained_run(trained, mesh=sharding.make_mesh(1))
  ckpt = checkpointing.Checkpointer(os.path.join(trained, "checkpoints"))
  try:
    full = ckpt.restore(3, built.setup.abstract_state()).state.params
    alone = ckpt.restore_params(3, built.setup.abstract_params())
    c = _config()
    c.model.hidden_size = 16
    other = wiring.build(c, mesh=sharding.make_mesh(1), training=False).setup
    with pytest.raises(checkpointing.IncompatibleCheckpointError, match="do not match"):
      ckpt.restore_params(3, other.abstract_params())
  finally:
    ckpt.close()
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(full), jax.device_get(alone))


def test_every_checkpoint_gets_its_loss_gap_on_another_device_count(trained):
  before = _rows(trained)
  assert "eval/loss_gap" not in before[3] and "eval/loss_gap" in before[6]
  # 8 devices: the training batch (12) does not divide, evaluation does not care.
  out = wiring.evaluate_run(trained, {}, ["loss"], mesh=sharding.make_mesh(8))
  assert sorted(out) == [3]                       # step 6 has its gap from training
  rows = _rows(trained)
  assert rows[3]["eval/loss_gap"] == out[3]["eval/loss_gap"] >= 0
  # The evaluator recomputes what training wrote at step 6, on the same validation set.
  again = wiring.evaluate_run(trained, {}, ["loss"], mesh=sharding.make_mesh(1), force=True)
  assert again[6]["eval/loss_gap"] == pytest.approx(before[6]["eval/loss_gap"], rel=1e-5)
  assert again[3]["eval/loss_gap"] == pytest.approx(rows[3]["eval/loss_gap"], rel=1e-5)


class _Counting:
  """An evaluator that records the steps it saw and the params it got."""
  def __init__(self, prefix):
    self.prefix, self.required, self.seen = prefix, ["value"], []

  def __call__(self, params, step):
    self.seen.append((step, float(jax.tree.leaves(params)[0].sum())))
    return {"value": float(step)}


def test_one_pass_restores_each_checkpoint_once_and_skips_what_is_done(trained, monkeypatch):
  built = wiring.trained_run(trained, mesh=sharding.make_mesh(1))
  restores = []
  real = checkpointing.Checkpointer.restore_params
  monkeypatch.setattr(checkpointing.Checkpointer, "restore_params",
                      lambda self, step, abstract: restores.append(step) or real(
                          self, step, abstract))
  a, b, c = _Counting("a"), _Counting("b"), _Counting("c")
  entries = [checkpoint_walk.Entry(a), checkpoint_walk.Entry(b, steps={6}),
             checkpoint_walk.Entry(c, when=lambda step, row: row["a/value"] > 3)]
  abstract = built.setup.abstract_params()
  out = checkpoint_walk.walk(trained, abstract, entries)
  assert restores == [3, 6]                               # once per checkpoint
  assert [s for s, _ in a.seen] == [3, 6] and [s for s, _ in b.seen] == [6]
  assert [s for s, _ in c.seen] == [6]                    # `when` read a's metric of step 3
  assert a.seen[1][1] == c.seen[0][1]                      # the same params, restored once
  assert set(out[6]) == {"a/value", "b/value", "c/value"}
  restores.clear()
  assert checkpoint_walk.walk(trained, abstract, entries) == {}
  # Only c at step 3 is still open, and its condition says no: nothing is even restored.
  assert restores == []
  # A forced entry runs again where its metrics are there.
  assert sorted(checkpoint_walk.walk(trained, abstract, [checkpoint_walk.Entry(a, force=True)]))\
      == [3, 6]
  assert restores == [3, 6] and [s for s, _ in a.seen] == [3, 6, 3, 6]


def test_settings_that_would_evaluate_nothing_are_refused():
  config = mechanism.get_config("tiny")
  assert config.analysis.probe == "ends"
  runner._check_evals(config, runner.evaluate_when(config))       # evaluate = "all": fine
  config.analysis.update(evaluate="within_tolerance", tolerance=0.05)
  with pytest.raises(ValueError, match="probe='ends'"):
    runner._check_evals(config, runner.evaluate_when(config))
  config.analysis.probe = "all"
  runner._check_evals(config, runner.evaluate_when(config))
  config.evals = ("curvature", "loss", "downstream")
  with pytest.raises(ValueError, match="'loss' must come before"):
    runner._check_evals(config, runner.evaluate_when(config))


def test_an_old_run_record_reads_with_todays_defaults(trained, tmp_path):
  path = os.path.join(trained, "config.json")
  record = json.load(open(path))
  del record["train"]["prefetch"], record["targets"]
  copy = tmp_path / "old"
  copy.mkdir()
  (copy / "config.json").write_text(json.dumps(record))
  config = wiring.run_config_of(str(copy))
  assert config.train.prefetch == pretrain.base().train.prefetch
  assert config.targets == "sampled" and config.train.batch_size == 12


def test_sections_become_typed_once_and_name_what_is_wrong():
  m = measure.measure_config(measure_configs.get_config("premise"))
  assert m.metrics == ("trace", "gradient_noise", "gradient_noise_exact", "loss")
  assert isinstance(m.trace, measure.TraceSettings) and m.trace.num_probes == 1
  d = downstream.downstream_config(downstream_configs.get_config("default"))
  assert d.finetune is None and d.probe.tol == 1e-5
  finetune = downstream.downstream_config(downstream_configs.get_config("finetune")).finetune
  assert finetune.epochs == 10
  bad = measure_configs.get_config()
  del bad.trace["hvp"]
  with pytest.raises(ValueError, match=r"measure.trace: missing fields \['hvp'\]"):
    measure.measure_config(bad)
  bad = downstream_configs.get_config()
  bad.probe.epochs = 3
  with pytest.raises(ValueError, match=r"downstream.probe: unknown fields \['epochs'\]"):
    downstream.downstream_config(bad)

  @dataclasses.dataclass(frozen=True)
  class Section:
    rate: float
    steps: int = 2
  with pytest.raises(ValueError, match=r"s: missing fields \['steps'\]"):
    config_types.from_section(Section, {"rate": 1}, "s")     # a config sets every field
  assert config_types.from_section(Section, {"rate": 1}, "s", strict=False) == Section(1.0, 2)
  assert isinstance(config_types.from_section(Section, {"rate": 1, "steps": 3}, "s").rate, float)


def test_the_per_function_cache_builds_once_and_names_a_fresh_closure(monkeypatch):
  built = []

  @fn_cache.per_function(maxsize=4)
  def compiled(fn, k):
    built.append(k)
    return lambda x: fn(x) * k

  warnings = []
  monkeypatch.setattr(logging, "warning", lambda msg, *a: warnings.append(msg % a))
  square = lambda x: x * x                                   # pylint: disable=unnecessary-lambda-assignment
  assert compiled(square, 2)(3) == compiled(square, 2)(3) == 18
  assert built == [2] and not warnings
  for _ in range(3):
    compiled(lambda x: x + 1, 2)                              # a fresh closure per call
  assert built == [2, 2, 2, 2]
  assert len(warnings) == 1 and "fresh closure" in warnings[0]

  def scaled(k):
    return lambda x: x * k
  compiled(scaled(3), 1)
  compiled(scaled(4), 1)              # the same code over another value: another program
  assert len(warnings) == 1
  compiled(scaled(3), 1)              # equal to the first, a new object: compiled again
  assert len(warnings) == 2 and built == [2, 2, 2, 2, 1, 1, 1]


def test_loss_evaluator_is_the_training_evaluation():
  built = wiring.build(_config(), mesh=sharding.make_mesh(1), training=False)
  params = built.setup.create_state(jax.random.key(0)).params
  val = built.validation()
  ev = evaluation.LossEvaluator(built.setup.objective, val, mesh=built.setup.mesh,
                                batch_size=16)
  assert ev.prefix == "eval" and ev.required == ["loss_gap"]
  assert ev(params, 0) == evaluation.evaluate(built.setup.objective, params, val,
                                              mesh=built.setup.mesh, batch_size=16)
