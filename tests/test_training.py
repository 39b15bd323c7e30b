"""The training loop: reaching the optimum, sharding invariance, exact resume, guards."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import resume_check
from data_gen.markov import MarkovChain
from experiments import wiring
from experiments.configs import pretrain
from flatness.runtime import checkpointing
from flatness.runtime import metric_writers
from flatness.runtime import sharding
from flatness.training import input_pipeline
from flatness.training import train_step as train_step_lib
from flatness.training import trainer


def _small_config(**train):
  c = pretrain.get_config("tiny")
  c.model.update(hidden_size=16, mlp_dim=32, dropout_rate=0.1)
  c.data.num_validation = 32
  c.train.update(batch_size=16, num_steps=12, log_every=2, eval_every=6, checkpoint_every=6)
  c.train.update(**train)
  return c


def test_tiny_reaches_the_closed_form_optimum(workdir):
  """The `tiny` variant trains to within 2% of the Markov chain's exact optimal loss."""
  c = pretrain.get_config("tiny")
  result = wiring.train(c, workdir, mesh=sharding.make_mesh(1))
  optimum = MarkovChain(seed=c.data.seed, **c.data.markov).optimal_mlm_loss()
  ev = result.eval_metrics
  assert ev["expected_ce"] <= 1.02 * optimum
  # The validation sample's own optimum agrees with the closed form.
  assert ev["optimal_loss"] == pytest.approx(optimum, rel=0.02)
  assert 0 <= ev["loss_gap"] < 0.02 * optimum


def test_same_step_on_8_devices_and_on_1():
  c = _small_config()
  built = [wiring.build(c, mesh=sharding.make_mesh(n)) for n in (8, 1)]
  setups = [b.setup for b in built]
  assert setups[0].mesh.size == 8
  source = built[0].source()
  batches = [source.batch(i) for i in range(3)]
  finals = []
  for s in setups:
    state = s.create_state(jax.random.key(0))
    step = jax.jit(train_step_lib.make_train_step(s.objective, s.tx, grad_accum_steps=2))
    losses = []
    for i, b in enumerate(batches):
      state, m = step(state, sharding.global_batch(b, s.mesh), jax.random.key(i))
      losses.append(float(m["loss"]))
    finals.append((losses, jax.device_get(state.params)))
  np.testing.assert_allclose(finals[0][0], finals[1][0], rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               finals[0][1], finals[1][1])


def test_grad_accumulation_equals_full_batch():
  """Also with SAM, whose second gradient (grad_fn) must accumulate the same way."""
  c = _small_config()
  c.model.dropout_rate = 0.0
  c.optimizer.update(name="sam", sam_base="adamw")
  b = wiring.build(c, mesh=sharding.make_mesh(2))
  s = b.setup
  batch = sharding.global_batch(b.source().batch(0), s.mesh)
  out = []
  for accum in (1, 4):
    state = s.create_state(jax.random.key(0))
    fn = jax.jit(train_step_lib.make_train_step(s.objective, s.tx, grad_accum_steps=accum))
    state, m = fn(state, batch, jax.random.key(3))
    out.append((float(m["loss"]), float(m["grad_norm"]), jax.device_get(state.params)))
  assert out[0][0] == pytest.approx(out[1][0], rel=1e-6)
  assert out[0][1] == pytest.approx(out[1][1], rel=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
               out[0][2], out[1][2])


def test_resume_is_exact(tmp_path):
  """2K steps straight == K steps, stop, resume, K more: parameters and metrics."""
  resume_check.assert_resume_is_exact(_small_config(), str(tmp_path), stop_after=6)


def test_relative_workdir_saves_and_resumes(tmp_path, monkeypatch):
  """Orbax refuses relative paths, and only in its background thread: resolved up front."""
  monkeypatch.chdir(tmp_path)
  c = _small_config()
  wiring.train(c, "runs/rel", stop_after=6)
  assert wiring.train(c, "runs/rel").step == 12
  assert checkpointing.Checkpointer("runs/rel/checkpoints").all_steps() == [6, 12]


def test_failed_background_save_stops_the_run(tmp_path, monkeypatch):
  """A save that fails in orbax's thread is raised at the next log step, naming the
  directory, instead of the run training on without checkpoints."""
  monkeypatch.chdir(tmp_path)
  monkeypatch.setattr(checkpointing, "absolute", lambda d: d)   # orbax: path not absolute
  with pytest.raises(checkpointing.CheckpointSaveError, match="runs/bad/checkpoints"):
    wiring.train(_small_config(), "runs/bad")
  steps = [r["step"] for r in metric_writers.read_jsonl("runs/bad/metrics.jsonl")]
  assert max(steps) < 12


def test_tensorboard_reads_back_the_run(workdir):
  from tensorboard.backend.event_processing import event_accumulator  # pylint: disable=g-import-not-at-top
  wiring.train(_small_config(), workdir)
  acc = event_accumulator.EventAccumulator(os.path.join(workdir, metric_writers.TB_DIR))
  acc.Reload()
  tags = set(acc.Tags()["scalars"])
  assert {"train/loss", "train/lr", "train/grad_norm", "perf/steps_per_sec",
          "perf/tokens_per_sec", "eval/loss", "eval/expected_ce", "eval/optimal_loss",
          "eval/loss_gap"} <= tags
  assert [e.step for e in acc.Scalars("eval/loss")] == [6, 12]
  with open(os.path.join(workdir, "config.json")) as f:
    assert json.load(f)["model"]["hidden_size"] == 16


def test_nonfinite_loss_stops_and_keeps_last_checkpoint(workdir):
  c = _small_config(num_steps=20)
  b = wiring.build(c)
  s, good = b.setup, b.source()

  def batches():
    for i in range(100):
      b = good.batch(i)
      b["poison"] = np.full(len(b["lengths"]), float(i >= 8), np.float32)
      yield b

  def poison(params, prep, raw, rng, loss):
    return loss + jnp.where(jnp.sum(raw["poison"]) > 0, jnp.nan, 0.0)

  with pytest.raises(trainer.NonFiniteLossError, match="step 9.*checkpoint \\(6\\)"):
    trainer.train(c, workdir, setup=s, source=input_pipeline.IteratorSource(batches(), 16),
                  validation=b.validation(), loss_transform=poison)
  ckpt = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"))
  assert ckpt.all_steps() == [6]
  restored = ckpt.restore(6, s.abstract_state())
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(jax.device_get(restored.state.params)))


@pytest.mark.parametrize("field,value,match", [
    ("optimizer.name", "adamax", "optimizer.name"),
    ("train.batch_size", 12, "train.batch_size .* 8 devices"),
    ("model.hidden_size", 0, "model.hidden_size"),
    ("train.num_steps", -1, "train.num_steps"),
    ("optimizer.learning_rate", 0.0, "optimizer.learning_rate"),
    ("data.language", "klingon", "data.language"),
    ("model.seq_len", 5, "model.seq_len"),
    ("masking.rate", 1.5, "masking.rate"),
])
def test_bad_config_fails_at_start_naming_the_field(workdir, field, value, match):
  c = _small_config()
  section, name = field.split(".")
  c[section][name] = value
  with pytest.raises(ValueError, match=match):
    wiring.train(c, workdir)
  assert not os.path.exists(os.path.join(workdir, "checkpoints"))


def test_incompatible_checkpoint_is_refused(workdir):
  wiring.train(_small_config(num_steps=6), workdir)
  c = _small_config(num_steps=12)
  c.model.hidden_size = 32
  with pytest.raises(checkpointing.IncompatibleCheckpointError, match="model.hidden_size"):
    wiring.train(c, workdir)
  # The old run is untouched and still resumable.
  assert checkpointing.Checkpointer(os.path.join(workdir, "checkpoints")).all_steps() == [6]


def _params(workdir, step):
  setup = wiring.trained_run(workdir).setup
  ckpt = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"))
  try:
    restored = ckpt.restore(step, setup.abstract_state())
  finally:
    ckpt.close()
  return restored.state.params, restored.meta


def test_phase_two_starts_from_the_source_checkpoint(tmp_path):
  """A two-phase run's step 0 is the source run's last checkpoint, bit for bit, with a
  fresh optimizer (here another one) and the data stream continued, not replayed."""
  first, second = str(tmp_path / "phase1"), str(tmp_path / "phase2")
  wiring.train(_small_config(num_steps=6), first)
  c = _small_config(num_steps=4, checkpoint_every=2, keep_every=2)
  c.optimizer.update(name="sgd", learning_rate=1e-2)
  c.init.workdir = first
  wiring.train(c, second)
  p1, meta1 = _params(first, 6)
  p2, meta2 = _params(second, 0)
  jax.tree.map(np.testing.assert_array_equal, p1, p2)
  assert int(meta2["data_position"]) == int(meta1["data_position"]) == 6
  assert int(_params(second, 4)[1]["data_position"]) == 10
  def gaps(d):
    records = metric_writers.read_jsonl(os.path.join(d, metric_writers.JSONL))
    return {r["step"]: r["eval/loss_gap"] for r in records if "eval/loss_gap" in r}
  assert gaps(second)[0] == pytest.approx(gaps(first)[6], rel=1e-6)   # same validation set
  # Another model cannot start from it, and says so in one line.
  c2 = _small_config(num_steps=4)
  c2.model.hidden_size = 32
  c2.init.workdir = first
  with pytest.raises(checkpointing.IncompatibleCheckpointError, match="init.workdir"):
    wiring.train(c2, str(tmp_path / "other"))
  c2.model.hidden_size, c2.init.step = 16, 5
  with pytest.raises(FileNotFoundError, match="init.step"):
    wiring.train(c2, str(tmp_path / "other2"))
