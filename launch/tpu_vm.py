r"""Cloud TPU VM lifecycle for an experiment: create, copy, install, run, logs, delete.

Each subcommand prints the `gcloud` command lines it runs; ``--dry_run`` only
prints them. Multi-host slices run the same command on every worker
(``--worker=all``); `flatness.runtime.distributed` then initialises `jax.distributed`
from the TPU metadata. Workdirs should be ``gs://`` paths (orbax and the
metric writers write there directly).

  # 1. create a v4-32 slice (4 hosts) and put the code on every worker
  python -m launch.tpu_vm create --name=flat --zone=us-central2-b \
      --accelerator=v4-32 --version=tpu-ubuntu2204-base
  python -m launch.tpu_vm copy --name=flat --zone=us-central2-b
  python -m launch.tpu_vm install --name=flat --zone=us-central2-b
  # 2. run an experiment on all workers, in the background, logs to ~/flatness_run.log
  python -m launch.tpu_vm run --name=flat --zone=us-central2-b -- \
      python -m experiments.run --config=experiments/configs/algorithm.py:pcfg_235m \
      --workdir=gs://BUCKET/algorithm
  # 3. follow worker 0's log; delete the VM when done
  python -m launch.tpu_vm logs --name=flat --zone=us-central2-b
  python -m launch.tpu_vm delete --name=flat --zone=us-central2-b

Preemptible / spot VMs: add --spot to create; a preempted run exits with code 75
after checkpointing, and the same ``run`` command resumes it.
"""
import shlex
import subprocess
import sys

from absl import app
from absl import flags

FLAGS = flags.FLAGS


ACTIONS = ("create", "copy", "install", "run", "logs", "delete")


def _gcloud(verb: str, name: str, zone: str, project: str, *args: str) -> list[str]:
  cmd = ["gcloud", "compute", "tpus", "tpu-vm", verb, name, f"--zone={zone}"]
  return cmd + ([f"--project={project}"] if project else []) + list(args)


def _ssh(name, zone, project, remote: str, worker="all") -> list[str]:
  return _gcloud("ssh", name, zone, project, f"--worker={worker}", f"--command={remote}")


def commands(action: str, *, name: str, zone: str, project: str = "", accelerator: str = "v4-8",
             version: str = "tpu-ubuntu2204-base", spot: bool = False,
             remote_dir: str = "flatness", log: str = "flatness_run.log",
             run: list[str] = ()) -> list[list[str]]:
  """The command lines of ``action`` (see module docstring)."""
  if action == "create":
    return [_gcloud("create", name, zone, project, f"--accelerator-type={accelerator}",
                    f"--version={version}", *(["--spot"] if spot else []))]
  if action == "copy":
    tarball = "/tmp/flatness_code.tar.gz"
    return [["git", "archive", "--format=tar.gz", "-o", tarball, "HEAD"],
            _gcloud("scp", name, zone, project, "--worker=all", tarball, f"{name}:~/"),
            _ssh(name, zone, project, f"mkdir -p ~/{remote_dir} && tar -xzf "
                 f"~/flatness_code.tar.gz -C ~/{remote_dir}")]
  if action == "install":
    return [_ssh(name, zone, project, f"cd ~/{remote_dir} && python3 -m venv .venv && "
                 ". .venv/bin/activate && pip install -q -e '.[tpu]'")]
  if action == "run":
    if not run:
      raise ValueError("run: give the experiment command after --")
    inner = " ".join(shlex.quote(a) for a in run)
    return [_ssh(name, zone, project, f"cd ~/{remote_dir} && . .venv/bin/activate && "
                 f"nohup {inner} > ~/{log} 2>&1 &")]
  if action == "logs":
    return [_ssh(name, zone, project, f"tail -n 200 -f ~/{log}", worker="0")]
  if action == "delete":
    return [_gcloud("delete", name, zone, project, "--quiet")]
  raise ValueError(f"unknown action {action!r}; choose one of {ACTIONS}")


def define_flags():
  """Command-line flags; defined only when run as a script."""
  flags.DEFINE_string("name", None, "TPU VM name.")
  flags.DEFINE_string("zone", None, "GCP zone, e.g. us-central2-b.")
  flags.DEFINE_string("project", "", "GCP project (default: gcloud's).")
  flags.DEFINE_string("accelerator", "v4-8", "Accelerator type (create).")
  flags.DEFINE_string("version", "tpu-ubuntu2204-base", "TPU runtime version (create).")
  flags.DEFINE_bool("spot", False, "Create a spot (preemptible) VM.")
  flags.DEFINE_string("remote_dir", "flatness", "Code directory on the workers.")
  flags.DEFINE_string("log", "flatness_run.log", "Log file on the workers (run, logs).")
  flags.DEFINE_bool("dry_run", False, "Print the commands without running them.")


def main(argv):
  if len(argv) < 2 or argv[1] not in ACTIONS:
    raise app.UsageError(f"usage: python -m launch.tpu_vm {{{','.join(ACTIONS)}}} --name=... "
                         "--zone=... [-- command]")
  rest = argv[2:]
  if rest and rest[0] == "--":
    rest = rest[1:]
  if not FLAGS.name or not FLAGS.zone:
    raise app.UsageError("--name and --zone are required")
  cmds = commands(argv[1], name=FLAGS.name, zone=FLAGS.zone, project=FLAGS.project,
                  accelerator=FLAGS.accelerator, version=FLAGS.version, spot=FLAGS.spot,
                  remote_dir=FLAGS.remote_dir, log=FLAGS.log, run=rest)
  for cmd in cmds:
    print(shlex.join(cmd), flush=True)
    if not FLAGS.dry_run:
      code = subprocess.call(cmd)
      if code:
        sys.exit(code)


if __name__ == "__main__":
  define_flags()
  app.run(main)
