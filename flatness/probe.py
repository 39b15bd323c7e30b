"""Linear probes: frozen features -> multinomial logistic regression trained with optax.

The paper's downstream measure (Sec. 4, NOTES.md): freeze the pre-trained
encoder, take the final hidden states of the word positions, concatenated
(``[CLS]``/``[SEP]`` and padding excluded; a sentence shorter than the model's
width contributes zeros), and train a linear softmax classifier on them with
AdamW (lr 1e-3, batch 512, 50 epochs in the authors' code). Mean-pooled word
states and the tanh-pooled ``[CLS]`` are offered as cheaper features.

Accuracy is reported over ``seeds`` fits, each on its own random subset of the
labelled pool and its own minibatch order; its standard deviation is the
spread over seeds (the paper reports mean +- std over 5 seeds).
"""
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from flatness import sharding
from flatness import tokens as tok
from flatness.objectives import Objective

FEATURES = ("concat", "mean", "cls")


@functools.lru_cache(maxsize=16)
def _feature_fn(objective: Objective, kind: str, mesh):
  seq_len = objective.model.cfg.seq_len

  def fn(params, batch):
    ids = tok.encode(batch["tokens"], batch["lengths"], seq_len)
    apply = functools.partial(objective.model.apply, {"params": params})
    if kind == "cls":
      return apply(ids, method="pool")
    h = apply(ids, method="encode")
    words = tok.word_mask(batch["lengths"], seq_len)[..., None].astype(h.dtype)
    if kind == "mean":
      return jnp.sum(h * words, 1) / jnp.maximum(jnp.sum(words, 1), 1.0)
    h = (h * words)[:, 1:seq_len - 1]
    return h.reshape(h.shape[0], -1)

  return jax.jit(fn, out_shardings=sharding.replicated(mesh))


def features(objective: Objective, params, tokens, lengths, *, kind: str = "concat", mesh,
             batch_size: int = 256) -> np.ndarray:
  """float32 [n, D] features of the frozen encoder for ``n`` sentences.

  ``kind``: ``concat`` (D = (seq_len - 2) * hidden, the paper's), ``mean`` or
  ``cls`` (D = hidden). Computed data-parallel over ``mesh``; every process
  gets all rows.
  """
  if kind not in FEATURES:
    raise ValueError(f"probe features: unknown kind {kind!r}; choose from {FEATURES}")
  width = objective.model.cfg.seq_len - 2
  batch_size = max(mesh.size, batch_size - batch_size % mesh.size)
  fn, rows, out = _feature_fn(objective, kind, mesh), sharding.process_rows(batch_size), []
  n = len(lengths)
  for start in range(0, n, batch_size):
    idx = np.minimum(np.arange(start, start + batch_size), n - 1)
    local = dict(tokens=np.asarray(tokens)[idx, :width].astype(np.int32),
                 lengths=np.minimum(np.asarray(lengths)[idx], width).astype(np.int32))
    local = {k: v[rows] for k, v in local.items()}
    out.append(np.asarray(fn(params, sharding.global_batch(local, mesh)), np.float32))
  return np.concatenate(out)[:n]


@dataclasses.dataclass(frozen=True)
class ProbeConfig:
  """Optimiser of the logistic regression (defaults: the authors' code)."""
  epochs: int = 50
  batch_size: int = 512
  learning_rate: float = 1e-3
  weight_decay: float = 0.01
  standardize: bool = True     # z-score features with the training set's statistics


@functools.partial(jax.jit, static_argnames=("num_classes", "cfg"))
def _fit(x, y, key, *, num_classes: int, cfg: ProbeConfig):
  n, d = x.shape
  bs = min(cfg.batch_size, n)
  steps_per_epoch = n // bs
  tx = optax.adamw(cfg.learning_rate, weight_decay=cfg.weight_decay)
  params = dict(w=jnp.zeros((d, num_classes), x.dtype), b=jnp.zeros((num_classes,), x.dtype))

  def loss(p, xb, yb):
    logits = xb @ p["w"] + p["b"]
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, yb))

  def epoch(carry, k):
    order = jax.random.permutation(k, n)[:steps_per_epoch * bs].reshape(steps_per_epoch, bs)

    def step(carry, idx):
      p, s = carry
      g = jax.grad(loss)(p, x[idx], y[idx])
      u, s = tx.update(g, s, p)
      return (optax.apply_updates(p, u), s), None

    return jax.lax.scan(step, carry, order)[0], None

  (params, _), _ = jax.lax.scan(epoch, (params, tx.init(params)),
                                jax.random.split(key, cfg.epochs))
  return params


def fit_logistic(x, y, num_classes: int, key, cfg: ProbeConfig = ProbeConfig()):
  """Trains ``softmax(x W + b)`` by minibatch AdamW; returns a predict function."""
  x = np.asarray(x, np.float32)
  mean = x.mean(0) if cfg.standardize else np.zeros(x.shape[1], np.float32)
  std = x.std(0) + 1e-6 if cfg.standardize else np.ones(x.shape[1], np.float32)
  p = _fit(jnp.asarray((x - mean) / std), jnp.asarray(y, jnp.int32), key,
           num_classes=num_classes, cfg=cfg)

  def predict(x_new):
    z = (np.asarray(x_new, np.float32) - mean) / std
    return np.asarray(jnp.argmax(z @ p["w"] + p["b"], -1))

  return predict


def probe_accuracy(train_x, train_y, test_x, test_y, num_classes: int, *, seeds: int = 3,
                   num_train: int | None = None, cfg: ProbeConfig = ProbeConfig(),
                   seed: int = 0) -> dict:
  """Test accuracy of ``seeds`` probes, each fit on ``num_train`` random training rows.

  Returns ``{"acc": mean, "acc_std": std over seeds, "per_seed": [...]}``.
  """
  n = len(train_y)
  num_train = n if num_train is None else min(int(num_train), n)
  accs = []
  for s in range(seeds):
    rows = np.random.default_rng([seed, s]).permutation(n)[:num_train]
    predict = fit_logistic(train_x[rows], train_y[rows], num_classes,
                           jax.random.key(seed * 1000 + s), cfg)
    accs.append(float(np.mean(predict(test_x) == np.asarray(test_y))))
  return dict(acc=float(np.mean(accs)), acc_std=float(np.std(accs)), per_seed=accs)
