"""Optimizer factory over optax: AdamW, Adam, SGD (+momentum), LAMB, Adafactor, SAM.

All optimizers take a learning-rate schedule: linear warmup from 0 for
``warmup_steps``, then ``linear`` decay to ``end_lr_factor * learning_rate`` at
``total_steps``, ``cosine`` decay to the same, or ``constant``. The paper's
recipe (App. A) is AdamW, lr 5e-4, weight decay 0.01, betas
(0.9, 0.98), eps 1e-6, 3,333 warmup steps, linear decay, no clipping.

Weight decay applies to matrices and embeddings only (BERT excludes biases and
LayerNorm parameters). SAM (Foret et al. 2021) is optax.contrib.sam in opaque
mode: its update needs ``grad_fn`` (see `flatness.train_step`), which it calls
once per step at the adversarially perturbed parameters
``theta + rho * g / ||g||``, so a SAM step costs two gradients.
"""
from typing import Any, Mapping

import jax
import optax
import optax.contrib

OPTIMIZERS = ("adamw", "adam", "sgd", "lamb", "adafactor", "sam")
SCHEDULES = ("linear", "cosine", "constant")


def make_schedule(cfg: Mapping[str, Any], total_steps: int) -> optax.Schedule:
  lr = float(cfg["learning_rate"])
  warmup = int(cfg.get("warmup_steps", 0))
  kind = cfg.get("schedule", "linear")
  if lr <= 0:
    raise ValueError(f"optimizer.learning_rate must be positive, got {lr}")
  if warmup < 0:
    raise ValueError(f"optimizer.warmup_steps must be >= 0, got {warmup}")
  if kind not in SCHEDULES:
    raise ValueError(f"optimizer.schedule: unknown schedule {kind!r}; choose one of {SCHEDULES}")
  end = lr * float(cfg.get("end_lr_factor", 0.0))
  decay_steps = max(total_steps - warmup, 1)
  if kind == "linear":
    after = optax.linear_schedule(lr, end, decay_steps)
  elif kind == "cosine":
    after = optax.cosine_decay_schedule(lr, decay_steps, alpha=end / lr)
  else:
    after = optax.constant_schedule(lr)
  if warmup == 0:
    return after
  return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), after], [warmup])


def decay_mask(params):
  """True for matrices and embeddings; biases and LayerNorm parameters are not decayed."""
  return jax.tree.map(lambda x: x.ndim >= 2, params)


def _base(name: str, cfg: Mapping[str, Any], lr: optax.Schedule) -> optax.GradientTransformation:
  wd = float(cfg.get("weight_decay", 0.0))
  b1, b2, eps = float(cfg.get("b1", 0.9)), float(cfg.get("b2", 0.999)), float(cfg.get("eps", 1e-8))
  if name == "adamw":
    return optax.adamw(lr, b1=b1, b2=b2, eps=eps, weight_decay=wd, mask=decay_mask)
  if name == "adam":
    return optax.adam(lr, b1=b1, b2=b2, eps=eps)
  if name == "sgd":
    momentum = float(cfg.get("momentum", 0.0))
    sgd = optax.sgd(lr, momentum=momentum or None, nesterov=bool(cfg.get("nesterov", False)))
    if wd:
      return optax.chain(optax.add_decayed_weights(wd, mask=decay_mask), sgd)
    return sgd
  if name == "lamb":
    return optax.lamb(lr, b1=b1, b2=b2, eps=eps, weight_decay=wd, mask=decay_mask)
  if name == "adafactor":
    return optax.adafactor(lr, weight_decay_rate=wd or None, weight_decay_mask=decay_mask)
  raise ValueError(f"optimizer.name: unknown optimizer {name!r}; choose one of {OPTIMIZERS}")


def make_optimizer(cfg: Mapping[str, Any], total_steps: int) -> optax.GradientTransformationExtraArgs:
  """Builds the optimizer named by ``cfg['name']``.

  The result always accepts ``update(grads, state, params, grad_fn=...)``;
  only SAM uses ``grad_fn(params, i) -> grads``.
  """
  name = cfg.get("name", "adamw")
  if name not in OPTIMIZERS:
    raise ValueError(f"optimizer.name: unknown optimizer {name!r}; choose one of {OPTIMIZERS}")
  lr = make_schedule(cfg, total_steps)
  clip = float(cfg.get("clip_norm", 0.0))
  if clip < 0:
    raise ValueError(f"optimizer.clip_norm must be >= 0 (0 disables clipping), got {clip}")

  def clipped(tx):
    return optax.chain(optax.clip_by_global_norm(clip), tx) if clip else tx

  if name != "sam":
    return optax.with_extra_args_support(clipped(_base(name, cfg, lr)))
  base = cfg.get("sam_base", "sgd")
  if base == "sam" or base not in OPTIMIZERS:
    raise ValueError(f"optimizer.sam_base: unknown base optimizer {base!r}; choose one of "
                     f"{OPTIMIZERS[:-1]}")
  rho = float(cfg.get("sam_rho", 0.05))
  if rho <= 0:
    raise ValueError(f"optimizer.sam_rho must be positive, got {rho}")
  adversary = optax.chain(optax.contrib.normalize(), optax.sgd(rho))
  return optax.contrib.sam(clipped(_base(base, cfg, lr)), adversary, sync_period=2,
                           opaque_mode=True)
