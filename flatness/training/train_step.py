"""The pure training step: ``train_step(state, batch, rng) -> (state, metrics)``.

One step is one optimizer update on one global batch. With
``grad_accum_steps = A`` the batch is split into A micro-batches (row ``r``
goes to micro-batch ``r mod A``, so that each micro-batch stays spread over
every device of the data axis) whose gradients are summed in a `lax.scan`; the
loss is normalised by the number of predictions of the whole batch, so A
micro-batches give the gradient of the full batch exactly.

With ``targets`` (``config.targets = "exact"``; `flatness.model.objectives`) the
step scores each prediction against the exact conditional of its word given
the corrupted input, computed in the step from the masks it drew (so the
masks, and a resumed run, are exactly those of ``"sampled"``).

Non-finite guard: if the loss, the differentiated objective or the gradient
norm is not finite the step
returns the *old* state and ``metrics['finite'] = 0``; the training loop stops
on it (`flatness.training.trainer.NonFiniteLossError`) before anything is saved, so the
last good checkpoint is never overwritten by NaNs.
"""
import dataclasses
from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
import optax

from flatness.model import masking
from flatness.model.objectives import Objective


@flax.struct.dataclass
class TrainState:
  step: jax.Array          # int32 scalar: optimizer updates done so far
  params: Any
  opt_state: Any


def init_state(params, tx: optax.GradientTransformation) -> TrainState:
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))


def _micro_batches(batch, accum: int):
  def split(x):
    return jnp.swapaxes(x.reshape((x.shape[0] // accum, accum) + x.shape[1:]), 0, 1)
  return jax.tree.map(split, batch)


def _micro_objective(objective: Objective, loss_transform, total_weight, drop_rng, extra_rng):
  """``(params, (prepared, raw) micro-batch, i) -> (objective, loss terms)``: the micro-batch's
  share of the step's mean loss (sums over the whole batch's ``total_weight``, so that the
  micro-batches add up to the full batch exactly), transformed by ``loss_transform``."""
  def fn(params, mb, i):
    prep, raw = mb
    terms = objective.loss_terms(params, prep, jax.random.fold_in(drop_rng, i))
    value = terms["nll_sum"] / total_weight
    if loss_transform is not None:
      # Rescale so that the transform sees this micro-batch's mean loss.
      share = jnp.sum(prep["weights"]) / total_weight
      mean = terms["nll_sum"] / jnp.maximum(jnp.sum(prep["weights"]), 1.0)
      value = share * loss_transform(params, prep, raw, jax.random.fold_in(extra_rng, i), mean)
    return value, terms
  return fn


def _accumulate(micro_objective, params, micro, accum: int, inline_one: bool = False):
  """(gradient, summed loss terms) over the ``accum`` micro-batches, by `lax.scan`: one
  micro-batch's activations in memory at a time (``inline_one``: a single micro-batch
  without the scan, a little faster, rounded as XLA fuses it)."""
  def body(carry, xs):
    i, mb = xs
    (value, terms), g = jax.value_and_grad(micro_objective, has_aux=True)(params, mb, i)
    grads, sums = carry
    terms = dict(terms, objective=value)
    return (jax.tree.map(jnp.add, grads, g), jax.tree.map(jnp.add, sums, terms)), None
  zeros = (jax.tree.map(jnp.zeros_like, params),
           dict(nll_sum=0.0, weight_sum=0.0, correct_sum=0.0, objective=0.0))
  if accum == 1 and inline_one:   # the scan's one iteration, inline
    (grads, sums), _ = body(zeros, (jnp.zeros((), jnp.int32),
                                    jax.tree.map(lambda x: x[0], micro)))
    return grads, sums
  (grads, sums), _ = jax.lax.scan(body, zeros, (jnp.arange(accum), micro))
  return grads, sums


def _prepare(objective: Objective, targets, rng, batch) -> dict:
  """The objective's model inputs for a raw batch (masks drawn from ``rng``), with the
  exact targets when training on them."""
  prepared = {k: v for k, v in objective.prepare(rng, batch).items() if v is not None}
  if targets is not None:
    prepared["targets"] = targets(prepared, batch)
  return prepared


def training_objective(objective: Objective) -> Objective:
  """``objective`` with the model's training-step kernels (`TransformerConfig.fast_grad`:
  a custom weight-gradient rule for the dense layers, GELU by erf;
  ``last_block_at_positions``: the last block only where the loss looks): the same
  loss and gradient to float32 rounding, faster on XLA's CPU backend; same params."""
  cfg = objective.model.cfg
  if cfg.fast_grad and cfg.last_block_at_positions:
    return objective
  fast = dataclasses.replace(cfg, fast_grad=True, last_block_at_positions=True)
  return dataclasses.replace(objective, model=objective.model.clone(cfg=fast))


_PER_PREDICTION = ("positions", "labels", "weights", "targets")


def trim_predictions(objective: Objective, prepared: dict) -> dict:
  """``prepared`` without the prediction columns BERT masking never selects at this
  sequence length (`masking.max_selected`): they all have weight 0, so the loss and
  its gradient are unchanged, and the head (and with ``last_block_at_positions`` the
  last block) runs at fewer positions. Causal batches are returned as they are."""
  if objective.causal or prepared.get("positions") is None:
    return prepared
  p = masking.max_selected(objective.model.cfg.seq_len, objective.spec)
  return {k: (v[:, :p] if k in _PER_PREDICTION else v) for k, v in prepared.items()}


def make_train_step(objective: Objective, tx: optax.GradientTransformationExtraArgs, *,
                    schedule: Callable[[Any], Any] | None = None,
                    grad_accum_steps: int = 1,
                    loss_transform: Callable | None = None,
                    targets: Callable | None = None,
                    fast_kernels: bool = False):
  """Returns the pure step function (jit it with shardings in the trainer).

  Args:
    objective: the pre-training objective.
    tx: optimizer from `flatness.training.optimizers.make_optimizer`.
    schedule: learning-rate schedule, only to report ``lr`` in the metrics.
    grad_accum_steps: micro-batches per step.
    loss_transform: optional ``(params, prepared_batch, raw_batch, rng, loss) ->
      objective`` applied to the mean loss of each micro-batch before
      differentiation (the adversarial algorithm of `flatness.training.adversarial` uses
      it); the reported ``loss`` stays the pre-training loss.
    targets: optional ``(prepared_batch, raw_batch) -> [B, P, V]`` target
      distributions (`data_gen.bert_targets.exact_targets`); None trains on the
      sampled words.
    fast_kernels: differentiate the model with its training-step kernels
      (`training_objective`), drop the prediction columns masking never fills
      (`trim_predictions`) and inline a single micro-batch; False (default): JAX's own
      rules, the trajectory of the README's measured runs.
  """
  accum = grad_accum_steps
  if fast_kernels:
    objective = training_objective(objective)

  def step_fn(state: TrainState, batch, rng):
    mask_rng, drop_rng, extra_rng = jax.random.split(rng, 3)
    prepared = _prepare(objective, targets, mask_rng, batch)
    if fast_kernels:
      prepared = trim_predictions(objective, prepared)
    total_weight = jnp.maximum(jnp.sum(prepared["weights"]), 1.0)
    micro = _micro_batches((prepared, batch), accum)
    micro_objective = _micro_objective(objective, loss_transform, total_weight, drop_rng,
                                       extra_rng)
    grads, sums = _accumulate(micro_objective, state.params, micro, accum, fast_kernels)
    # SAM's second gradient (grad_fn) accumulates over the same micro-batches.
    updates, opt_state = tx.update(
        grads, state.opt_state, state.params,
        grad_fn=lambda p, _: _accumulate(micro_objective, p, micro, accum, fast_kernels)[0])
    params = optax.apply_updates(state.params, updates)
    loss = sums["nll_sum"] / total_weight
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(sums["objective"]) & jnp.isfinite(grad_norm)
    # A non-finite step leaves the state as it was; the trainer stops on the metric.
    new_state = TrainState(step=state.step + 1, params=params, opt_state=opt_state)
    new_state = jax.tree.map(lambda n, o: jnp.where(finite, n, o), new_state, state)
    metrics = dict(loss=loss, accuracy=sums["correct_sum"] / total_weight,
                   grad_norm=grad_norm, param_norm=optax.tree.norm(params),
                   predictions=sums["weight_sum"], finite=finite.astype(jnp.float32))
    if loss_transform is not None:
      metrics["objective"] = sums["objective"]
    if schedule is not None:
      metrics["lr"] = schedule(state.step)
    return new_state, metrics

  return step_fn
