"""Scale-out: two JAX processes equal one, SIGTERM-and-relaunch equals uninterrupted, launchers."""
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

import subprocesses
from experiments import wiring
from experiments.configs import algorithm
from experiments.configs import continue_training
from experiments.configs import pretrain
from flatness.runtime import checkpointing
from flatness.runtime import sharding
from launch import local
from launch import sweep
from launch import tpu_vm

REPO = subprocesses.REPO
OVERRIDES = {"model.hidden_size": 16, "model.mlp_dim": 32, "data.num_validation": 32,
             "train.batch_size": 16, "train.log_every": 5, "train.eval_every": 1000,
             "train.checkpoint_every": 5}
TINY = ["--config=experiments/configs/pretrain.py:tiny"] + [
    f"--config.{k}={v}" for k, v in OVERRIDES.items()]


def _pretrain(workdir, *extra):
  return [sys.executable, "-m", "experiments.pretrain", f"--workdir={workdir}", *TINY, *extra]


def _config(steps, checkpoint_every=5):
  c = pretrain.get_config("tiny")
  c.update_from_flattened_dict(dict(OVERRIDES, **{"train.num_steps": steps,
                                                  "train.checkpoint_every": checkpoint_every}))
  return c


def _train_here(workdir, steps, devices, checkpoint_every=5):
  """The reference run, in this process (cheaper than a subprocess)."""
  c = _config(steps, checkpoint_every)
  return jax.device_get(wiring.train(c, str(workdir),
                                     mesh=sharding.make_mesh(devices)).state.params)


def _final_params(workdir, steps):
  c = _config(steps)
  setup = wiring.build(c, mesh=sharding.make_mesh(1)).setup
  ckpt = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"))
  try:
    assert ckpt.latest_step() == steps
    return jax.device_get(ckpt.restore(steps, setup.abstract_state()).state.params)
  finally:
    ckpt.close()


def _assert_close(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(x, y, rtol=2e-5, atol=2e-6)


def test_two_processes_train_like_one(tmp_path):
  two = tmp_path / "two"
  steps = ["--config.train.num_steps=10"]
  codes = local.launch(_pretrain(two, *steps), 2, devices_per_process=1, cwd=REPO,
                       timeout=600, log_dir=str(tmp_path), env=subprocesses.env(1))
  assert codes == [0, 0], open(tmp_path / "process_1.log").read()[-3000:]
  _assert_close(_train_here(tmp_path / "one", 10, devices=2), _final_params(str(two), 10))


def test_sigterm_then_relaunch_equals_an_uninterrupted_run(tmp_path):
  straight, resumed = tmp_path / "straight", tmp_path / "resumed"
  # Few regular checkpoints: the one that matters is the one SIGTERM forces.
  steps = ["--config.train.num_steps=400", "--config.train.checkpoint_every=200"]
  proc = subprocess.Popen(_pretrain(resumed, *steps), cwd=REPO, env=subprocesses.env(1),
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  metrics = resumed / "metrics.jsonl"
  deadline = time.time() + 300
  while not (metrics.exists() and metrics.stat().st_size > 0) and time.time() < deadline:
    time.sleep(0.2)
  proc.send_signal(signal.SIGTERM)
  assert proc.wait(timeout=300) == 75      # preempted: checkpointed, "relaunch me"
  stopped = checkpointing.Checkpointer(str(resumed / "checkpoints"))
  stopped_at = stopped.latest_step()
  stopped.close()
  assert 0 < stopped_at < 400
  subprocess.run(_pretrain(resumed, *steps), check=True, cwd=REPO, env=subprocesses.env(1),
                 timeout=600, capture_output=True)
  _assert_close(_train_here(straight, 400, devices=1, checkpoint_every=200),
                _final_params(str(resumed), 400))


def test_sweep_expands_to_one_command_and_workdir_per_run():
  config = algorithm.get_config("tiny")
  arg = "experiments/configs/algorithm.py:tiny"
  cmds = sweep.plan("local", arg, config, "runs/algo", ["--config.seed=3"])
  assert [n for n, _ in cmds] == ["adamw", "sgd", "sam", "adversarial"]
  assert cmds[1][1] == ["python", "-m", "experiments.run", f"--config={arg}",
                        "--workdir=runs/algo", "--runs=sgd", "--noanalyze", "--config.seed=3"]
  slurm = sweep.plan("slurm", arg, config, "runs/algo", sbatch_args=["--nodes=2"])
  assert slurm[0][1][:4] == ["sbatch", "--job-name=algorithm-adamw", "--nodes=2",
                             "launch/slurm.sbatch"]
  assert slurm[0][1][4:] == cmds[0][1][:-1]
  (name, tpu), = sweep.plan("tpu", arg, config, "gs://b/algo", tpu_name="v", zone="z")
  assert tpu[:6] == ["python", "-m", "launch.tpu_vm", "run", "--name=v", "--zone=z"]
  assert "--runs=adversarial --noanalyze && python -m experiments.analyze" in tpu[-1]


def test_two_phase_sweeps_run_each_shared_phase1_in_one_job():
  """Jobs run in parallel; two of them must never train the same phase-1 run."""
  config = continue_training.get_config("pcfg_compact")
  arg = "experiments/configs/continue_training.py:pcfg_compact"
  cmds = sweep.plan("local", arg, config, "runs/cont")
  assert [n for n, _ in cmds] == [f"phase1_seed{k}" for k in range(config.seeds)]
  assert [c[1][5] for c in cmds] == [f"--runs=adamw_seed{k},exact_seed{k}"
                                     for k in range(config.seeds)]


def test_launcher_dry_runs_print_the_expected_command_lines():
  out = subprocess.run([sys.executable, "-m", "launch.sweep", "--config="
                        "experiments/configs/algorithm.py:tiny", "--workdir=/tmp/x",
                        "--mode=slurm", "--dry_run"], cwd=REPO, check=True, text=True,
                       capture_output=True, env=subprocesses.env(1)).stdout
  assert ("sbatch --job-name=algorithm-sam launch/slurm.sbatch python -m experiments.run "
          "--config=experiments/configs/algorithm.py:tiny --workdir=/tmp/x --runs=sam "
          "--noanalyze") in out
  out = subprocess.run([sys.executable, "-m", "launch.tpu_vm", "create", "--name=v",
                        "--zone=us-central2-b", "--accelerator=v4-32", "--dry_run"], cwd=REPO,
                       check=True, text=True, capture_output=True).stdout
  assert ("gcloud compute tpus tpu-vm create v --zone=us-central2-b --accelerator-type=v4-32 "
          "--version=tpu-ubuntu2204-base") in out
  run = tpu_vm.commands("run", name="v", zone="z", run=["python", "-m", "experiments.run",
                                                         "--workdir=gs://b/x"])
  assert run[0][:7] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "v", "--zone=z"]
  assert "--worker=all" in run[0]
  assert "nohup python -m experiments.run --workdir=gs://b/x" in run[0][-1]
  with pytest.raises(ValueError, match="unknown action"):
    tpu_vm.commands("reboot", name="v", zone="z")


def test_a_checkpoint_cut_off_mid_write_leaves_the_last_good_one(tmp_path):
  """A process killed while orbax writes step 10 leaves a temporary directory behind;
  the run resumes from step 5 and finishes with the uninterrupted run's parameters."""
  c = _config(5)
  mesh = sharding.make_mesh(1)
  wiring.train(c, str(tmp_path / "cut"), mesh=mesh)
  partial = tmp_path / "cut" / "checkpoints" / "10.orbax-checkpoint-tmp-1700000000000000"
  (partial / "state").mkdir(parents=True)
  (partial / "state" / "garbage").write_bytes(b"\0" * 100)
  ckpt = checkpointing.Checkpointer(str(tmp_path / "cut" / "checkpoints"))
  assert ckpt.latest_step() == 5
  ckpt.close()
  c.train.num_steps = 10
  cut = wiring.train(c, str(tmp_path / "cut"), mesh=mesh)
  straight = wiring.train(c, str(tmp_path / "straight"), mesh=mesh)
  _assert_close(jax.device_get(cut.state.params), jax.device_get(straight.state.params))


def test_each_process_keeps_the_users_xla_flags():
  flags = "--xla_dump_to=/tmp/d --xla_force_host_platform_device_count=8 --xla_cpu_foo=1"
  env = local.process_env(1, 2, 1234, 3, base={"XLA_FLAGS": flags})
  assert env["XLA_FLAGS"].split() == ["--xla_dump_to=/tmp/d", "--xla_cpu_foo=1",
                                      "--xla_force_host_platform_device_count=3"]
  assert local.process_env(0, 2, 1234, 1, base={})["XLA_FLAGS"] == (
      "--xla_force_host_platform_device_count=1")
