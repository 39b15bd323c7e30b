"""Fisher and Gauss-Newton traces of a softmax cross-entropy.

For a loss ``L = (1/W) sum_n w_n l_n`` with ``l_n = -log p_theta(y_n | x_n)``
over predictions ``n`` (masked positions, weights ``w_n``):

* Fisher: ``F = (1/W) sum_n w_n E_{y ~ p_theta(.|x_n)}[grad l_n grad l_n^T]``,
  the expected Hessian when the labels come from the model itself. At a
  minimiser of a well-specified model's population loss it equals the Hessian
  (the paper's Sec. 5 argument; its appendix estimates the trace this way).
  `fisher_trace` samples ``y`` from the model and estimates ``tr F`` by
  ``||sum_n r_n sqrt(w_n) grad l_n||^2 / W`` with independent random signs
  ``r_n`` (``method='signs'``: one backward pass per sample, unbiased, since
  the cross terms vanish in expectation), or by the exact per-prediction
  gradients ``sum_n w_n ||grad l_n||^2 / W`` (``method='per_example'``: the
  paper's estimator, one backward pass per prediction).
* Gauss-Newton: ``G = (1/W) sum_n w_n J_n^T (diag p_n - p_n p_n^T) J_n`` with
  ``J_n`` the Jacobian of the logits; ``G = E_y[F]`` exactly for softmax
  outputs. `ggn_trace` is Hutchinson on ``v^T G v`` = the softmax-covariance
  quadratic form of the logit tangent ``J v`` (one forward-mode pass per probe,
  cheaper than a Hessian-vector product).

* Gradient noise: ``M = (1/W) sum_n w_n E[grad l_n grad l_n^T]`` with the
  data's own targets ``t_n`` (``grad l_n = J_n^T (p_n - t_n)``): the one-hot
  word the generator drew (sampled labels, the SGD noise of pre-training), or
  the exact conditional ``q_n`` (`data_gen.bert_targets.exact_targets`).
  `gradient_noise_trace` estimates ``tr M`` with the random-sign estimator
  above; ``tr M`` is the trace of the per-prediction gradient covariance plus
  ``||E grad l_n||^2``, which vanishes at a stationary point. The premise of
  the label-noise mechanism (paper Sec. 4): at a minimiser of the population
  loss, with sampled labels ``E[t_n | x_n] = q_n = p_n``, so ``M`` is the
  Gauss-Newton matrix, the Hessian there (``tr M / tr H = 1``); with exact
  targets every ``grad l_n = 0`` (``tr M = 0``).

``logits_fn(params, *batch) -> (logits [..., V], weights [...])``. Units: loss
units per parameter unit squared, as the Hessian trace.
"""
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp

from flatness.curvature import hessian as hs
from flatness.curvature.trace import TraceEstimate
from flatness.runtime import fn_cache


def _nll(logits, labels):
  return -jnp.take_along_axis(jax.nn.log_softmax(logits), labels[..., None], axis=-1)[..., 0]


@fn_cache.per_function(maxsize=32)
def _fisher_signs_fn(logits_fn, with_batch):
  def one(params, key, *batch):
    k_y, k_r = jax.random.split(key)
    # One forward pass: sample y from it, then pull the cotangent of
    # sum_n r_n sqrt(w_n) l_n (d l_n / d logits = softmax - onehot(y)) back through it.
    (logits, w), pullback = jax.vjp(lambda p: logits_fn(p, *batch), params)
    y = jax.random.categorical(k_y, logits)
    r = jax.random.rademacher(k_r, w.shape, logits.dtype)
    dlogits = (r * jnp.sqrt(w))[..., None] * (
        jax.nn.softmax(logits) - jax.nn.one_hot(y, logits.shape[-1], dtype=logits.dtype))
    (g,) = pullback((dlogits, jnp.zeros_like(w)))
    return hs.vdot(g, g) / jnp.maximum(jnp.sum(w), 1.0)
  return jax.jit(jax.vmap(one, in_axes=(None, 0) + ((None,) if with_batch else ())))


@fn_cache.per_function(maxsize=32)
def _fisher_per_example_fn(logits_fn, with_batch):
  def one(params, key, *batch):
    logits, w = logits_fn(params, *batch)
    y = jax.random.categorical(key, jax.lax.stop_gradient(logits))
    flat_w = w.reshape(-1)

    def grad_sq(i):
      def single(p):
        lg, _ = logits_fn(p, *batch)
        return _nll(lg, y).reshape(-1)[i]
      g = jax.grad(single)(params)
      return hs.vdot(g, g)

    sq = jax.lax.map(grad_sq, jnp.arange(flat_w.shape[0]))
    return jnp.sum(flat_w * sq) / jnp.maximum(jnp.sum(flat_w), 1.0)
  return jax.jit(jax.vmap(one, in_axes=(None, 0) + ((None,) if with_batch else ())))


@fn_cache.per_function(maxsize=32)
def _ggn_fn(logits_fn, kind, with_batch):
  def one(params, key, *batch):
    v = hs.probe(key, params, kind)
    (logits, w), (u, _) = jax.jvp(lambda p: logits_fn(p, *batch), (params,), (v,))
    p = jax.nn.softmax(logits)
    quad = jnp.sum(p * u * u, -1) - jnp.sum(p * u, -1) ** 2
    return jnp.sum(w * quad) / jnp.maximum(jnp.sum(w), 1.0)
  return jax.jit(jax.vmap(one, in_axes=(None, 0) + ((None,) if with_batch else ())))


@fn_cache.per_function(maxsize=32)
def _noise_signs_fn(logits_fn, targets_fn, include):
  def one(params, key, batch):
    (logits, w), pullback = jax.vjp(lambda p: logits_fn(p, batch), params)
    r = jax.random.rademacher(key, w.shape, logits.dtype)
    dlogits = (r * jnp.sqrt(w))[..., None] * (jax.nn.softmax(logits) - targets_fn(batch))
    (g,) = pullback((dlogits, jnp.zeros_like(w)))
    g = jax.tree.map(lambda x, keep: x if keep else jnp.zeros_like(x), g,
                     hs.selection_mask(params, include))
    return hs.vdot(g, g) / jnp.maximum(jnp.sum(w), 1.0)
  return jax.jit(jax.vmap(one, in_axes=(None, 0, None)))


def gradient_noise_trace(logits_fn: Callable, params, key, *, batches: Sequence[Any],
                         targets_fn: Callable, num_samples: int = 4, chunk: int = 4,
                         include: Callable[[str], bool] | None = None,
                         error: str | None = None) -> TraceEstimate:
  """``tr M``, the second moment of per-prediction gradients with the data's targets
  (see module docstring); ``targets_fn(batch) -> [..., V]`` gives them (one-hot labels or
  exact conditionals). ``include`` restricts the parameters as in `hessian_trace`, so
  that ``tr M`` and ``tr H`` cover the same block; ``num_samples`` sign draws per batch,
  ``error`` as in `flatness.curvature.trace.hessian_trace`."""
  fn = _noise_signs_fn(logits_fn, targets_fn, include)
  value, se, n, error = _run(fn, params, key, batches, num_samples, chunk, error)
  return TraceEstimate(value, se, n, "gradient_noise", error=error)


def _run(fn, params, key, batches, num_samples, chunk, error):
  error = hs.resolve_error(error, batches)
  per_group = hs.samples_per_batch(fn, params, key, batches, num_samples, chunk)
  mean, se = hs.pooled(per_group, error)
  return float(mean), float(se), len(per_group) * num_samples, error


def fisher_trace(logits_fn: Callable, params, key, *, batches: Sequence[Any] | None = None,
                 num_samples: int = 16, method: str = "signs", chunk: int = 4,
                 error: str | None = None) -> TraceEstimate:
  """``tr F`` with labels sampled from the model (see module docstring).

  ``num_samples`` per batch; ``error`` as in `flatness.curvature.trace.hessian_trace`
  (population: the batches are independent draws and the error covers them).
  """
  if method == "signs":
    fn = _fisher_signs_fn(logits_fn, batches is not None)
  elif method == "per_example":
    fn = _fisher_per_example_fn(logits_fn, batches is not None)
  else:
    raise ValueError(f"method must be 'signs' or 'per_example', got {method!r}")
  value, se, n, error = _run(fn, params, key, batches, num_samples, chunk, error)
  return TraceEstimate(value, se, n, f"fisher_{method}", error=error)


def ggn_trace(logits_fn: Callable, params, key, *, batches: Sequence[Any] | None = None,
              num_probes: int = 32, probe: str = "rademacher", chunk: int = 8,
              error: str | None = None) -> TraceEstimate:
  """``tr G`` of the Gauss-Newton matrix by Hutchinson (see module docstring); ``num_probes``
  per batch, ``error`` as in `flatness.curvature.trace.hessian_trace`."""
  value, se, n, error = _run(_ggn_fn(logits_fn, probe, batches is not None), params, key,
                             batches, num_probes, chunk, error)
  return TraceEstimate(value, se, n, "ggn", error=error)
