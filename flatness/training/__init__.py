"""Pre-training: the pure step, the loop around it, its data and its checkpoints.

  train_step      `make_train_step`: ``(state, batch, rng) -> (state, metrics)``, pure
  trainer         `train`: the loop (log, evaluate, checkpoint, resume, preempt)
  optimizers      `OptimizerConfig` -> optax transformation and schedule
  input_pipeline  batch sources resumable by position; `prefetch`
  evaluation      `ValidationSet`, the exact loss gap against the true conditionals
  run_config      typed config sections (model, masking, train) with their checks
  adversarial     the paper's adversarial algorithm (a loss transform)
  preemption      stop at a step boundary on SIGTERM

Imports: `flatness.model`, `flatness.transfer.probe` (the adversary's features),
`flatness.runtime`.
"""
