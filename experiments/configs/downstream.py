r"""Downstream evaluation of every checkpoint of a run (`flatness.transfer.downstream`).

  python -m experiments.downstream --workdir=/tmp/flatness/pcfg_small \
      --config=experiments/configs/downstream.py
  python -m experiments.downstream --workdir=RUN1,RUN2 \
      --config=experiments/configs/downstream.py:paper --config.tasks=A,C

Variants: ``default`` (linear probes, each seed on its own 2,000 sentences
drawn from a pool of 6,000, 5 seeds, scored on 2,000 test sentences; the
lookup-table baseline; tens of seconds per checkpoint for small models on a
CPU), ``finetune`` (adds full fine-tuning), ``paper`` (the authors' protocol:
10,000 labelled training sentences per seed from a pool of 20,000, 5 seeds,
fine-tuning for 10 epochs).
"""
import ml_collections


def get_config(variant: str = "default") -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.tasks = ""                  # comma-separated task names; "": every task of the language
  c.num_pool = 6000             # labelled sentences the training subsets are drawn from
  c.num_train = 2000            # training sentences per probe seed, drawn from the pool
  c.num_test = 2000             # held-out sentences every probe is scored on
  c.seeds = 5                   # probe seeds: each redraws its training subset from the pool
  c.seed = 0                    # draws pool, test set and subsets: the same at every checkpoint
  c.features = "concat"         # concat: word states concatenated (paper); mean; cls
  c.lookup = True               # the lookup-table baseline (true conditionals as features)
  c.force = False               # re-evaluate checkpoints already done
  c.probe = ml_collections.ConfigDict(dict(   # flatness.transfer.probe.ProbeConfig
      l2_grid=(1e-4, 1e-3, 1e-2, 1e-1, 1.0),  # candidate L2 penalties on W (z-scored units)
      holdout=0.25,                           # fraction of the first seed's subset that picks l2
      max_iters=2000,                         # L-BFGS iterations per solve, at most
      tol=1e-5,                               # converged: ||grad F||_2 below this
      standardize=True))                      # z-score features by the fitting rows
  c.finetune = ml_collections.ConfigDict(dict(   # flatness.transfer.finetune.FinetuneConfig
      enabled=False, epochs=10, batch_size=128, learning_rate=1e-4, weight_decay=0.01,
      dropout=True))
  if variant == "finetune":
    c.finetune.enabled = True
  elif variant == "paper":
    c.update(num_pool=20_000, num_train=10_000, num_test=2_000, seeds=5)
    c.finetune.enabled = True
  elif variant != "default":
    raise ValueError(f"downstream.py: unknown variant {variant!r}; choose default, finetune "
                     "or paper")
  return c   # sizes are checked where they are used (flatness.transfer.downstream.check_sizes)
