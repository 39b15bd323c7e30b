r"""The mechanism, measured: how fast label noise flattens a converged model (paper Sec. 4).

The prediction (Blanc et al. 2020; Li, Wang & Arora 2022; the paper's Sec. 4): at a
minimiser of the population loss the covariance of per-example gradients with
sampled labels equals the Hessian, so plain SGD on sampled labels keeps moving
after the loss has converged, along the minimisers, lowering tr(H) at a rate per
step proportional to eta^2 / B (learning rate eta, batch B): plotted against
eta^2 t / B, the SGD arms' traces collapse onto one curve. With exact targets
the per-example gradients vanish at a minimiser: no drift.

Every run continues from ONE converged phase-1 checkpoint (``phase1_seed = 0``:
16,000 steps of exact-target AdamW, the main job's phase 1), so all arms start
from the same parameters and the pre-training seeds vary phase 2 only (its
sentences and masks) and the measurement draws (``measure_seed_per_run``: seed k
measures tr(H) on its own batches and probes, the same at each of its
checkpoints, so a run's slope is measured on paired draws and the spread over
seeds covers the draw). The arms:

  sgd_lr<eta>_b<B>   plain SGD (no momentum), constant eta, batch B, sampled labels:
                     eta in {0.02, 0.04, 0.08} x B in {32, 64, 128}. The grid's
                     diagonals share eta^2 / B at different eta / B (e.g. 0.02 / 32
                     and 0.04 / 128), the direct test of the collapse.
  exact_lr0.08_b32   the same SGD with exact targets at the grid's largest eta^2 / B:
                     the control without label noise (predicted rate 0)
  adamw              the main job's continued pre-training (AdamW, 3e-4, B 128)

Each run: tr(H) and the loss gap at every checkpoint; linear probes at the start
(once: every run starts from the same parameters) and at the end of each run
(``analysis.probe = "ends"``). The report (`flatness.analysis.drift_report`) adds the
collapse figure, each arm's initial drift rate with its interval over seeds, the
rate law (rates against eta^2 / B: slope, intercept, R^2, residuals) and each
arm's change in probe accuracy.

Variants:
  tiny          seconds; tests the pipeline end to end (not the phenomenon)
  pcfg_compact  the CPU variant: 11 arms x 3 seeds, 3,000 steps each, checkpoints
                every 500 (README, "The mechanism: label noise at the optimum, measured")
  pcfg          the paper-shaped PCFG at the 9m preset (GPU/TPU; not run yet): a
                sampled-label phase 1, then a grid of the same shape at larger eta
                and B

  python -m experiments.quickstart          # its phase 1 is this experiment's start
  python -m experiments.run --config=experiments/configs/mechanism.py:pcfg_compact \
      --workdir=runs/mechanism --config.phase1_dir=runs/quickstart
"""
from experiments.configs import experiment
from experiments.configs import pretrain

# The CPU grid (pcfg_compact). From the converged checkpoint, a 2,000-step scan of SGD
# at batch 128 kept the loss gap at 0.7-1.0% of the optimum at eta = 0.03, 1.2-1.9% at
# 0.1 and 1.8-2.7% at 0.3, and diverged at 1.0 (README): eta / B up to 2.5e-3 stays
# within about 3%, and eta^2 / B spans 64x over the grid.
LEARNING_RATES = (0.02, 0.04, 0.08)
BATCH_SIZES = (32, 64, 128)
STEPS = 3000
KEEP_EVERY = 500
# The initial drift rate: each run's least-squares slope of tr(H) over its checkpoints
# at steps <= DRIFT_WINDOW.
DRIFT_WINDOW = 1500


def sgd_arm(lr: float, batch: int, targets: str = "sampled") -> dict:
  prefix = "sgd" if targets == "sampled" else "exact"
  return {"name": f"{prefix}_lr{lr:g}_b{batch}", "pretrain.targets": targets,
          "pretrain.optimizer.name": "sgd", "pretrain.optimizer.momentum": 0.0,
          "pretrain.optimizer.learning_rate": lr, "pretrain.optimizer.warmup_steps": 0,
          "pretrain.train.batch_size": batch}


def grid(lrs, batches, adamw: bool = True) -> list[dict]:
  """The SGD grid, the exact-target control at its largest eta^2 / B, and AdamW."""
  arms = [sgd_arm(lr, b) for lr in lrs for b in batches]
  arms.append(sgd_arm(max(lrs), min(batches), targets="exact"))
  return arms + ([{"name": "adamw"}] if adamw else [])


def _finish(c, window: int):
  c.phase1_seed = 0              # one converged start for every arm and seed
  c.measure_seed_per_run = True  # seed k measures on its own (paired) draws
  c.measure.metrics = "trace,loss"
  c.analysis.update(probe="ends", drift_window=window)
  return c


def get_config(variant: str = "pcfg_compact"):
  if variant == "tiny":
    c = experiment.tiny(experiment.make("mechanism", pretrain.base(),
                                        sweep=grid((0.1, 0.2), (16,), adamw=False)))
    experiment.converge_first(c, steps=20)
    c.pretrain.optimizer.update(schedule="constant", weight_decay=0.0)
    c.pretrain.train.update(num_steps=20, keep_every=10, checkpoint_every=10, eval_every=10)
    return _finish(c, window=20)
  if variant == "pcfg_compact":
    c = experiment.compact_two_phase("mechanism", grid(LEARNING_RATES, BATCH_SIZES),
                                     phase2_steps=STEPS)
    c.pretrain.train.update(keep_every=KEEP_EVERY, checkpoint_every=KEEP_EVERY,
                            eval_every=KEEP_EVERY // 2)
    # 64 batches of 64 sentences, one probe each, the same at every checkpoint of a run.
    c.measure.num_batches = 64
    return _finish(c, window=DRIFT_WINDOW)
  if variant == "pcfg":
    pre = pretrain.get_config("pcfg_9m")
    c = experiment.make("mechanism", pre, sweep=grid((0.1, 0.2, 0.4), (64, 128, 256)))
    experiment.converge_first(c, steps=int(pre.train.num_steps), targets="sampled")
    c.pretrain.optimizer.update(schedule="constant", weight_decay=0.0)
    c.pretrain.train.update(num_steps=20_000, keep_every=2000, checkpoint_every=2000,
                            eval_every=1000)
    c.seeds = 3
    return _finish(c, window=10_000)
  raise ValueError(f"mechanism.py: unknown variant {variant!r}; choose tiny, pcfg_compact "
                   "or pcfg")
