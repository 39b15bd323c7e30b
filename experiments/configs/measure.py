r"""Curvature metrics of every checkpoint of a run (`flatness.curvature.measure`).

  python -m experiments.measure --workdir=/tmp/flatness/tiny \
      --config=experiments/configs/measure.py
  python -m experiments.measure --workdir=RUN1,RUN2 \
      --config=experiments/configs/measure.py:thorough --config.trace.method=xtrace

Variants: ``default`` (Hutchinson trace, top eigenvalue, Fisher, GGN, three
sharpness measures, loss; minutes per checkpoint on a CPU for small models),
``trace`` (the paper's measure only), ``thorough`` (4x the batches, more
probes and iterations), ``premise`` (the label-noise mechanism's premise: the
trace, and the gradient noise of sampled labels and of exact targets, whose
ratios to the trace are predicted 1 and 0 at the optimum). Every sampled estimate's standard error covers the
draw of evaluation sentences and masks as well as the probes.
"""
import ml_collections


def get_config(variant: str = "default") -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.metrics = "trace,top_eigenvalue,fisher,ggn,sharpness,sharpness_adaptive,sharpness_avg,loss"
  # Evaluation data: independent batches of validation-distribution sentences, each with
  # its own masks, the same for every checkpoint (paired). The sampled estimators (trace,
  # fisher, ggn, sharpness_avg) put `num_probes` probes on every batch and report an error
  # over batches that covers the sentences and masks too; under a fixed budget of products
  # one probe on each of more batches is never less precise (flatness.curvature.trace: more
  # probes per batch never remove the batch-to-batch term). Under a fixed time, see
  # flatness.curvature.allocation: at the width-128 optima (benchmarks.curvature --workdirs)
  # trace.hvp=reverse_over_forward with 3-4 probes per batch (and fewer batches) is predicted
  # to take 0.76-0.87 of the default's time to the same error, so the default stays.
  c.num_batches = 64            # independent evaluation batches (>= 2 for a population error)
  c.batch_size = 64             # sentences per batch; divisible by the device count
  c.fixed_batches = 4           # top_eigenvalue, sharpness, loss: mean over the first ones
  c.seed = 0                    # sentences, masks and probes
  c.include = "paper"           # paper: without pooler and MLM output bias; all: every param
  c.force = False               # re-measure checkpoints already measured
  c.enlarge_to = ""             # trace_enlarged: a preset, or "hidden,layers,heads,mlp"
  # Per batch: probes (trace, ggn) or samples (fisher, sharpness_avg).
  # hvp: the products' order of differentiation (flatness.curvature.hessian.HVP_METHODS). With
  # several probes per batch (chunk >= 8), reverse_over_forward is the fastest on a CPU
  # (1.37-2.00 gradients per product on 2 cores against 2.33-2.64 for the default: medians
  # over one run's rounds, benchmarks.curvature; single rounds reach 2.15). With one, the
  # best method takes 2.07-2.94 gradients' time (rounds up to 3.00): a
  # lone product does 2.6x a gradient's FLOPs by any method, a chunk's probes 2.0x each.
  c.trace = ml_collections.ConfigDict(dict(num_probes=1, method="hutchinson",
                                           probe="rademacher", chunk=8,
                                           hvp="forward_over_reverse"))
  c.eigen = ml_collections.ConfigDict(dict(num_iters=20))
  c.fisher = ml_collections.ConfigDict(dict(num_samples=1))
  # gradient_noise (sampled labels), gradient_noise_exact (exact targets): sign draws per batch.
  c.gradient_noise = ml_collections.ConfigDict(dict(num_samples=1))
  c.ggn = ml_collections.ConfigDict(dict(num_probes=1))
  c.sharpness = ml_collections.ConfigDict(dict(rho=0.05, steps=5, sigma=0.01, num_samples=1))
  if variant == "trace":
    c.metrics = "trace,loss"
  elif variant == "premise":
    c.metrics = "trace,gradient_noise,gradient_noise_exact,loss"
  elif variant == "thorough":
    c.num_batches = 256
    c.trace.num_probes = 2
    c.eigen.num_iters = 64
    c.fisher.num_samples = 2
    c.ggn.num_probes = 2
    c.sharpness.update(steps=20, num_samples=2)
  elif variant != "default":
    raise ValueError(f"measure.py: unknown variant {variant!r}; choose default, trace, premise "
                     "or thorough")
  return c
