"""The paper's adversarial training algorithm: same pre-training loss, worse transfer.

Sec. 4.3 of the paper builds models that reach the optimal
pre-training loss but transfer badly by minimising

    J(theta) = L_MLM(theta) - lambda * R(theta),

where ``R`` is the validation loss of a downstream head fitted *in closed form*
on the current features, so that the gradient of ``J`` pushes the features away
from anything a linear head can use while the MLM loss keeps the model at its
optimum. Following the authors' description:

* features ``f_i`` of the clean sentence ``i`` (no masks, no dropout),
  L2-normalised. The authors pool ``[CLS]``; in our models the tanh pooler gets
  no MLM gradient, is excluded from the trace and is never read by the paper's
  concatenated-feature probe, so attacking it changes nothing the probe sees
  (measured: task A unchanged). By default (``features='concat'``) the
  adversary attacks exactly what the linear probe reads: the final hidden
  states of the word positions, concatenated (`flatness.transfer.probe.encoder_features`);
  ``'mean'`` and ``'cls'`` (the authors' choice) are offered too;
* targets ``y_i``: the one-hot downstream label minus ``1/K`` (centred);
* the first ``fit_fraction`` (7/8) of the batch fits kernel ridge regression,
  ``alpha = (F_fit F_fit^T + ridge I)^-1 Y_fit``; the rest validates it:
  ``R = mean_i || F_val F_fit^T alpha - Y_val ||^2`` (squared error per
  validation sentence, summed over classes).

Everything is differentiable (the solve included), so ``J`` is a pure function
of the params and `flatness.training.train_step` differentiates it as any other loss;
with ``lambda = 0`` the step is plain pre-training.
"""
import dataclasses

import jax
import jax.numpy as jnp

from flatness.model.objectives import Objective
from flatness.transfer import probe


@dataclasses.dataclass(frozen=True)
class AdversarialConfig:
  task: str                 # downstream task whose labels the batches carry
  num_classes: int
  lam: float = 1.0          # weight of the head's validation loss (subtracted)
  ridge: float = 1e-3       # kernel ridge regulariser (the authors' value)
  fit_fraction: float = 0.875
  features: str = "concat"  # what the head reads: concat (the probe's) | mean | cls

  def __post_init__(self):
    if self.features not in probe.FEATURES:
      raise ValueError(f"adversarial.features: unknown {self.features!r}; choose from "
                       f"{probe.FEATURES}")


def ridge_validation_loss(features, labels, num_classes: int, *, ridge: float = 1e-3,
                          fit_fraction: float = 0.875):
  """Validation squared error of a kernel ridge head fit on the first rows.

  ``features`` [B, D] (normalised here), ``labels`` int [B]. Returns a scalar:
  the mean over validation rows of the squared error summed over classes.
  """
  b = features.shape[0]
  n_fit = int(round(b * fit_fraction))
  if not 0 < n_fit < b:
    raise ValueError(f"adversarial.fit_fraction={fit_fraction} leaves no fit or no "
                     f"validation rows in a batch of {b}")
  f = features / jnp.maximum(jnp.linalg.norm(features, axis=-1, keepdims=True), 1e-12)
  y = jax.nn.one_hot(labels, num_classes, dtype=f.dtype) - 1.0 / num_classes
  f_fit, f_val, y_fit, y_val = f[:n_fit], f[n_fit:], y[:n_fit], y[n_fit:]
  kernel = f_fit @ f_fit.T + ridge * jnp.eye(n_fit, dtype=f.dtype)
  alpha = jnp.linalg.solve(kernel, y_fit)
  pred = (f_val @ f_fit.T) @ alpha
  return jnp.mean(jnp.sum((pred - y_val) ** 2, axis=-1))


def make_loss_transform(objective: Objective, cfg: AdversarialConfig):
  """``(params, prepared, raw, rng, loss) -> loss - lam * R`` for `make_train_step`."""
  label_key = f"label_{cfg.task}"

  def transform(params, prepared, raw, rng, loss):
    del prepared, rng
    if cfg.lam == 0:
      return loss
    feats = probe.encoder_features(objective, params, raw["tokens"], raw["lengths"],
                                   cfg.features)
    r = ridge_validation_loss(feats, raw[label_key], cfg.num_classes, ridge=cfg.ridge,
                              fit_fraction=cfg.fit_fraction)
    return loss - cfg.lam * r

  return transform
