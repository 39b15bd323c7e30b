r"""Runs one command as N local JAX processes (a loopback `jax.distributed` cluster).

  python -m launch.local --num_processes=2 -- \
      python -m experiments.pretrain --config=experiments/configs/pretrain.py:tiny \
      --workdir=/tmp/flatness/tiny_2proc

Every process gets ``JAX_COORDINATOR_ADDRESS=127.0.0.1:<port>``,
``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID`` (read by
`flatness.runtime.distributed.initialize`) and ``--devices_per_process`` fake CPU
devices. Process 0's output is streamed; the others go to
``<process_logs>/process_<i>.log``. Exits with the first non-zero exit code.
This is how the tests exercise multi-host code on one machine.
"""
import os
import socket
import subprocess
import sys
import tempfile

from absl import app
from absl import flags

_DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count"


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def with_device_count(xla_flags: str, devices: int) -> str:
  """``xla_flags`` with its fake-CPU-device count set to ``devices``; the user's other XLA
  flags (dumps, optimisation levels) are kept."""
  kept = [f for f in xla_flags.split() if not f.startswith(_DEVICE_COUNT_FLAG)]
  return " ".join(kept + [f"{_DEVICE_COUNT_FLAG}={devices}"])


def process_env(i: int, n: int, port: int, devices: int, base=None) -> dict:
  env = dict(os.environ if base is None else base)
  env.update(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES=str(n),
             JAX_PROCESS_ID=str(i), JAX_PLATFORMS="cpu",
             XLA_FLAGS=with_device_count(env.get("XLA_FLAGS", ""), devices))
  return env


def launch(cmd: list[str], num_processes: int, *, devices_per_process: int = 1,
           log_dir: str | None = None, cwd: str | None = None, timeout: float | None = None,
           env=None) -> list[int]:
  """Starts ``cmd`` ``num_processes`` times as one JAX cluster; returns the exit codes."""
  port = free_port()
  log_dir = log_dir or tempfile.mkdtemp(prefix="flatness_local_")
  procs, logs = [], []
  for i in range(num_processes):
    out = None
    if i > 0:
      out = open(os.path.join(log_dir, f"process_{i}.log"), "w")
      logs.append(out)
    procs.append(subprocess.Popen(cmd, env=process_env(i, num_processes, port,
                                                       devices_per_process, env),
                                  stdout=out, stderr=subprocess.STDOUT if out else None,
                                  cwd=cwd))
  try:
    return [p.wait(timeout=timeout) for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
    for f in logs:
      f.close()


def _define_flags():
  return (flags.DEFINE_integer("num_processes", 2, "Processes to start."),
          flags.DEFINE_integer("devices_per_process", 1, "Fake CPU devices per process."),
          flags.DEFINE_string("process_logs", "", "Logs of processes 1.. (default: a temp dir)."))


def main(argv, n, devices, log_dir):
  cmd = argv[1:]
  if cmd and cmd[0] == "--":
    cmd = cmd[1:]
  if not cmd:
    raise app.UsageError("give the command after --")
  codes = launch(cmd, n.value, devices_per_process=devices.value, log_dir=log_dir.value or None)
  sys.exit(next((c for c in codes if c), 0))


if __name__ == "__main__":
  _flags = _define_flags()
  app.run(lambda argv: main(argv, *_flags))
