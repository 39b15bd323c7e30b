"""Extreme eigenvalues and the spectral density of the Hessian, by Lanczos (via matfree).

* `top_eigenvalues`: Lanczos with full reorthogonalisation (``num_iters``
  products) from a random start; the Ritz values of the tridiagonal matrix
  approximate the extreme eigenvalues, the largest and smallest converging
  first. Memory: ``num_iters`` vectors of the selected parameters' size.
* `spectral_density`: stochastic Lanczos quadrature (Ubaru, Chen & Saad 2017;
  Ghorbani et al. 2019). For each random unit probe ``v``, Lanczos gives nodes
  ``theta_j`` and weights ``tau_j`` (squared first components of the Ritz
  vectors) with ``v^T f(H) v = sum_j tau_j f(theta_j)`` exactly for
  polynomials of degree < 2 * num_iters, so the average over probes estimates
  ``tr(f(H)) / n``; the density is the Gaussian-smoothed average of the nodes
  ``sum_j tau_j N(lambda; theta_j, sigma^2)``. Its moments ``tr(H^p) / n``
  come back with standard errors over probes.
"""
import dataclasses
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from matfree import decomp

from flatness.curvature import hessian as hs
from flatness.runtime import fn_cache


@fn_cache.per_function(maxsize=32)
def _tridiagonal_fn(loss_fn, mask_leaves, num_iters):
  """Cached jitted Lanczos: ``(params, v0, stacked batches) -> tridiagonal matrix``."""
  matvec = hs._matvec_fn(loss_fn, mask_leaves)   # pylint: disable=protected-access

  def run(params, v0, stacked):
    _, ravel, unravel = hs.flattener(params, mask_leaves)
    mv = lambda vec: ravel(matvec(params, unravel(vec), stacked))
    return decomp.tridiag_sym(num_iters, reortho="full")(mv, v0).J_small

  return jax.jit(run)


def _lanczos(op: hs.HessianOperator, v0, num_iters):
  """(Ritz values, first components of the Ritz vectors) after num_iters products.

  If the Krylov space is exhausted early (an off-diagonal of the tridiagonal
  matrix vanishes: the start vector lies in an invariant subspace, e.g. when
  the Hessian has zero eigenvalues), the rest of the iteration is meaningless
  and the tridiagonal matrix is cut there.
  """
  fn = _tridiagonal_fn(op.loss_fn, op.mask_leaves, num_iters)
  t = np.asarray(fn(op.params, v0, op.stacked), np.float64)
  op.num_matvecs += num_iters * op.num_batches
  off = np.abs(np.diag(t, 1))
  tiny = np.flatnonzero(off <= 1e-10 * max(np.abs(t).max(), 1e-300))
  if len(tiny):
    t = t[:tiny[0] + 1, :tiny[0] + 1]
  evals, evecs = np.linalg.eigh(t)
  return evals, evecs[0] ** 2


def top_eigenvalues(loss_fn: Callable, params, key, *, k: int = 5, num_iters: int = 64,
                    batches: Sequence[Any] | None = None,
                    include: Callable[[str], bool] | None = None) -> dict:
  """The ``k`` largest and the smallest Hessian eigenvalues (loss units / parameter unit^2).

  Returns ``dict(largest=[k] descending, smallest=float, num_matvecs=int)``.
  """
  op = hs.HessianOperator(loss_fn, params, batches, hs.selection_mask(params, include))
  n = op.flat[0]
  num_iters = min(num_iters, n)
  if k > num_iters:
    raise ValueError(f"k={k} eigenvalues need num_iters >= k, got {num_iters}")
  v0 = jax.random.normal(key, (n,), op.dtype)
  evals, _ = _lanczos(op, v0 / jnp.linalg.norm(v0), num_iters)
  return dict(largest=evals[::-1][:k].tolist(), smallest=float(evals[0]),
              num_matvecs=op.num_matvecs)


@dataclasses.dataclass
class SpectralDensity:
  grid: np.ndarray              # eigenvalue axis
  density: np.ndarray           # smoothed density on the grid (integrates to about 1)
  nodes: np.ndarray             # [probes, num_iters] Ritz values
  weights: np.ndarray           # [probes, num_iters] quadrature weights (rows sum to 1)
  num_matvecs: int

  def moment(self, p: int) -> tuple[float, float]:
    """Estimate and standard error of ``tr(H^p) / n``."""
    per_probe = np.sum(self.weights * self.nodes ** p, axis=1)
    se = per_probe.std(ddof=1) / np.sqrt(len(per_probe)) if len(per_probe) > 1 else np.nan
    return float(per_probe.mean()), float(se)


def spectral_density(loss_fn: Callable, params, key, *, num_probes: int = 8,
                     num_iters: int = 64, batches: Sequence[Any] | None = None,
                     include: Callable[[str], bool] | None = None, grid_size: int = 512,
                     sigma: float | None = None) -> SpectralDensity:
  op = hs.HessianOperator(loss_fn, params, batches, hs.selection_mask(params, include))
  n = op.flat[0]
  num_iters = min(num_iters, n)
  nodes, weights = [], []
  for i in range(num_probes):
    v0 = jax.random.normal(jax.random.fold_in(key, i), (n,), op.dtype)
    t, w = _lanczos(op, v0 / jnp.linalg.norm(v0), num_iters)
    nodes.append(t), weights.append(w)
  nodes, weights = np.array(nodes), np.array(weights)
  lo, hi = nodes.min(), nodes.max()
  pad = 0.05 * max(hi - lo, 1e-12)
  grid = np.linspace(lo - pad, hi + pad, grid_size)
  sigma = sigma or (hi - lo + 1e-12) / 200
  kernel = np.exp(-0.5 * ((grid[None, None, :] - nodes[..., None]) / sigma) ** 2)
  density = np.mean(np.sum(weights[..., None] * kernel, axis=1), axis=0) / (
      sigma * np.sqrt(2 * np.pi))
  return SpectralDensity(grid, density, nodes, weights, op.num_matvecs)
