r"""Experiment (b): models of different sizes trained to the same loss (paper Sec. 4.2).

Each size is trained on the same data; every checkpoint gets its Hessian trace
measured directly and after function-preserving enlargement into the largest
architecture (``curvature/trace_enlarged``, `flatness.model.enlargement`), and its
linear-probe accuracy. The paper's claim: at equal loss, larger models are
flatter and transfer better. `experiments.analyze` then asks whether the trace
predicts accuracy *within* a size (partial and within-size correlations).

Variants:
  tiny        seconds; two tiny sizes (tests)
  pcfg_small  hidden 32 / 64 / 128 on the small PCFG (CPU, tens of minutes)
  pcfg_compact  at the optimum: hidden 32 / 64 / 128 on the compact PCFG, 3 seeds; each
              size and seed trained toward the optimum in its own phase 1 (16,000
              exact-target steps), then continued for 2,000 steps with the paper's AdamW
              on sampled labels (phase 2 is short: the comparison is between sizes at
              the optimum, not along a run); compared at the checkpoints within 1% of
              the optimum
  pcfg        the 2m, 9m and 41m presets on a paper-shaped PCFG (GPU/TPU), enlarged
              into 41m

  python -m experiments.run --config=experiments/configs/model_size.py:pcfg_small \
      --workdir=runs/size
  python -m experiments.run --config=experiments/configs/model_size.py:pcfg_compact \
      --workdir=runs/size_compact --config.phase1_dir=runs/phase1
  python -m experiments.run --config=experiments/configs/model_size.py:pcfg \
      --workdir=runs/size --runs=9m          # one size of the sweep
"""
from experiments.configs import experiment
from experiments.configs import pretrain


def _sizes(sizes):
  return [{"name": f"h{h}", "pretrain.model.hidden_size": h, "pretrain.model.num_layers": l,
           "pretrain.model.num_heads": n, "pretrain.model.mlp_dim": 4 * h}
          for h, l, n in sizes]


def get_config(variant: str = "pcfg_small"):
  if variant == "tiny":
    c = experiment.tiny(experiment.make("model_size", pretrain.base()))
    c.sweep = tuple(_sizes([(16, 1, 1), (32, 1, 2)]))
    c.measure.metrics = "trace,trace_enlarged,loss"
    c.measure.enlarge_to = "32,1,2,128"
    return c
  if variant == "pcfg_small":
    c = experiment.make("model_size", experiment.small_pretrain(num_steps=6000),
                        sweep=_sizes([(32, 2, 1), (64, 2, 2), (128, 2, 4)]))
    experiment.small_analysis_sections(c)
    c.measure.metrics = "trace,trace_enlarged,loss"
    c.measure.enlarge_to = "128,2,4,512"
    experiment.small_seeds(c)
    return c
  if variant == "pcfg_compact":
    c = experiment.compact_two_phase("model_size", _sizes([(32, 2, 1), (64, 2, 2), (128, 2, 4)]),
                                     phase2_steps=2000)
    # Three checkpoints a run (0: phase 1's end, 1,000, 2,000): the enlarged trace (into
    # width 128) and the probes are the costly part, 9 runs x 3 checkpoints.
    c.pretrain.train.update(keep_every=1000, checkpoint_every=1000, eval_every=500)
    c.measure.metrics = "trace,trace_enlarged,loss"
    c.measure.enlarge_to = "128,2,4,512"
    return c
  if variant == "pcfg":
    sweep = [{"name": p, "pretrain.model.preset": p} for p in ("2m", "9m", "41m")]
    c = experiment.make("model_size", pretrain.get_config("pcfg_9m"), sweep=sweep)
    c.measure.metrics = "trace,trace_enlarged,loss"
    c.measure.enlarge_to = "41m"
    return c
  raise ValueError(f"model_size.py: unknown variant {variant!r}; choose tiny, pcfg_small, "
                   "pcfg_compact or pcfg")
