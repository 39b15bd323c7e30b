r"""Downstream evaluation of every checkpoint of a run (`flatness.downstream`).

  python -m experiments.downstream --workdir=/tmp/flatness/pcfg_small \
      --config=experiments/configs/downstream.py
  python -m experiments.downstream --workdir=RUN1,RUN2 \
      --config=experiments/configs/downstream.py:paper --config.tasks=A,C

Variants: ``default`` (linear probes on 2,000 labelled sentences, 3 seeds, the
lookup-table baseline; seconds per checkpoint for small models on a CPU),
``finetune`` (adds full fine-tuning), ``paper`` (the authors' protocol: 10,000
sentences, 5 seeds, 50 probe epochs, fine-tuning for 10 epochs).
"""
import ml_collections


def get_config(variant: str = "default") -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.tasks = ""                  # comma-separated task names; "": every task of the language
  c.num_train = 2000            # labelled training sentences (the probe's pool)
  c.num_test = 1000             # held-out sentences the accuracy is measured on
  c.seeds = 3                   # probe fits (subset order and init) per checkpoint
  c.seed = 0                    # draws the labelled sentences: the same for every checkpoint
  c.features = "concat"         # concat: word states concatenated (paper); mean; cls
  c.lookup = True               # the lookup-table baseline (true conditionals as features)
  c.force = False               # re-evaluate checkpoints already done
  c.probe = ml_collections.ConfigDict(dict(   # flatness.probe.ProbeConfig
      epochs=50, batch_size=512, learning_rate=1e-3, weight_decay=0.01, standardize=True))
  c.finetune = ml_collections.ConfigDict(dict(   # flatness.finetune.FinetuneConfig
      enabled=False, epochs=10, batch_size=128, learning_rate=1e-4, weight_decay=0.01,
      dropout=True))
  if variant == "finetune":
    c.finetune.enabled = True
  elif variant == "paper":
    c.update(num_train=10_000, num_test=2_000, seeds=5)
    c.finetune.enabled = True
  elif variant != "default":
    raise ValueError(f"downstream.py: unknown variant {variant!r}; choose default, finetune "
                     "or paper")
  return c
