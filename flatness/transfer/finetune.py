"""Full fine-tuning: every encoder weight plus a linear head on the pooled ``[CLS]`` state.

The paper's second downstream protocol (the authors' code: AdamW lr 1e-4,
weight decay 0.01, batch 128). Unlike the linear probe it can change the
features, so it measures how good a starting point the pre-trained weights are
rather than what they already represent. Data-parallel over the mesh; the
global batch must be divisible by the device count.
"""
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from flatness.model import tokens as tok
from flatness.model.objectives import Objective
from flatness.runtime import sharding


@dataclasses.dataclass(frozen=True)
class FinetuneConfig:
  epochs: int = 10
  batch_size: int = 128
  learning_rate: float = 1e-4
  weight_decay: float = 0.01
  dropout: bool = True        # the encoder's own dropout rate, on during fine-tuning


def _logits(objective: Objective, p, tokens, lengths, dropout_rng=None):
  ids = tok.encode(tokens, lengths, objective.model.cfg.seq_len)
  rngs = {} if dropout_rng is None else {"dropout": dropout_rng}
  pooled = objective.model.apply({"params": p["encoder"]}, ids, dropout_rng is None,
                                 method="pool", rngs=rngs)
  return pooled @ p["head"]["w"] + p["head"]["b"]


@functools.lru_cache(maxsize=16)
def _fns(objective: Objective, cfg: FinetuneConfig, mesh):
  tx = optax.adamw(cfg.learning_rate, weight_decay=cfg.weight_decay)
  rep, data = sharding.replicated(mesh), sharding.batch_sharding(mesh)

  def step(carry, batch, rng):
    p, s = carry
    def loss(p):
      logits = _logits(objective, p, batch["tokens"], batch["lengths"],
                       rng if cfg.dropout else None)
      return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, batch["labels"]))
    g = jax.grad(loss)(p)
    u, s = tx.update(g, s, p)
    return optax.apply_updates(p, u), s

  def predict(p, batch):
    return jnp.argmax(_logits(objective, p, batch["tokens"], batch["lengths"]), -1)

  return (tx, jax.jit(step, in_shardings=(rep, data, rep), out_shardings=rep,
                      donate_argnums=(0,)),
          jax.jit(predict, in_shardings=(rep, data), out_shardings=rep))


def _batch(tokens, lengths, labels, idx, width, mesh):
  return sharding.shard_batch(dict(tok.word_batch(tokens, lengths, idx, width),
                                   labels=labels[idx].astype(np.int32)), mesh)


def finetune_accuracy(objective: Objective, params, train, test, num_classes: int, key, *,
                      mesh, cfg: FinetuneConfig = FinetuneConfig()) -> float:
  """Fine-tunes a copy of ``params`` on ``train`` and returns accuracy on ``test``.

  ``train``/``test``: ``(tokens [n, W], lengths [n], labels [n])`` numpy arrays.
  """
  if cfg.batch_size % mesh.size:
    raise ValueError(f"finetune.batch_size ({cfg.batch_size}) must be divisible by the "
                     f"{mesh.size} devices")
  tx, step, predict = _fns(objective, cfg, mesh)
  width = tok.max_words(objective.model.cfg.seq_len)
  hidden = objective.model.cfg.hidden_size
  head = dict(w=jnp.zeros((hidden, num_classes)), b=jnp.zeros((num_classes,)))
  p = jax.device_put(dict(encoder=params, head=head), sharding.replicated(mesh))
  carry = (p, jax.jit(tx.init)(p))
  tokens, lengths, labels = (np.asarray(a) for a in train)
  n = len(labels)
  bs = min(cfg.batch_size, n - n % mesh.size)   # small labelled sets: one full batch
  if bs <= 0:
    raise ValueError(f"finetune: {n} training examples are fewer than the {mesh.size} devices")
  rng = np.random.default_rng(np.asarray(jax.random.key_data(key)))
  for epoch in range(cfg.epochs):
    order = rng.permutation(n)
    for i, start in enumerate(range(0, n - bs + 1, bs)):
      batch = _batch(tokens, lengths, labels, order[start:start + bs], width, mesh)
      carry = step(carry, batch, jax.random.fold_in(key, epoch * 100_000 + i))
  tokens, lengths, labels = (np.asarray(a) for a in test)
  correct = 0
  for start in range(0, len(labels), bs):
    idx = np.minimum(np.arange(start, start + bs), len(labels) - 1)
    pred = np.asarray(predict(carry[0], _batch(tokens, lengths, labels, idx, width, mesh)))
    keep = np.arange(start, start + bs) < len(labels)
    correct += int(np.sum((pred == labels[idx])[keep]))
  return correct / len(labels)
