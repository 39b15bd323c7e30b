r"""Curvature metrics of every checkpoint of a run (`flatness.measure`).

  python -m experiments.measure --workdir=/tmp/flatness/tiny \
      --config=experiments/configs/measure.py
  python -m experiments.measure --workdir=RUN1,RUN2 \
      --config=experiments/configs/measure.py:thorough --config.trace.method=xtrace

Variants: ``default`` (Hutchinson trace, top eigenvalue, Fisher, GGN, three
sharpness measures, loss; minutes per checkpoint on a CPU for small models),
``trace`` (the paper's measure only), ``thorough`` (more probes).
"""
import ml_collections


def get_config(variant: str = "default") -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.metrics = "trace,top_eigenvalue,fisher,ggn,sharpness,sharpness_adaptive,sharpness_avg,loss"
  c.num_sentences = 256         # evaluation sentences (validation distribution)
  c.batch_size = 64             # sentences per batch; divisible by the device count
  c.seed = 0                    # masks of the evaluation set and the probes
  c.include = "paper"           # paper: without pooler and MLM output bias; all: every param
  c.force = False               # re-measure checkpoints already measured
  c.enlarge_to = ""             # trace_enlarged: a preset, or "hidden,layers,heads,mlp"
  c.trace = ml_collections.ConfigDict(dict(num_probes=8, method="hutchinson",
                                           probe="rademacher", chunk=8))
  c.eigen = ml_collections.ConfigDict(dict(num_iters=20))
  c.fisher = ml_collections.ConfigDict(dict(num_samples=4))
  c.ggn = ml_collections.ConfigDict(dict(num_probes=8))
  c.sharpness = ml_collections.ConfigDict(dict(rho=0.05, steps=5, sigma=0.01, num_samples=4))
  if variant == "trace":
    c.metrics = "trace,loss"
    c.trace.num_probes = 16
  elif variant == "thorough":
    c.num_sentences = 1024
    c.trace.num_probes = 32
    c.eigen.num_iters = 64
    c.fisher.num_samples = 16
    c.ggn.num_probes = 32
    c.sharpness.update(steps=20, num_samples=16)
  elif variant != "default":
    raise ValueError(f"measure.py: unknown variant {variant!r}; choose default, trace or thorough")
  return c
