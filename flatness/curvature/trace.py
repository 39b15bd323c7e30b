"""Stochastic estimates of the Hessian trace, with standard errors.

The paper's flatness measure (Sec. 4) is ``tr(H)`` of the
pre-training loss, in loss units per parameter-space unit squared (nats per
unit^2 for our losses), estimated by Hutchinson's method.

* ``hutchinson``: ``tr(H) = E[v^T H v]`` for probes with ``E[v v^T] = I``.
  Rademacher probes have variance ``2 (||H||_F^2 - sum_i H_ii^2)`` per probe,
  Gaussian ones ``2 ||H||_F^2``; the standard error is the sample standard
  deviation over probes / sqrt(probes). Probes run in vmapped chunks, of one
  batch's probes or (``across_batches``) of (batch, probe) pairs. With
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
  never remove the batch term, only more batches do; `allocation` estimates both
  terms from the samples (``TraceEstimate.samples``) and gives the ``p`` that
  reaches a given error soonest once a batch's shared work is priced. Also
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
  # hutchinson: the samples v^T H v of the selection, [batches, probes] (one row for a
  # closed-over loss); `allocation.variance_components` splits their variance.
  samples: np.ndarray | None = None

  def as_metrics(self, prefix: str) -> dict:
    out = {prefix: self.value, f"{prefix}_stderr": self.stderr}
    out.update({f"{prefix}/{k}": v for k, (v, _) in self.per_module.items()})
    return out


@fn_cache.per_function(maxsize=64)
def _forms(loss_fn, kind, mask_leaves, id_leaves, num_modules,
           hvp_method="forward_over_reverse", across_batches=False):
  """Cached jitted ``sum_module v * Hv`` per probe, ``[c, modules]``: ``(params, keys [c],
  *batch)`` (the probes of one batch, `hessian.hvps`), or with ``across_batches``
  ``(params, keys [c], batches)``, a tuple of ``c`` batches stacked here, probe ``i``
  on batch ``i`` (one product per pair, vmapped; `hessian.samples_across_batches`)."""

  def forms(v, hv):
    out = jnp.zeros(num_modules, jnp.float32)
    for vi, hi, m in zip(jax.tree.leaves(v), jax.tree.leaves(hv), id_leaves):
      if m >= 0:
        out = out.at[m].add(jnp.vdot(vi, hi).astype(out.dtype))
    return out

  def probes(params, keys):
    mask = jax.tree.unflatten(jax.tree.structure(params), list(mask_leaves))
    return jax.vmap(lambda k: hs.probe(k, params, kind, mask))(keys)

  def chunk(params, keys, *batch):
    vs = probes(params, keys)
    return jax.vmap(forms)(vs, hs.hvps(loss_fn, params, vs, *batch, method=hvp_method))

  def pairs(params, keys, batches):
    vs, stacked = probes(params, keys), hs.stack_batches(batches)
    hv = jax.vmap(lambda v, b: hs.hvp(loss_fn, params, v, b, method=hvp_method))(vs, stacked)
    return jax.vmap(forms)(vs, hv)

  return jax.jit(pairs if across_batches else chunk)


def _hutchinson(loss_fn, params, key, batches, num_probes, kind, mask, chunk, error,
                hvp_method, across_batches):
  names, ids = hs.module_index(params, mask)
  across = across_batches and batches is not None
  forms = _forms(loss_fn, kind, tuple(jax.tree.leaves(mask)), tuple(jax.tree.leaves(ids)),
                 len(names), hvp_method, across)
  sample = hs.samples_across_batches if across else hs.samples_per_batch
  per_group = [np.concatenate([x, x.sum(axis=1, keepdims=True)], axis=1)   # + the total
               for x in sample(forms, params, key, batches, num_probes, chunk)]
  mean, se = hs.pooled(per_group, error)                          # [modules + 1]
  per_module = {n: (float(mean[i]), float(se[i])) for i, n in enumerate(names)}
  return TraceEstimate(float(mean[-1]), float(se[-1]), len(per_group) * num_probes, "hutchinson",
                       per_module, error, np.stack([x[:, -1] for x in per_group]))


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
                  error: str | None = None, hvp: str = "forward_over_reverse",
                  across_batches: bool = False) -> TraceEstimate:
  """Estimates ``tr(H)`` of ``loss_fn`` (mean over ``batches`` if given) at ``params``.

  Args:
    loss_fn: ``loss_fn(params)`` or ``loss_fn(params, batch)``.
    params: the point (a pytree).
    key: PRNG key of the probes.
    batches: optional list of batches; the Hessian is that of the mean loss.
    num_probes: Hutchinson probes per batch; for hutchpp / xtrace the budget of products.
      Under a fixed budget of products, one probe on each of more batches gives the
      smallest population error (the variance in the module docstring); under a fixed
      time, where a chunk of probes shares its batch's work, `allocation.best_probes`.
    probe: 'rademacher' or 'gaussian' (xtrace always uses Gaussian probes).
    method: 'hutchinson', 'hutchpp' or 'xtrace'.
    include: ``include(name) -> bool`` on parameter paths like 'layer_0/attn/query/kernel';
      the trace is of the Hessian block of the included parameters
      (`hessian.paper_selection` drops the pooler and the MLM output bias, as the paper).
    chunk: products evaluated together (vmapped); memory grows with it.
    hvp: the order of differentiation of each product (`hessian.HVP_METHODS`, hutchinson
      only). ``linearized`` linearises the gradient once per batch and chunk (the primal
      and backward pass once, their residuals kept in memory) and runs only the tangent
      pass per probe (`hessian.hvps`). `benchmarks.curvature` times each per product,
      alone, in a chunk of probes and in a chunk across batches.
    across_batches: fill each chunk with (batch, probe) pairs across the batches instead
      of with probes of one batch, so that with one probe per batch a pass still holds
      ``chunk`` products (of ``chunk`` batches; memory: ``chunk`` batches' products).
      Same probes and batches, so the same estimate up to float rounding
      (`hessian.samples_across_batches`). Hutchinson with ``batches`` only.
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
    if hvp not in hs.HVP_METHODS:
      raise ValueError(f"hvp must be one of {hs.HVP_METHODS}, got {hvp!r}")
    return _hutchinson(loss_fn, params, key, batches, num_probes, probe, mask, chunk,
                       hs.resolve_error(error, batches), hvp, across_batches)
  if error == "population":
    raise ValueError(f"method={method!r} estimates the trace of the mean Hessian over the given "
                     "batches; its error is conditional on them. Use method='hutchinson' for a "
                     "population error")
  op = hs.HessianOperator(loss_fn, params, batches, mask)
  if method == "hutchpp":
    return _hutchpp(op, key, num_probes, probe)
  return _xtrace(op, key, num_probes)
