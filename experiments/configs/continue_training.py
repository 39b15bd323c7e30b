r"""Experiment (a): keep pre-training after the loss has converged (paper Sec. 4.1).

Two phases (`experiments/configs/experiment.py:converge_first`). Phase 1 brings the
model to the exact optimum with exact targets (no label noise) and a decaying
learning rate. Phase 2 continues from that checkpoint at a constant learning rate
in two arms, on the same sentences and masks:

  adamw   the paper's continued pre-training: AdamW on sampled labels (BERT's loss),
          whose gradient noise at the optimum has covariance equal to the Hessian
          (paper Sec. 4: the noise that drives the walk toward flatter minima)
  exact   the control: the same AdamW on exact targets, whose per-example gradient
          vanishes at the optimum, so the noise-driven walk is absent

At every kept phase-2 checkpoint: loss minus optimum (``eval/loss_gap``), Hessian
trace and linear-probe accuracy. The paper's claim: the loss stays at the optimum
while the trace falls and accuracy rises, in ``adamw`` and not in ``exact``.

Variants:
  tiny        seconds; tests the pipeline end to end (not the phenomenon)
  pcfg_compact  the compact PCFG (24 words) on a CPU, 3 pre-training seeds
  quickstart  pcfg_compact with one seed: the main job (`experiments.quickstart`)
  pcfg_compact_lr  the scan that chose phase 2's learning rate: both arms at 1e-4, 3e-4
              and 1e-3 (adamw) or 1e-3 (exact), 4,000 steps, one seed
  pcfg        a random PCFG of the paper's shape at the 9m preset, one phase, the
              paper's recipe at a constant learning rate (GPU/TPU); pcfg_<preset> for
              another size (the paper: 235m)

  python -m experiments.run --config=experiments/configs/continue_training.py:pcfg_compact \
      --workdir=runs/continue --config.phase1_dir=runs/phase1
  python -m experiments.run --config=experiments/configs/continue_training.py:pcfg_235m \
      --workdir=gs://BUCKET/continue --config.pretrain.train.num_steps=100000
"""
from experiments.configs import experiment
from experiments.configs import pretrain


def _arms():
  return [{"name": "adamw"}, {"name": "exact", "pretrain.targets": "exact"}]


def get_config(variant: str = "pcfg_compact"):
  if variant == "tiny":
    c = experiment.tiny(experiment.make("continue_training", pretrain.base(), sweep=_arms()))
    experiment.converge_first(c, steps=20)
    return c
  if variant in ("pcfg_compact", "quickstart"):
    return experiment.compact_two_phase("continue_training", _arms(),
                                        seeds=3 if variant == "pcfg_compact" else 1)
  if variant == "pcfg_compact_lr":
    sweep = [{"name": f"{arm}_lr{lr:g}", "pretrain.optimizer.learning_rate": lr, **extra}
             for arm, extra, lrs in (("adamw", {}, (1e-3, 3e-4, 1e-4)),
                                     ("exact", {"pretrain.targets": "exact"}, (1e-3,)))
             for lr in lrs]
    c = experiment.compact_two_phase("continue_training", sweep, seeds=1)
    c.pretrain.train.update(num_steps=4000, keep_every=1000, checkpoint_every=1000,
                            eval_every=500)
    c.measure.num_batches = 64
    return c
  if variant.startswith("pcfg"):
    pre = pretrain.get_config(variant if "_" in variant else "pcfg_9m")
    pre.optimizer.schedule = "constant"
    pre.train.update(num_steps=50_000, keep_every=5000, max_to_keep=1)
    return experiment.make("continue_training", pre, sweep=[dict(name="adamw")])
  raise ValueError(f"continue_training.py: unknown variant {variant!r}; choose tiny, "
                   "pcfg_compact, quickstart, pcfg or pcfg_<preset>")
