"""End to end: each experiment config's tiny variant runs and writes every metric and figure."""
import json
import os

import pytest

from experiments import runner
from experiments import sweep
from experiments.configs import algorithm
from experiments.configs import continue_training
from experiments.configs import mechanism
from experiments.configs import model_size
from experiments.configs import pretrain
from flatness.analysis import correlation as analysis
from flatness.model import presets
from flatness.runtime import checkpoint_walk
from flatness.runtime import metric_writers
from flatness.training import run_config


def _merged(workdir):
  steps = {}
  for rec in metric_writers.read_jsonl(os.path.join(workdir, metric_writers.JSONL)):
    steps.setdefault(rec["step"], {}).update(rec)
  return steps


@pytest.mark.parametrize("module,extra", [
    (continue_training, ()),
    (model_size, ("curvature/trace_enlarged",)),
    (algorithm, ()),
])
def test_tiny_experiment_end_to_end(module, extra, tmp_path):
  config = module.get_config("tiny")
  runs = sweep.expand(config)
  timings, paths = runner.run_experiment(config, str(tmp_path))
  assert set(timings) == {r.name for r in runs}
  for run in runs:
    workdir = tmp_path / run.name
    steps = _merged(str(workdir))
    keep = config.pretrain.train.keep_every
    # A two-phase run's step 0 is its phase 1's end: measured like the rest.
    ckpt_steps = list(range(0 if run.phase1 else keep, config.pretrain.train.num_steps + 1,
                            keep))
    for s in ckpt_steps:
      for tag in ("eval/loss_gap", "curvature/trace", "curvature/trace_stderr", "curvature/loss",
                  "downstream/A/probe_acc", "downstream/A/lookup_acc") + extra:
        assert tag in steps[s], (run.name, s, tag)
      assert 0 <= steps[s]["downstream/A/probe_acc"] <= 1
    info = json.load(open(workdir / analysis.RUN_INFO))
    assert info["experiment"] == config.name and info["name"] == run.name
  if runs[0].phase1:
    # Every arm of a seed continues from one shared phase-1 run, and starts at its loss.
    assert {r.phase1.name for r in runs} == {"phase1_seed0"}
    end = _merged(str(tmp_path / "phase1_seed0"))[config.phase1.train.num_steps]["eval/loss_gap"]
    for run in runs:
      assert _merged(str(tmp_path / run.name))[0]["eval/loss_gap"] == pytest.approx(end, rel=1e-6)
    assert "phase1" not in open(paths["table_csv"]).read()     # only phase 2 is analysed
  for key in ("table_csv", "report", "loss_gap", "trace", "accuracy", "accuracy_vs_trace"):
    assert os.path.getsize(paths[key]) > 0
  # Rerunning skips everything already done: no new metrics.
  before = os.path.getsize(tmp_path / runs[0].name / metric_writers.JSONL)
  runner.run_experiment(config, str(tmp_path), only=[runs[0].name], analyze_after=False)
  assert os.path.getsize(tmp_path / runs[0].name / metric_writers.JSONL) == before


def test_mechanism_end_to_end_probes_the_shared_start_once(tmp_path):
  """The mechanism's wiring: one phase 1 for every arm; tr(H) at every checkpoint; probes
  at each run's end and at the shared start once; the drift report written."""
  config = mechanism.get_config("tiny")
  runs = sweep.expand(config)
  _, paths = runner.run_experiment(config, str(tmp_path))
  last = config.pretrain.train.num_steps
  probed_starts = []
  for run in runs:
    steps = _merged(str(tmp_path / run.name))
    assert all("curvature/trace" in steps[s] for s in (0, last // 2, last)), run.name
    assert "downstream/A/probe_acc" in steps[last]
    assert "downstream/A/probe_acc" not in steps[last // 2]
    probed_starts += ["downstream/A/probe_acc" in steps[0]]
  assert probed_starts == [True] + [False] * (len(runs) - 1)
  text = open(paths["drift"]).read()
  assert "exact_lr0.2_b16 - sgd_lr0.2_b16" in text
  assert os.path.getsize(paths["collapse"]) > 0


def test_mechanism_seeds_measure_on_their_own_draws():
  runs = sweep.expand(mechanism.get_config("pcfg_compact"))
  seeds = {(r.config.pretrain.seed, r.config.measure.seed) for r in runs}
  assert seeds == {(0, 0), (1, 1), (2, 2)}
  assert {r.phase1.config.seed for r in runs} == {0}         # one converged start
  assert len(runs) == 11 * 3


def test_seeds_run_each_recipe_n_times_with_its_own_pretraining_seed():
  config = algorithm.get_config("tiny")
  config.seeds = 3
  runs = sweep.expand(config)
  assert [r.name for r in runs][:4] == ["adamw_seed0", "adamw_seed1", "adamw_seed2", "sgd_seed0"]
  assert len(runs) == 3 * len(config.sweep)
  for r in runs:
    group, k = r.name.rsplit("_seed", 1)
    assert r.config.pretrain.group == group and r.config.pretrain.seed == int(k)
    # The language (its own seed) is the same for every seed of every recipe.
    assert r.config.pretrain.data.seed == config.pretrain.data.seed
  assert runs[3].config.pretrain.optimizer.name == "sgd"
  config.seeds = 0
  with pytest.raises(ValueError, match="seeds"):
    sweep.expand(config)


def test_only_checkpoints_within_tolerance_are_evaluated_when_asked(tmp_path):
  writer = metric_writers.MetricWriter(str(tmp_path))
  for step, gap in ((1000, 0.3), (2000, 0.19), (3000, 0.2), (4000, 0.1)):
    writer.write_scalars(step, {"eval/loss_gap": gap, "train/loss": 1.0})
  writer.write_scalars(4500, {"train/loss": 1.0})          # no evaluation: not eligible
  writer.close()
  rows = checkpoint_walk.known_rows(str(tmp_path))
  config = algorithm.get_config("pcfg_small")
  assert config.analysis.evaluate == "within_tolerance" and config.analysis.tolerance == 0.2
  when = runner.evaluate_when(config)
  assert [s for s, row in sorted(rows.items()) if when(s, row)] == [2000, 3000, 4000]
  config.analysis.evaluate = "all"
  assert runner.evaluate_when(config) is None
  config.analysis.evaluate = "some"
  with pytest.raises(ValueError, match="analysis.evaluate"):
    runner.evaluate_when(config)


def test_two_phase_runs_share_phase1_unless_model_or_seed_differ():
  config = continue_training.get_config("pcfg_compact")
  config.sweep = tuple(config.sweep) + (
      {"name": "wide", "pretrain.model.hidden_size": 128},
      {"name": "adv", "pretrain.adversarial.lam": 0.01, "pretrain.adversarial.task": "B"})
  runs = {r.name: r for r in sweep.expand(config)}
  assert len(runs) == 4 * config.seeds
  for k in range(config.seeds):
    assert (runs[f"adamw_seed{k}"].phase1.name == runs[f"exact_seed{k}"].phase1.name
            == runs[f"adv_seed{k}"].phase1.name == f"phase1_adamw_seed{k}")
    assert runs[f"wide_seed{k}"].phase1.name == f"phase1_wide_seed{k}"
  p1, p2 = runs["adv_seed1"].phase1.config, runs["adv_seed1"].config.pretrain
  # Phase 1: the model, data and seed of the run; its own recipe; plain pre-training.
  assert p1.seed == p2.seed == 1 and p1.model == p2.model and p1.data == p2.data
  assert (p1.targets, p2.targets) == ("exact", "sampled")
  assert p1.optimizer.schedule == "cosine" and p2.optimizer.schedule == "constant"
  assert p1.adversarial.lam == 0 and p2.adversarial.lam == 0.01
  # One converged checkpoint for every seed: phase1_seed.
  config.phase1_seed = 0
  shared = {r.name: r for r in sweep.expand(config)}
  assert {r.phase1.name for n, r in shared.items() if not n.startswith("wide")} == {
      "phase1_adamw_seed0"}
  assert shared["exact_seed2"].phase1.config.seed == 0
  assert shared["exact_seed2"].config.pretrain.seed == 2
  config.sweep = tuple(e for e in config.sweep if e["name"] != "wide")
  assert {r.phase1.name for r in sweep.expand(config)} == {"phase1_seed0"}
  config.phase1_seed = -1
  with config.unlocked():
    config.phase1.model = config.pretrain.model
  with pytest.raises(ValueError, match="phase1: \\['model'\\] cannot differ"):
    sweep.expand(config)


def test_sweep_errors_name_the_problem():
  config = algorithm.get_config("tiny")
  with pytest.raises(ValueError, match="not in the sweep"):
    sweep.select(sweep.expand(config), ["nope"])
  config.sweep = ({"name": "x", "pretrain.optimizer.nme": "sgd"},)
  with pytest.raises(ValueError, match="pretrain.optimizer.nme"):
    sweep.expand(config)


@pytest.mark.parametrize("module,variant", [
    (pretrain, v) for v in ("tiny", "markov", "pcfg_small", "pcfg_compact", "pcfg", "pcfg_2m",
                            "pcfg_235m", "hmm", "teacher")] + [
    (continue_training, v) for v in ("tiny", "pcfg_compact", "pcfg_compact_lr", "quickstart",
                                     "pcfg", "pcfg_235m")] + [
    (model_size, v) for v in ("tiny", "pcfg_small", "pcfg_compact", "pcfg")] + [
    (algorithm, v) for v in ("tiny", "pcfg_small", "pcfg_compact", "pcfg_small_lambda", "pcfg",
                             "pcfg_235m")] + [
    (mechanism, v) for v in ("tiny", "pcfg_compact", "pcfg")])
def test_every_documented_variant_is_a_valid_config(module, variant):
  """No compilation: each variant named in a config docstring builds, expands and passes
  the trainer's start-up checks on 8 devices."""
  documented = variant in module.__doc__ or (
      "pcfg_<preset>" in module.__doc__ and variant.split("_", 1)[1] in presets.PRESETS)
  assert documented, f"{variant} is not in {module.__name__}'s docstring"
  config = module.get_config(variant)
  runs = sweep.expand(config) if module is not pretrain else [None]
  for run in runs:
    run_config.check_train(run.config.pretrain if run else config, 8)
    if run and run.phase1:
      run_config.check_train(run.phase1.config, 8)
  with pytest.raises(ValueError, match="unknown variant"):
    module.get_config("no_such_variant")
