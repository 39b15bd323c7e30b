r"""Measures curvature and sharpness of every checkpoint of one or more runs.

  python -m experiments.measure --workdir=DIR[,DIR...] \
      --config=experiments/configs/measure.py[:variant] [--config.x=...] [--steps=S1,S2]

Writes `curvature/*` scalars next to the training metrics of each run
(TensorBoard and metrics.jsonl); checkpoints already measured are skipped.
"""
from experiments import per_checkpoint
from experiments import wiring

if __name__ == "__main__":
  per_checkpoint.run("experiments/configs/measure.py", wiring.measure_run, "Measurement")
