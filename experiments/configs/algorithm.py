r"""Experiment (c): training algorithms that reach the same loss (paper Sec. 4.3).

Runs, on the same data and model:
  adamw        the paper's recipe
  sgd          SGD with momentum 0.9 (more noise; the paper's theory: flatter)
  sam          SAM around SGD (explicitly seeks flat minima)
  adversarial  AdamW on L_MLM - lambda * R, R the validation loss of a closed-form ridge
               head for task A on the features the linear probe reads (the concatenated
               word states; `flatness.training.adversarial`): per the paper, the same loss, worse
               transfer and a larger trace
and, with every run's downstream metrics, the lookup-table baseline (a probe on
the true conditionals).

Variants:
  tiny        seconds; tests the pipeline end to end (not the phenomenon)
  pcfg_small  the small PCFG on a CPU, 3 pre-training seeds per algorithm, lambda 0.01
              (about 1 h 40 min on 2 cores, most of it probes); correlations over
              checkpoints within 0.2 nats of the optimum, measured and probed only there
  pcfg_compact  at the optimum: two phases on the compact PCFG, 3 seeds; phase 1 trains
              each seed to within 1% of the exact optimum, then adamw, sgd, sam,
              adversarial and exact-target AdamW (the control without label noise)
              continue from it; correlations over checkpoints within 1% of the optimum
  pcfg_small_lambda  adamw and the adversarial algorithm at lambda 0.003 and 0.01 on the
              small PCFG: the search for the lambda whose loss matches adamw's
  pcfg        paper-shaped PCFG, 9m preset, the paper's recipe (GPU/TPU);
              pcfg_<preset> for another size (the paper: 235m)

  python -m experiments.run --config=experiments/configs/algorithm.py:pcfg_compact \
      --workdir=runs/algorithm_compact --config.phase1_dir=runs/phase1
  python -m experiments.run --config=experiments/configs/algorithm.py:pcfg_small \
      --workdir=runs/algorithm
  python -m experiments.run --config=experiments/configs/algorithm.py:pcfg_small \
      --workdir=runs/algorithm --runs=adversarial_seed0      # one run of the sweep
"""
from experiments.configs import experiment
from experiments.configs import pretrain

# Phase-2 settings of pcfg_compact. SGD (momentum 0.9) at 0.01: at 0.03 (100x AdamW's
# rate, the ratio at which the one-phase pcfg_small runs ended at similar losses) the
# gap sat at 0.021-0.031 nats, outside 1% of the optimum (seed 0). Lambda 0.003:
# the one-phase search's value whose loss matched AdamW's (pcfg_small_lambda).
COMPACT_SGD_LR = 0.01
COMPACT_LAMBDA = 0.003


def _sweep(sgd_lr: float, lam: float):
  return [
      {"name": "adamw"},
      {"name": "sgd", "pretrain.optimizer.name": "sgd", "pretrain.optimizer.momentum": 0.9,
       "pretrain.optimizer.learning_rate": sgd_lr},
      {"name": "sam", "pretrain.optimizer.name": "sam", "pretrain.optimizer.sam_base": "sgd",
       "pretrain.optimizer.momentum": 0.9, "pretrain.optimizer.learning_rate": sgd_lr,
       "pretrain.optimizer.sam_rho": 0.05},
      {"name": "adversarial", "pretrain.adversarial.lam": lam,
       "pretrain.adversarial.task": "A"},
  ]


def get_config(variant: str = "pcfg_small"):
  if variant == "tiny":
    c = experiment.tiny(experiment.make("algorithm", pretrain.base()))
    c.sweep = tuple(_sweep(sgd_lr=0.1, lam=0.5))
    return c
  if variant == "pcfg_small":
    c = experiment.make("algorithm", experiment.small_pretrain(num_steps=6000),
                        sweep=_sweep(sgd_lr=0.3, lam=0.01))
    experiment.small_analysis_sections(c)
    experiment.small_seeds(c)
    return c
  if variant == "pcfg_compact":
    # Phase 2 of the two-phase CPU recipe: every algorithm continues from the same
    # converged checkpoint (per seed); exact-target AdamW is the no-label-noise control.
    sweep = _sweep(sgd_lr=COMPACT_SGD_LR, lam=COMPACT_LAMBDA) + [
        {"name": "exact", "pretrain.targets": "exact"}]
    return experiment.compact_two_phase("algorithm", sweep)
  if variant == "pcfg_small_lambda":
    # The search for the lambda whose loss matches adamw's (the adversary attacks the
    # probe's concatenated features; README, "the algorithm experiment").
    sweep = [{"name": "adamw"}] + [
        {"name": f"adversarial_{lam:g}", "pretrain.adversarial.lam": lam,
         "pretrain.adversarial.task": "A"} for lam in (0.003, 0.01)]
    c = experiment.make("algorithm", experiment.small_pretrain(num_steps=6000), sweep=sweep)
    experiment.small_analysis_sections(c)
    return c
  if variant.startswith("pcfg"):
    pre = pretrain.get_config(variant if "_" in variant else "pcfg_9m")
    return experiment.make("algorithm", pre, sweep=_sweep(sgd_lr=0.5, lam=0.5))
  raise ValueError(f"algorithm.py: unknown variant {variant!r}; choose tiny, pcfg_small, "
                   "pcfg_compact, pcfg_small_lambda, pcfg or pcfg_<preset>")
