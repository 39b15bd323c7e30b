r"""Downstream accuracy (linear probe, fine-tuning, lookup baseline) of every checkpoint.

  python -m experiments.downstream --workdir=DIR[,DIR...] \
      --config=experiments/configs/downstream.py[:variant] [--config.x=...] [--steps=S1,S2]

Writes `downstream/<task>/*` scalars next to the training metrics of each run
(TensorBoard and metrics.jsonl); checkpoints already evaluated are skipped.
"""
from experiments import per_checkpoint
from experiments import wiring

if __name__ == "__main__":
  per_checkpoint.run("experiments/configs/downstream.py", wiring.downstream_run,
                     "Downstream")
