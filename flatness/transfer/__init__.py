"""Transfer: how well a checkpoint's features solve downstream tasks.

  probe       linear probes solved to convergence, paired differences over seeds
  finetune    full fine-tuning with a linear head
  downstream  `Evaluator`: probes, fine-tuning and the lookup baseline on labelled arrays

Imports: `flatness.model`, `flatness.runtime`.
"""
