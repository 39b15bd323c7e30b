r"""Expands an experiment's sweep into one command per run, and runs or submits them.

  # print the commands (one per run of the sweep, each with its own workdir)
  python -m launch.sweep --config=experiments/configs/algorithm.py:pcfg_small \
      --workdir=runs/algorithm --dry_run
  # run them here, two at a time, then the analysis
  python -m launch.sweep --config=experiments/configs/algorithm.py:pcfg_small \
      --workdir=runs/algorithm --mode=local --parallel=2
  # one SLURM job per run (launch/slurm.sbatch), or one after another on a TPU VM
  # (add --dry_run to see the sbatch / gcloud lines first)
  python -m launch.sweep --config=experiments/configs/model_size.py:pcfg \
      --workdir=/shared/runs/size --mode=slurm --sbatch_args=--nodes=1,--gpus-per-node=8
  python -m launch.sweep --config=experiments/configs/algorithm.py:pcfg_235m \
      --workdir=gs://BUCKET/algorithm --mode=tpu --tpu_name=flat --zone=us-central2-b

A run's command is ``python -m experiments.run --config=<config> --workdir=<workdir>
--runs=<name> --noanalyze``, whose results land in ``<workdir>/<name>``; in a two-phase
sweep (``phase1`` set) each job is a phase-1 run's: ``--runs=<a>,<b>,...``, the runs that
continue from it, so that parallel jobs never train one phase 1 twice. Extra
``--config.*`` overrides given after ``--`` are passed to every run. The final
``experiments.analyze`` command gathers ``<workdir>/*``.
"""
import shlex
import subprocess
import sys
from concurrent import futures

from absl import app
from absl import flags
from ml_collections import config_flags

from experiments import sweep

FLAGS = flags.FLAGS


def run_commands(config_arg: str, config, workdir: str, extra=()) -> list[tuple[str, list[str]]]:
  """[(job name, argv)]: one job per run of the sweep; in a two-phase sweep, one job per
  phase-1 run, running the runs that continue from it one after another (so that no two
  jobs ever train the same phase 1)."""
  jobs: dict[str, list[str]] = {}
  for r in sweep.expand(config):
    jobs.setdefault(r.phase1.name if r.phase1 else r.name, []).append(r.name)
  return [(job, ["python", "-m", "experiments.run", f"--config={config_arg}",
                 f"--workdir={workdir}", f"--runs={','.join(names)}", "--noanalyze", *extra])
          for job, names in jobs.items()]


def analyze_command(config, workdir: str) -> list[str]:
  a = config.analysis
  tol = a.get("tolerance", 0.05)
  cmd = ["python", "-m", "experiments.analyze", f"--workdirs={workdir}/*",
         f"--out={workdir}/report", f"--tolerance={tol}",
         f"--num_bootstrap={a.get('num_bootstrap', 1000)}"]
  if a.get("drift_window"):          # the mechanism experiment's drift report
    cmd.append(f"--drift_window={a.drift_window}")
  return cmd


def wrap(mode: str, name: str, argv: list[str], *, sbatch_args=(), tpu_name="", zone="",
         experiment_name="flatness") -> list[str]:
  """The command line that runs ``argv`` in ``mode``."""
  if mode == "local":
    return argv
  if mode == "slurm":
    return ["sbatch", f"--job-name={experiment_name}-{name}", *sbatch_args,
            "launch/slurm.sbatch", *argv]
  if mode == "tpu":
    if not tpu_name or not zone:
      raise ValueError("--mode=tpu needs --tpu_name and --zone")
    return ["python", "-m", "launch.tpu_vm", "run", f"--name={tpu_name}", f"--zone={zone}",
            f"--log={experiment_name}-{name}.log", "--", *argv]
  raise ValueError(f"unknown mode {mode!r}")


def plan(mode: str, config_arg: str, config, workdir: str, extra=(), **wrap_args):
  """[(name, command line)] that ``mode`` executes for the sweep."""
  runs = run_commands(config_arg, config, workdir, extra)
  if mode == "tpu":   # one VM: the runs go one after another in one background job
    chain = " && ".join(shlex.join(c) for c in [cmd for _, cmd in runs]
                        + [analyze_command(config, workdir)])
    runs = [("all", ["bash", "-c", chain])]
  return [(name, wrap(mode, name, cmd, experiment_name=config.name, **wrap_args))
          for name, cmd in runs]


def define_flags():
  """Command-line flags; defined only when run as a script."""
  config_flags.DEFINE_config_file("config", None, "Experiment config file:variant.")
  flags.DEFINE_string("workdir", None, "Experiment directory (runs go below it).")
  flags.DEFINE_enum("mode", "local", ["local", "slurm", "tpu"],
                    "Run here, submit to SLURM, or run on a TPU VM.")
  flags.DEFINE_bool("dry_run", False, "Only print the command lines.")
  flags.DEFINE_integer("parallel", 1, "Local runs at a time.")
  flags.DEFINE_list("sbatch_args", [], "Extra sbatch arguments (slurm).")
  flags.DEFINE_string("tpu_name", "", "TPU VM name (tpu).")
  flags.DEFINE_string("zone", "", "TPU VM zone (tpu).")
  flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  extra = [a for a in argv[1:] if a != "--"]
  config, workdir, mode = FLAGS.config, FLAGS.workdir.rstrip("/"), FLAGS.mode
  config_arg = next((a.split("=", 1)[1] for a in sys.argv if a.startswith("--config=")), None)
  if config_arg is None:
    raise app.UsageError("give the config as --config=FILE:VARIANT")
  cmds = plan(mode, config_arg, config, workdir, extra, sbatch_args=FLAGS.sbatch_args,
              tpu_name=FLAGS.tpu_name, zone=FLAGS.zone)
  for _, cmd in cmds:
    print(shlex.join(cmd), flush=True)
  if mode != "local":
    print("# when every run is done:", shlex.join(analyze_command(config, workdir)))
  if FLAGS.dry_run:
    return
  with futures.ThreadPoolExecutor(max(1, FLAGS.parallel if mode == "local" else 1)) as pool:
    codes = list(pool.map(lambda c: subprocess.call(c[1]), cmds))
  if any(codes):
    sys.exit(next(c for c in codes if c))
  if mode == "local":
    sys.exit(subprocess.call(analyze_command(config, workdir)))


if __name__ == "__main__":
  define_flags()
  app.run(main)
