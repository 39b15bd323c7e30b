"""Faults and bad input: damaged checkpoints fall back, the run's record cannot lie, user
errors are one line, a full disk is one line, grammars of any valid shape work."""
import contextlib
import glob
import json
import os
import shutil
import subprocess

import jax.numpy as jnp
import numpy as np
import pytest

import subprocesses
from data_gen import describe
from data_gen import registry
from experiments import wiring
from experiments.configs import languages
from experiments.configs import pretrain
from flatness.runtime import checkpointing
from flatness.runtime import metric_writers
from flatness.training import input_pipeline
from flatness.training import trainer

OVERRIDES = {"model.hidden_size": 16, "model.mlp_dim": 32, "data.num_validation": 32,
             "train.batch_size": 16, "train.log_every": 3, "train.eval_every": 6,
             "train.checkpoint_every": 6, "train.max_to_keep": 2}


def _config(steps, **extra):
  c = pretrain.get_config("tiny")
  c.update_from_flattened_dict(dict(OVERRIDES, **{"train.num_steps": steps}, **extra))
  return c


def _losses(workdir):
  return {r["step"]: r["train/loss"]
          for r in metric_writers.read_jsonl(os.path.join(workdir, metric_writers.JSONL))
          if "train/loss" in r}


def _truncate_largest_array_file(step_dir):
  # Every data file of the state, not only the largest: the largest can hold bytes the
  # restore never reads (its first half then still holds all it needs), and which file is
  # largest depends on how the background writers split the arrays, so truncating only it
  # left the checkpoint readable in one CI run.
  for path in glob.glob(os.path.join(step_dir, "state", "**", "d", "*"), recursive=True):
    os.truncate(path, os.path.getsize(path) // 2)


DAMAGE = {
    "truncated array file": _truncate_largest_array_file,
    "truncated metadata": lambda d: os.truncate(os.path.join(d, "meta", "metadata"), 10),
    "missing state item": lambda d: shutil.rmtree(os.path.join(d, "state")),
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A 12-step run with checkpoints at 6 and 12, and its training losses."""
  workdir = str(tmp_path_factory.mktemp("trained") / "run")
  wiring.train(_config(12), workdir)
  return workdir, _losses(workdir)


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_latest_checkpoint_falls_back_to_the_previous_one(trained, tmp_path, damage):
  source, losses = trained
  workdir = str(tmp_path / "run")
  shutil.copytree(source, workdir)
  ckpts = os.path.join(workdir, "checkpoints")
  DAMAGE[damage](os.path.join(ckpts, "12"))
  result = wiring.train(_config(12), workdir)
  # Resumed from step 6 and redid 7..12 exactly as the first time.
  assert result.step == 12
  assert _losses(workdir) == losses
  # The damaged checkpoint is kept aside, not deleted; the redone one took its place.
  assert os.listdir(ckpts + ".damaged") == ["12"]
  assert checkpointing.Checkpointer(ckpts).all_steps() == [6, 12]
  with open(os.path.join(workdir, trainer.RUN_LOG)) as f:
    events = [json.loads(line) for line in f]
  assert [(e["event"], e["step"]) for e in events] == [("start", 0), ("resume", 6)]


def test_no_readable_checkpoint_refuses_and_moves_nothing(trained, tmp_path):
  source, _ = trained
  workdir = str(tmp_path / "run")
  shutil.copytree(source, workdir)
  ckpts = os.path.join(workdir, "checkpoints")
  for step in ("6", "12"):
    DAMAGE["missing state item"](os.path.join(ckpts, step))
  with pytest.raises(checkpointing.CheckpointRestoreError,
                     match=r"step 12: .*12/state: missing.*step 6: .*Nothing was moved"):
    wiring.train(_config(18), workdir)
  assert sorted(os.listdir(ckpts)) == ["12", "6"]
  assert not os.path.exists(ckpts + ".damaged")


def test_the_record_survives_a_failed_resumption(trained, tmp_path):
  """A resumption with a changed learning rate that ends in a NaN leaves config.json as the
  run started; the run log says what changed and how it ended; checkpoints carry their own
  config."""
  source, _ = trained
  workdir = str(tmp_path / "run")
  shutil.copytree(source, workdir)
  with open(os.path.join(workdir, trainer.CONFIG_JSON)) as f:
    before = f.read()
  c = _config(24, **{"optimizer.learning_rate": 1e6})
  b = wiring.build(c)
  s, good = b.setup, b.source()

  def batches():   # from the checkpoint's data position on; NaN from step 16
    for i in range(12, 100):
      b = good.batch(i)
      b["poison"] = np.full(len(b["lengths"]), float(i >= 15), np.float32)
      yield b

  def poison(params, prep, raw, rng, loss):
    return loss + jnp.where(jnp.sum(raw["poison"]) > 0, jnp.nan, 0.0)

  with pytest.raises(trainer.NonFiniteLossError):
    trainer.train(c, workdir, setup=s, source=input_pipeline.IteratorSource(batches(), 16),
                  validation=b.validation(), loss_transform=poison)
  with open(os.path.join(workdir, trainer.CONFIG_JSON)) as f:
    assert f.read() == before
  assert json.loads(before)["optimizer"]["learning_rate"] == 1e-2
  with open(os.path.join(workdir, trainer.RUN_LOG)) as f:
    events = [json.loads(line) for line in f]
  assert [e["event"] for e in events] == ["start", "resume", "failed"]
  assert events[1]["changed"] == {"optimizer.learning_rate": [1e-2, 1e6],
                                  "train.num_steps": [12, 24]}
  assert "NonFiniteLossError" in events[2]["error"]
  meta = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints")).read_meta(12)
  assert meta["config"]["optimizer"]["learning_rate"] == 1e-2


def test_a_missing_config_json_cannot_hide_another_language(trained, tmp_path):
  source, _ = trained
  workdir = str(tmp_path / "run")
  shutil.copytree(source, workdir)
  with open(os.path.join(workdir, trainer.CONFIG_JSON)) as f:
    original = json.load(f)
  os.remove(os.path.join(workdir, trainer.CONFIG_JSON))
  with pytest.raises(checkpointing.IncompatibleCheckpointError, match="data.seed"):
    wiring.train(_config(18, **{"data.seed": 1}), workdir)
  # The same run resumes, and the record is rebuilt from the checkpoint's own copy.
  wiring.train(_config(18), workdir)
  with open(os.path.join(workdir, trainer.CONFIG_JSON)) as f:
    assert json.load(f) == original


SHORT_GRAMMAR = "S A B 1.0\nA a 0.5\nA c 0.5\nB b 1.0\n"   # every sentence has 2 words


def test_a_grammar_of_two_word_sentences_describes_trains_and_skips_task_b(tmp_path):
  path = tmp_path / "short.txt"
  path.write_text(SHORT_GRAMMAR)
  data = languages.get_config("pcfg").data
  data.pcfg.grammar_file = str(path)
  language = registry.make_language(data)
  assert language.max_length == 2
  assert sorted(language.tasks()) == ["A", "C"]      # B labels the first 4 words
  summary = describe.describe(language, num_sentences=40, num_bert=8, num_task=40)
  assert sorted(summary["tasks"]) == ["A", "C"]
  assert summary["tasks"]["C"]["defined_fraction"] == 1.0   # every sentence spans 2 words
  # Training: BERT masking's 5 predictions are capped at the 2 word positions.
  c = _config(4, **{"data.language": "pcfg", "data.pcfg.grammar_file": str(path)})
  result = wiring.train(c, str(tmp_path / "run"))
  assert np.isfinite(result.eval_metrics["loss_gap"])


# ---- Entry points as a user runs them: one line, exit code 2, no traceback.

TINY = "--config=experiments/configs/pretrain.py:tiny"


def _assert_one_line_error(proc, *fragments):
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith("error: "), proc.stderr[-3000:]
  for fragment in fragments:
    assert fragment in last, last


def test_user_errors_are_one_line(tmp_path):
  work = f"--workdir={tmp_path / 'run'}"
  binary, malformed = tmp_path / "binary.txt", tmp_path / "bad.txt"
  binary.write_bytes(b"S A B 1.0\nA a\xff\xfe 0.5\n")
  malformed.write_text("S A B 1.0\nA a 0.5 extra\n")
  describe_cfg = "--config=experiments/configs/languages.py:pcfg"
  cases = [
      (("experiments.pretrain", TINY, work, "--config.model.nosuch=1"),
       ("--config.model.nosuch", "no field 'nosuch'")),
      (("experiments.pretrain", "--config=experiments/configs/nosuch.py:tiny", work),
       ("--config", "nosuch.py")),
      (("experiments.pretrain", "--config=experiments/configs/pretrain.py:nosuch", work),
       ("unknown variant 'nosuch'",)),
      (("experiments.pretrain", TINY, work, "--config.train.batch_size=-1"),
       ("train.batch_size must be positive",)),
      (("data_gen.describe", describe_cfg, f"--grammar_file={binary}"),
       (str(binary), "not a text rule file")),
      (("data_gen.describe", describe_cfg, f"--grammar_file={malformed}"),
       (f"{malformed}:2:", "not a number")),
  ]
  for args, fragments in cases:
    _assert_one_line_error(subprocesses.run_module(*args), *fragments)
  # --debug shows the traceback.
  proc = subprocesses.run_module("experiments.pretrain", TINY, work,
                                 "--config.train.batch_size=-1", "--debug")
  assert proc.returncode != 0 and "Traceback" in proc.stderr


@contextlib.contextmanager
def _tmpfs(path, options):
  os.makedirs(path, exist_ok=True)
  try:
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], check=True,
                   capture_output=True, timeout=30)
  except (OSError, subprocess.SubprocessError):
    pytest.skip("cannot mount a tmpfs here (needs root); the disk-full and read-only cases "
                "are not exercised")
  try:
    yield str(path)
  finally:
    subprocess.run(["umount", str(path)], check=False, capture_output=True, timeout=30)


def test_read_only_workdir_is_one_line(tmp_path):
  with _tmpfs(tmp_path / "ro", "ro,size=1m") as ro:
    proc = subprocesses.run_module("experiments.pretrain", TINY, f"--workdir={ro}/run")
  _assert_one_line_error(proc, "Read-only file system", "--workdir")


def test_disk_full_is_one_line_and_the_last_checkpoint_resumes(tmp_path):
  with _tmpfs(tmp_path / "small", "size=1500k") as small:
    proc = subprocesses.run_module(
        "experiments.pretrain", TINY, f"--workdir={small}/run", "--config.train.num_steps=400",
        "--config.train.checkpoint_every=10", "--config.train.keep_every=10",
        "--config.train.log_every=10")
    # Whichever notices first (the checkpoint writer or a metrics file) names the cause
    # and the last good checkpoint.
    _assert_one_line_error(proc, "No space left on device", "the last checkpoint is step")
    assert len(proc.stderr.splitlines()) < 40, proc.stderr[-3000:]   # no flood
    shutil.copytree(f"{small}/run", tmp_path / "run",
                    ignore=shutil.ignore_patterns("*.orbax-checkpoint-tmp*"))
  # Freed: the same command resumes from the last good checkpoint and finishes.
  last = checkpointing.Checkpointer(str(tmp_path / "run" / "checkpoints")).latest_step()
  assert last and last % 10 == 0
  proc = subprocesses.run_module("experiments.pretrain", TINY, f"--workdir={tmp_path / 'run'}",
                                 f"--config.train.num_steps={last + 10}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert f"Resumed from step {last}" in proc.stderr
