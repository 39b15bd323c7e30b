"""Stochastic estimates of the Hessian trace, with standard errors.

The paper's flatness measure (Sec. 4) is ``tr(H)`` of the
pre-training loss, in loss units per parameter-space unit squared (nats per
unit^2 for our losses), estimated by Hutchinson's method.

* ``hutchinson``: ``tr(H) = E[v^T H v]`` for probes with ``E[v v^T] = I``.
  Rademacher probes have variance ``2 (||H||_F^2 - sum_i H_ii^2)`` per probe,
  Gaussian ones ``2 ||H||_F^2``; the standard error is the sample standard
  deviation over probes / sqrt(probes). Probes run in vmapped chunks. With
  several batches, each batch gets its own ``num_probes`` probes (the paper
  draws one probe per fresh minibatch of 128 sentences). When the batches are
  independent draws of evaluation sentences and masks (``error='population'``,
  the default for two or more batches) the estimate is of ``tr`` of the
  *expected* Hessian of the loss over the evaluation distribution, and its
  standard error is the spread of the per-batch estimates over sqrt(batches):
  it covers both the probes and the draw of sentences and masks
  (`hessian.two_level`). ``error='conditional'`` gives the error given these
  batches (probes only; `hessian.stratified`), which is all that varies when
  the batches are a fixed dataset. The variance is ``(s_batch^2 +
  s_probe^2 / p) / G`` for ``G`` batches of ``p`` probes: more probes per batch
  never remove the batch term, only more batches do. Also
  returns a per-module breakdown (``sum over a module's entries of v * Hv``
  estimates the trace of that module's diagonal block).
  Hutch++ and XTrace below work on the Hessian of the mean over the given
  batches, so their errors are conditional on them.
* ``hutchpp`` (Meyer et al. 2021): a third of the products find the top of the
  spectrum (``Q = orth(H S)``), whose trace is taken exactly, a third the rest
  by Hutchinson on ``(I - QQ^T)``; error ``O(1/m)`` instead of ``O(1/sqrt(m))``
  when the spectrum decays. The standard error is that of the Hutchinson part.
* ``xtrace`` (Epperly, Tropp & Webber 2024, via matfree): exchangeable
  leave-one-out Hutch++; the standard error is matfree's leave-one-out one.

``num_matvecs`` counts Hessian-vector products (one per batch per vector).
"""
import dataclasses
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from matfree import stochtrace

from flatness.curvature import hessian as hs
from flatness.runtime import fn_cache

METHODS = ("hutchinson", "hutchpp", "xtrace")


@dataclasses.dataclass
class TraceEstimate:
  value: float
  stderr: float
  num_matvecs: int
  method: str
  per_module: dict = dataclasses.field(default_factory=dict)   # name -> (value, stderr)
  error: str = "conditional"   # what stderr covers: population (batches too) | conditional

  def as_metrics(self, prefix: str) -> dict:
    out = {prefix: self.value, f"{prefix}_stderr": self.stderr}
    out.update({f"{prefix}/{k}": v for k, (v, _) in self.per_module.items()})
    return out


@fn_cache.per_function(maxsize=64)
def _forms(loss_fn, kind, mask_leaves, id_leaves, num_modules, with_batch,
           hvp_method="forward_over_reverse"):
  """Cached jitted ``(params, keys [c], *batch) -> [c, modules]`` of ``sum_module v * Hv``."""

  def one(params, key, *batch):
    mask = jax.tree.unflatten(jax.tree.structure(params), list(mask_leaves))
    v = hs.probe(key, params, kind, mask)
    hv = hs.hvp(loss_fn, params, v, *batch, method=hvp_method)
    out = jnp.zeros(num_modules, jnp.float32)
    for vi, hi, m in zip(jax.tree.leaves(v), jax.tree.leaves(hv), id_leaves):
      if m >= 0:
        out = out.at[m].add(jnp.vdot(vi, hi).astype(out.dtype))
    return out

  return jax.jit(jax.vmap(one, in_axes=(None, 0) + ((None,) if with_batch else ())))


def _hutchinson(loss_fn, params, key, batches, num_probes, kind, mask, chunk, error,
                hvp_method):
  names, ids = hs.module_index(params, mask)
  forms = _forms(loss_fn, kind, tuple(jax.tree.leaves(mask)), tuple(jax.tree.leaves(ids)),
                 len(names), batches is not None, hvp_method)
  per_group = [np.concatenate([x, x.sum(axis=1, keepdims=True)], axis=1)   # + the total
               for x in hs.samples_per_batch(forms, params, key, batches, num_probes, chunk)]
  mean, se = hs.pooled(per_group, error)                          # [modules + 1]
  per_module = {n: (float(mean[i]), float(se[i])) for i, n in enumerate(names)}
  return TraceEstimate(float(mean[-1]), float(se[-1]), len(per_group) * num_probes, "hutchinson",
                       per_module, error)


def _hutchpp(op: hs.HessianOperator, key, num_matvecs, kind):
  n, ravel, unravel, matvec = op.flat
  k = max(num_matvecs // 3, 1)
  draw = (lambda kk, shape: jax.random.rademacher(kk, shape, op.dtype)) if kind == "rademacher" \
      else (lambda kk, shape: jax.random.normal(kk, shape, op.dtype))
  k1, k2 = jax.random.split(key)
  s = draw(k1, (n, k))
  y = jnp.stack([matvec(s[:, j]) for j in range(k)], axis=1)
  q, _ = jnp.linalg.qr(y)
  top = sum(float(jnp.vdot(q[:, j], matvec(q[:, j]))) for j in range(q.shape[1]))
  g = draw(k2, (n, k))
  g = g - q @ (q.T @ g)
  rest = np.array([float(jnp.vdot(g[:, j], matvec(g[:, j]))) for j in range(k)])
  se = rest.std(ddof=1) / np.sqrt(k) if k > 1 else float("nan")
  return TraceEstimate(top + float(rest.mean()), float(se), op.num_matvecs, "hutchpp")


def _xtrace(op: hs.HessianOperator, key, num_matvecs):
  n, ravel, unravel, matvec = op.flat
  num = max(num_matvecs // 2, 2)
  if num > n:
    raise ValueError(f"xtrace needs at most {2 * n} products for a {n}-dimensional selection")
  sampler = stochtrace.sampler_normal(jnp.zeros(n, op.dtype), num=num)
  estimate = stochtrace.estimator_leave_one_out_mean_and_sem(
      stochtrace.leave_one_out_xtrace(), sampler)
  mean, sem = estimate(lambda v: matvec(v), key)
  return TraceEstimate(float(mean), float(sem), op.num_matvecs, "xtrace")


def hessian_trace(loss_fn: Callable, params, key, *, batches: Sequence[Any] | None = None,
                  num_probes: int = 32, probe: str = "rademacher", method: str = "hutchinson",
                  include: Callable[[str], bool] | None = None, chunk: int = 8,
                  error: str | None = None,
                  hvp: str = "forward_over_reverse") -> TraceEstimate:
  """Estimates ``tr(H)`` of ``loss_fn`` (mean over ``batches`` if given) at ``params``.

  Args:
    loss_fn: ``loss_fn(params)`` or ``loss_fn(params, batch)``.
    params: the point (a pytree).
    key: PRNG key of the probes.
    batches: optional list of batches; the Hessian is that of the mean loss.
    num_probes: Hutchinson probes per batch; for hutchpp / xtrace the budget of products.
      Under a fixed budget of products, one probe on each of more batches gives the
      smallest population error (the variance in the module docstring).
    probe: 'rademacher' or 'gaussian' (xtrace always uses Gaussian probes).
    method: 'hutchinson', 'hutchpp' or 'xtrace'.
    include: ``include(name) -> bool`` on parameter paths like 'layer_0/attn/query/kernel';
      the trace is of the Hessian block of the included parameters
      (`hessian.paper_selection` drops the pooler and the MLM output bias, as the paper).
    chunk: probes evaluated together (vmapped); memory grows with it.
    hvp: the order of differentiation of each product (`hessian.HVP_METHODS`, hutchinson
      only). Per product within a chunk of 8, ``reverse_over_forward`` costs 1.45-2.02
      gradients on the CPU against 2.28-2.58 for the default (`benchmarks.curvature`).
    error: what ``stderr`` covers: 'population' (the batches are independent draws;
      hutchinson only, at least 2 batches), 'conditional' (given these batches), or None:
      population for hutchinson with >= 2 batches, else conditional. The estimate's
      ``error`` field says which was used.
  """
  if method not in METHODS:
    raise ValueError(f"method must be one of {METHODS}, got {method!r}")
  if num_probes < 1:
    raise ValueError(f"num_probes must be positive, got {num_probes}")
  mask = hs.selection_mask(params, include)
  if method == "hutchinson":
    return _hutchinson(loss_fn, params, key, batches, num_probes, probe, mask, chunk,
                       hs.resolve_error(error, batches), hvp)
  if error == "population":
    raise ValueError(f"method={method!r} estimates the trace of the mean Hessian over the given "
                     "batches; its error is conditional on them. Use method='hutchinson' for a "
                     "population error")
  op = hs.HessianOperator(loss_fn, params, batches, mask)
  if method == "hutchpp":
    return _hutchpp(op, key, num_probes, probe)
  return _xtrace(op, key, num_probes)
