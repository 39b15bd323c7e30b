"""Exact evaluation of the pre-training loss against the true generator.

The paper (Sec. 3 and the authors' evaluation code) masks each position of a test
sentence in turn and compares the model's softmax over the *words* (special
tokens excluded, renormalised) with the true conditional ``p(x_i | x_{-i})``.
For a validation set with exact conditionals we report, pooled over tokens
(nats per token):

* ``loss``: cross-entropy at the actual token, ``-log q(x_i | x_{-i})``;
* ``expected_ce``: ``-sum_w p(w | x_{-i}) log q(w | x_{-i})``, the same
  quantity's expectation over the masked word (what the paper calls the loss;
  it removes the sampling noise of the masked word);
* ``optimal_loss``: ``sum_w -p log p``, the loss of the true conditionals;
* ``loss_gap = expected_ce - optimal_loss``: the mean KL divergence from the
  truth, >= 0, zero only for the optimal predictor.

For a causal model: ``loss`` is next-token cross-entropy over ``w_1..w_n,
[SEP]``, ``optimal_loss`` is ``-log p(sentence) / (n + 1)`` pooled over the same
sentences, and ``loss_gap`` their difference (an unbiased estimate of the
excess loss).
"""
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from flatness.model import masking
from flatness.model import tokens as tok
from flatness.model.objectives import Objective
from flatness.runtime import sharding


@dataclasses.dataclass
class ValidationSet:
  tokens: np.ndarray                   # int32 [N, L]
  lengths: np.ndarray                  # int32 [N]
  conditionals: np.ndarray | None = None   # float32 [N, L, V] exact p(x_i | x_{-i})
  log_prob: np.ndarray | None = None       # float64 [N] exact log p(sentence)

  def __len__(self):
    return len(self.lengths)

  @staticmethod
  def from_records(source, width: int) -> "ValidationSet":
    """From a dataset split that stores ``tokens`` and ``conditionals`` (`data_gen.datasets`)."""
    records = [source[i] for i in range(len(source))]
    v = records[0]["conditionals"].shape[-1]
    tokens = np.zeros((len(records), width), np.int32)
    cond = np.zeros((len(records), width, v), np.float32)
    for r, rec in enumerate(records):
      n = min(len(rec["tokens"]), width)
      tokens[r, :n] = rec["tokens"][:n]
      cond[r, :n] = rec["conditionals"][:n]
    lengths = np.array([min(len(r["tokens"]), width) for r in records], np.int32)
    return ValidationSet(tokens, lengths, conditionals=cond)


def _mlm_sums(objective: Objective, params, batch, with_cond: bool):
  cfg = objective.model.cfg
  ids = tok.encode(batch["tokens"], batch["lengths"], cfg.seq_len)
  b = masking.single_position_masks(ids, batch["lengths"])
  logits = objective.logits(params, b)[:, 0, tok.NUM_SPECIAL:]
  logq = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  labels = b["labels"][:, 0] - tok.NUM_SPECIAL
  w = b["weights"][:, 0] * jnp.repeat(batch["valid"], tok.max_words(cfg.seq_len))
  nll = -jnp.take_along_axis(logq, jnp.clip(labels, 0)[:, None], axis=-1)[:, 0]
  out = dict(nll=jnp.sum(nll * w), count=jnp.sum(w),
             correct=jnp.sum((jnp.argmax(logq, -1) == labels) * w))
  if with_cond:
    cond = batch["cond"]
    p = cond.reshape(-1, cond.shape[-1]).astype(jnp.float32)
    ce = -jnp.sum(p * logq, axis=-1)
    ent = -jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0), axis=-1)
    out.update(expected_ce=jnp.sum(ce * w), entropy=jnp.sum(ent * w))
  return out


def _causal_sums(objective: Objective, params, batch):
  b = objective.prepare(None, batch)
  b["weights"] = b["weights"] * batch["valid"][:, None]
  t = objective.loss_terms(params, b)
  return dict(nll=t["nll_sum"], count=t["weight_sum"], correct=t["correct_sum"])


def evaluate(objective: Objective, params, val: ValidationSet, *, mesh, batch_size: int = 64):
  """Pooled validation metrics (see module docstring); keys without a prefix."""
  width = tok.max_words(objective.model.cfg.seq_len)
  n = len(val)
  batch_size = max(mesh.size, batch_size - batch_size % mesh.size)
  with_cond = val.conditionals is not None and not objective.causal
  fn = _compiled_eval(objective, mesh, with_cond)
  totals: dict[str, float] = {}
  for start in range(0, n, batch_size):
    idx = np.arange(start, start + batch_size)
    valid = idx < n
    idx = np.where(valid, idx, 0)
    batch = dict(tok.word_batch(val.tokens, val.lengths, idx, width),
                 valid=valid.astype(np.float32))
    if with_cond:
      batch["cond"] = val.conditionals[idx, :width]
    sums = jax.device_get(fn(params, sharding.shard_batch(batch, mesh)))
    for k, v in sums.items():
      totals[k] = totals.get(k, 0.0) + float(v)
  count = max(totals["count"], 1.0)
  out = dict(loss=totals["nll"] / count, accuracy=totals["correct"] / count)
  if with_cond:
    out.update(expected_ce=totals["expected_ce"] / count, optimal_loss=totals["entropy"] / count)
    out["loss_gap"] = out["expected_ce"] - out["optimal_loss"]
  if objective.causal and val.log_prob is not None:
    lengths = np.minimum(val.lengths, width)
    out["optimal_loss"] = float(-np.sum(val.log_prob) / np.sum(lengths + 1))
    out["loss_gap"] = out["loss"] - out["optimal_loss"]
  return out


class LossEvaluator:
  """`evaluate` as a checkpoint evaluator (`flatness.runtime.checkpoint_walk`): the
  metrics the training loop writes under ``eval/``, at every kept checkpoint, so that
  each one has its loss gap whatever ``train.eval_every`` was."""
  prefix = "eval"

  def __init__(self, objective: Objective, validation: ValidationSet, *, mesh,
               batch_size: int = 64):
    self.objective, self.validation, self.mesh = objective, validation, mesh
    self.batch_size = batch_size
    exact = validation.conditionals is not None or validation.log_prob is not None
    self.required = ["loss_gap"] if exact else ["loss"]

  def __call__(self, params, step: int) -> dict:
    del step
    return evaluate(self.objective, params, self.validation, mesh=self.mesh,
                    batch_size=self.batch_size)


# Keyed on the objective (a frozen dataclass, compared by value) and the mesh: one
# compilation per model, whichever caller evaluates it.
@functools.lru_cache(maxsize=16)
def _compiled_eval(objective: Objective, mesh, with_cond: bool):
  def fn(params, batch):
    if objective.causal:
      return _causal_sums(objective, params, batch)
    return _mlm_sums(objective, params, batch, with_cond)
  return jax.jit(fn, out_shardings=sharding.replicated(mesh))
