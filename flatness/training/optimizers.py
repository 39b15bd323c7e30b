"""Optimizer factory over optax: AdamW, Adam, SGD (+momentum), LAMB, Adafactor, SAM.

All optimizers take a learning-rate schedule: linear warmup from 0 for
``warmup_steps``, then ``linear`` decay to ``end_lr_factor * learning_rate`` at
``total_steps``, ``cosine`` decay to the same, or ``constant``. The paper's
recipe (App. A) is AdamW, lr 5e-4, weight decay 0.01, betas
(0.9, 0.98), eps 1e-6, 3,333 warmup steps, linear decay, no clipping.

Weight decay applies to matrices and embeddings only (BERT excludes biases and
LayerNorm parameters). SAM (Foret et al. 2021) is optax.contrib.sam in opaque
mode: its update needs ``grad_fn`` (see `flatness.training.train_step`), which it calls
once per step at the adversarially perturbed parameters
``theta + rho * g / ||g||``, so a SAM step costs two gradients.
"""
import dataclasses
from typing import Any, Mapping

import jax
import optax
import optax.contrib

OPTIMIZERS = ("adamw", "adam", "sgd", "lamb", "adafactor", "sam")
SCHEDULES = ("linear", "cosine", "constant")


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
  """The ``optimizer`` section, typed. No defaults here: every value comes from the
  config file (`experiments/configs/pretrain.py` documents each field)."""
  name: str
  learning_rate: float
  schedule: str
  warmup_steps: int
  end_lr_factor: float
  weight_decay: float
  b1: float
  b2: float
  eps: float
  momentum: float
  nesterov: bool
  clip_norm: float
  sam_rho: float
  sam_base: str

  @classmethod
  def from_config(cls, cfg: "Mapping[str, Any] | OptimizerConfig") -> "OptimizerConfig":
    """Converts (and checks) a config section; raises ValueError naming what is wrong."""
    if isinstance(cfg, cls):
      return cfg
    fields = {f.name: f.type for f in dataclasses.fields(cls)}
    missing = [k for k in fields if k not in cfg]
    if missing:
      raise ValueError(f"optimizer: missing fields {missing}; the section of "
                       "experiments/configs/pretrain.py sets every one")
    c = cls(**{k: t(cfg[k]) for k, t in fields.items()})      # str, float, int, bool
    c.check()
    return c

  def check(self) -> None:
    if self.name not in OPTIMIZERS:
      raise ValueError(f"optimizer.name: unknown optimizer {self.name!r}; choose one of "
                       f"{OPTIMIZERS}")
    if self.learning_rate <= 0:
      raise ValueError(f"optimizer.learning_rate must be positive, got {self.learning_rate}")
    if self.warmup_steps < 0:
      raise ValueError(f"optimizer.warmup_steps must be >= 0, got {self.warmup_steps}")
    if self.schedule not in SCHEDULES:
      raise ValueError(f"optimizer.schedule: unknown schedule {self.schedule!r}; choose one of "
                       f"{SCHEDULES}")
    if self.clip_norm < 0:
      raise ValueError(f"optimizer.clip_norm must be >= 0 (0 disables clipping), got "
                       f"{self.clip_norm}")
    if self.name == "sam":
      if self.sam_base == "sam" or self.sam_base not in OPTIMIZERS:
        raise ValueError(f"optimizer.sam_base: unknown base optimizer {self.sam_base!r}; choose "
                         f"one of {OPTIMIZERS[:-1]}")
      if self.sam_rho <= 0:
        raise ValueError(f"optimizer.sam_rho must be positive, got {self.sam_rho}")


def make_schedule(cfg, total_steps: int) -> optax.Schedule:
  """Warmup then decay (module docstring); ``cfg``: an `OptimizerConfig` or its section."""
  c = OptimizerConfig.from_config(cfg)
  lr = c.learning_rate
  end = lr * c.end_lr_factor
  decay_steps = max(total_steps - c.warmup_steps, 1)
  if c.schedule == "linear":
    after = optax.linear_schedule(lr, end, decay_steps)
  elif c.schedule == "cosine":
    after = optax.cosine_decay_schedule(lr, decay_steps, alpha=end / lr)
  else:
    after = optax.constant_schedule(lr)
  if c.warmup_steps == 0:
    return after
  return optax.join_schedules([optax.linear_schedule(0.0, lr, c.warmup_steps), after],
                              [c.warmup_steps])


def decay_mask(params):
  """True for matrices and embeddings; biases and LayerNorm parameters are not decayed."""
  return jax.tree.map(lambda x: x.ndim >= 2, params)


def _base(name: str, c: OptimizerConfig, lr: optax.Schedule) -> optax.GradientTransformation:
  wd = c.weight_decay
  if name == "adamw":
    return optax.adamw(lr, b1=c.b1, b2=c.b2, eps=c.eps, weight_decay=wd, mask=decay_mask)
  if name == "adam":
    return optax.adam(lr, b1=c.b1, b2=c.b2, eps=c.eps)
  if name == "sgd":
    sgd = optax.sgd(lr, momentum=c.momentum or None, nesterov=c.nesterov)
    if wd:
      return optax.chain(optax.add_decayed_weights(wd, mask=decay_mask), sgd)
    return sgd
  if name == "lamb":
    return optax.lamb(lr, b1=c.b1, b2=c.b2, eps=c.eps, weight_decay=wd, mask=decay_mask)
  if name == "adafactor":
    return optax.adafactor(lr, weight_decay_rate=wd or None, weight_decay_mask=decay_mask)
  raise ValueError(f"optimizer.name: unknown optimizer {name!r}; choose one of {OPTIMIZERS}")


def make_optimizer(cfg, total_steps: int) -> optax.GradientTransformationExtraArgs:
  """Builds the optimizer named by ``cfg.name`` (an `OptimizerConfig` or its section).

  The result always accepts ``update(grads, state, params, grad_fn=...)``;
  only SAM uses ``grad_fn(params, i) -> grads``.
  """
  c = OptimizerConfig.from_config(cfg)
  lr = make_schedule(c, total_steps)

  def clipped(tx):
    return optax.chain(optax.clip_by_global_norm(c.clip_norm), tx) if c.clip_norm else tx

  if c.name != "sam":
    return optax.with_extra_args_support(clipped(_base(c.name, c, lr)))
  adversary = optax.chain(optax.contrib.normalize(), optax.sgd(c.sam_rho))
  return optax.contrib.sam(clipped(_base(c.sam_base, c, lr)), adversary, sync_period=2,
                           opaque_mode=True)
