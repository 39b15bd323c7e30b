"""Hessian-vector products, probes and parameter selections on params pytrees.

Everything curvature-related starts here. A *loss* is either ``loss_fn(params)``
(its data closed over) or ``loss_fn(params, batch)`` together with a list of
batches: the Hessian is then that of the mean loss over the batches,
``H = (1/B) sum_b H_b``, and `HessianOperator.matvec` visits the batches one at
a time (fixed memory; each batch may be sharded over a device mesh, and the
jitted products then run data-parallel).

``hvp`` is forward-over-reverse, ``jvp(grad(L))``, by default: one gradient's
memory and about 2.6 gradients' FLOPs (every method: each matrix product of the
gradient gets a two-term tangent, and the primal is computed too). A chunk of
probes on one batch (`hvps`) computes the primal once: about 2.0 gradients' FLOPs
per product. The other orders give the same
product (`HVP_METHODS`), and ``linearized`` shares one linearisation of the
gradient among a chunk of probes (`hvps`); `benchmarks.curvature` times them all
side by side.
"""
import dataclasses
import functools
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from flatness.runtime import fn_cache

PyTree = Any


HVP_METHODS = ("forward_over_reverse", "reverse_over_forward", "reverse_over_reverse",
               "linearized")


def hvp(loss_fn: Callable, params: PyTree, v: PyTree, *args,
        method: str = "forward_over_reverse") -> PyTree:
  """H v with ``H`` the Hessian of ``loss_fn(params, *args)`` at ``params``.

  ``forward_over_reverse``: ``jvp`` of the gradient (one extra forward-mode pass
  through the backward pass); ``reverse_over_forward``: the gradient of the
  directional derivative ``<grad L, v>`` computed in forward mode;
  ``reverse_over_reverse``: the gradient of ``<grad L, v>`` computed in reverse
  mode (stores the backward pass's intermediates: the most memory);
  ``linearized``: ``jax.linearize`` of the gradient, then its linear map at ``v``.
  For one product that is forward-over-reverse split in two; it differs only for
  a chunk of probes (`hvps`).
  """
  if method == "forward_over_reverse":
    return jax.jvp(lambda p: jax.grad(loss_fn)(p, *args), (params,), (v,))[1]
  if method == "reverse_over_forward":
    return jax.grad(lambda p: jax.jvp(lambda q: loss_fn(q, *args), (p,), (v,))[1])(params)
  if method == "reverse_over_reverse":
    return jax.grad(lambda p: vdot(jax.grad(loss_fn)(p, *args), v))(params)
  if method == "linearized":
    return linearized_hvp(loss_fn, params, *args)(v)
  raise ValueError(f"hvp must be one of {HVP_METHODS}, got {method!r}")


def linearized_hvp(loss_fn: Callable, params: PyTree, *args) -> Callable[[PyTree], PyTree]:
  """``v -> H v`` at ``(params, *args)``, linearised once.

  Cost model: ``jax.linearize`` runs the primal and the backward pass of the
  gradient once (one gradient) and keeps the residuals that the gradient's
  tangent map needs; each call then runs the tangent pass only, the tangent
  half of forward-over-reverse (for a matmul-dominated model about twice a
  gradient's flops: each product ``x W`` has the two tangent terms ``dx W`` and
  ``x dW``). So ``k`` probes cost one gradient plus ``k`` tangent passes.
  Memory: the stored residuals, about the activations of one backward pass,
  live for as long as the returned function does. The returned map is linear
  and can be vmapped over probes (`hvps`).
  """
  return jax.linearize(lambda p: jax.grad(loss_fn)(p, *args), params)[1]


def hvps(loss_fn: Callable, params: PyTree, vs: PyTree, *args,
         method: str = "forward_over_reverse") -> PyTree:
  """``H v`` for each probe of a chunk ``vs`` (pytree leaves with a leading probe axis),
  all on the same ``(params, *args)``: the products of one batch in one pass.

  ``linearized``: the gradient is linearised once (`linearized_hvp`: the primal and
  backward pass once, their residuals stored) and only its tangent map is vmapped
  over the chunk. The other methods vmap `hvp` over the probes; their primal parts
  do not depend on the probe, so vmap also computes those once (the compiled
  programs can still differ in how they schedule the batched tangent work, which
  is what `benchmarks.curvature` compares). Memory grows with the chunk: the
  batched tangents, plus the residuals for ``linearized``.
  """
  if method == "linearized":
    return jax.vmap(linearized_hvp(loss_fn, params, *args))(vs)
  if method not in HVP_METHODS:
    raise ValueError(f"hvp must be one of {HVP_METHODS}, got {method!r}")
  return jax.vmap(lambda v: hvp(loss_fn, params, v, *args, method=method))(vs)


def path_name(path) -> str:
  """'layer_0/attn/query/kernel' for a pytree key path."""
  parts = []
  for k in path:
    for attr in ("key", "name", "idx"):
      if hasattr(k, attr):
        parts.append(str(getattr(k, attr)))
        break
  return "/".join(parts)


# The paper's trace (the authors' code) leaves out the pooler and the MLM output bias.
def paper_selection(name: str) -> bool:
  return not (name.startswith("pooler") or name == "head/output_bias")


def selection_mask(params: PyTree, include: Callable[[str], bool] | None) -> PyTree:
  """Bool per leaf: which parameters the curvature is measured over."""
  if include is None:
    return jax.tree.map(lambda _: True, params)
  return jax.tree_util.tree_map_with_path(lambda p, _: bool(include(path_name(p))), params)


def module_of(name: str) -> str:
  """Top-level module of a parameter ('layer_3', 'head', 'embed', ...), for breakdowns."""
  first = name.split("/")[0]
  return "embed" if first in ("token_embed", "pos_embed", "embed_ln") else first


def module_index(params: PyTree, mask: PyTree) -> tuple[list[str], PyTree]:
  """(module names, a pytree of module ids per leaf; -1 for excluded leaves)."""
  names = []
  def ident(path, _, keep):
    if not keep:
      return -1
    m = module_of(path_name(path))
    if m not in names:
      names.append(m)
    return names.index(m)
  ids = jax.tree_util.tree_map_with_path(ident, params, mask)
  return names, ids


def probe(key, params: PyTree, kind: str = "rademacher", mask: PyTree | None = None) -> PyTree:
  """One random direction: iid Rademacher (+-1) or standard Gaussian entries, 0 where masked out."""
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(key, len(leaves))
  if kind == "rademacher":
    draw = lambda k, x: jax.random.rademacher(k, x.shape, x.dtype)
  elif kind == "gaussian":
    draw = lambda k, x: jax.random.normal(k, x.shape, x.dtype)
  else:
    raise ValueError(f"probe kind must be 'rademacher' or 'gaussian', got {kind!r}")
  out = jax.tree.unflatten(treedef, [draw(k, x) for k, x in zip(keys, leaves)])
  if mask is not None:
    out = jax.tree.map(lambda x, m: x if m else jnp.zeros_like(x), out, mask)
  return out


def vdot(a: PyTree, b: PyTree):
  return sum(jnp.vdot(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def stack_batches(batches: Sequence[Any] | None):
  """A list of equally shaped batches -> one pytree with a leading batch-index axis."""
  if batches is None:
    return None
  batches = list(batches)
  if not batches:
    raise ValueError("batches is empty")
  shapes = {str(jax.tree.map(jnp.shape, b)) for b in batches}
  if len(shapes) != 1:
    raise ValueError("all batches must have the same shapes (pad the last one)")
  return jax.tree.map(lambda *x: jnp.stack(x), *batches)


def mean_over_batches(fn, stacked):
  """``mean_b fn(batch_b)`` for a stacked pytree of batches, one batch at a time."""
  if stacked is None:
    return fn()
  n = jax.tree.leaves(stacked)[0].shape[0]
  first = fn(jax.tree.map(lambda x: x[0], stacked))

  def body(i, acc):
    out = fn(jax.tree.map(lambda x: x[i], stacked))
    return jax.tree.map(jnp.add, acc, out)

  total = jax.lax.fori_loop(1, n, body, first)
  return jax.tree.map(lambda x: x / n, total)


@fn_cache.per_function(maxsize=64)
def _matvec_fn(loss_fn, mask_leaves):
  """Cached jitted ``(params, v, stacked) -> H v`` of the mean loss (masked block)."""
  def matvec(params, v, stacked):
    prod = (lambda b=None: hvp(loss_fn, params, v) if b is None else hvp(loss_fn, params, v, b))
    out = mean_over_batches(prod, stacked)
    leaves, treedef = jax.tree.flatten(out)
    return jax.tree.unflatten(treedef, [x if m else jnp.zeros_like(x)
                                        for x, m in zip(leaves, mask_leaves)])
  return jax.jit(matvec)


@dataclasses.dataclass
class HessianOperator:
  """``v -> H v`` for the mean loss over ``batches`` (or a closed-over loss), restricted to a
  selection of parameters (``H`` of the selected block; unselected entries stay 0).

  The batches are stacked and visited inside one compiled loop, so a matvec is
  one call, compiled once per loss function and shapes.
  """
  loss_fn: Callable
  params: PyTree
  batches: Sequence[Any] | None = None
  mask: PyTree | None = None

  def __post_init__(self):
    if self.mask is None:
      self.mask = jax.tree.map(lambda _: True, self.params)
    self.mask_leaves = tuple(bool(m) for m in jax.tree.leaves(self.mask))
    self.stacked = stack_batches(self.batches)
    self._matvec = _matvec_fn(self.loss_fn, self.mask_leaves)
    self.num_matvecs = 0

  @property
  def dtype(self):
    return jnp.result_type(*jax.tree.leaves(self.params))

  @property
  def num_batches(self) -> int:
    return 1 if self.batches is None else len(self.batches)

  def matvec(self, v: PyTree) -> PyTree:
    self.num_matvecs += self.num_batches
    return self._matvec(self.params, v, self.stacked)

  @functools.cached_property
  def flat(self):
    """(dimension, ravel, unravel, flat matvec) over the selected parameters only."""
    n, ravel, unravel = flattener(self.params, self.mask_leaves)
    return n, ravel, unravel, lambda vec: ravel(self.matvec(unravel(vec)))


def flattener(params: PyTree, mask_leaves: Sequence[bool]):
  """(n, ravel, unravel): the selected leaves of ``params`` as one vector and back."""
  leaves, treedef = jax.tree.flatten(params)
  n = int(sum(x.size for x, k in zip(leaves, mask_leaves) if k))

  def ravel(tree):
    return jnp.concatenate([x.ravel() for x, k in zip(jax.tree.leaves(tree), mask_leaves) if k])

  def unravel(vec):
    out, pos = [], 0
    for x, k in zip(leaves, mask_leaves):
      if k:
        out.append(vec[pos:pos + x.size].reshape(x.shape).astype(x.dtype))
        pos += x.size
      else:
        out.append(jnp.zeros_like(x))
    return jax.tree.unflatten(treedef, out)

  return n, ravel, unravel


def samples_per_batch(fn, params, key, batches, num: int, chunk: int) -> list[np.ndarray]:
  """``num`` samples of a vmapped estimator ``fn(params, keys [c], *batch) -> [c, ...]`` for
  each batch (or once, for a closed-over loss), in equal chunks of ``c`` keys so that
  ``fn`` compiles once; batch ``g`` draws its keys from ``fold_in(key, g)``."""
  groups = [None] if batches is None else list(batches)
  chunk = min(chunk, num)
  padded = -(-num // chunk) * chunk
  out = []
  for g, batch in enumerate(groups):
    keys = probe_keys(key, g, padded, chunk)
    args = () if batch is None else (batch,)
    rows = [fn(params, keys[s:s + chunk], *args) for s in range(0, padded, chunk)]
    out.append(np.concatenate(jax.device_get(rows)).astype(np.float64)[:num])
  return out


def probe_keys(key, group: int, num: int, chunk: int):
  """The ``num`` sample keys of group (batch) ``group`` as `samples_per_batch` draws them."""
  chunk = min(chunk, num)
  return jax.random.split(jax.random.fold_in(key, group), -(-num // chunk) * chunk)[:num]


def samples_across_batches(fn, params, key, batches, num: int, chunk: int) -> list[np.ndarray]:
  """`samples_per_batch` with each compiled pass filled by (batch, key) pairs across batches.

  ``fn(params, keys [c], batches [c, ...]) -> [c, ...]`` takes a stacked batch per key,
  so one pass evaluates ``c`` products of up to ``c`` different batches (for one sample
  per batch, ``c`` batches at once). The pairs are batch 0's keys, then batch 1's, ...,
  in chunks of ``c = chunk`` (the last padded by repeating its final pair, whose extra
  results are dropped); the keys are `samples_per_batch`'s (`probe_keys`), so the samples
  are the same up to float rounding. A pass holds ``c`` batches (stacked inside the jitted
  ``fn``) and their ``c`` products' intermediates.
  """
  groups = list(batches)
  total = len(groups) * num
  c = min(chunk, total)
  order = np.arange(total + (-total % c)).clip(max=total - 1)   # pair i: batch i // num
  keys = jnp.concatenate([probe_keys(key, g, num, chunk) for g in range(len(groups))])[order]
  rows = [fn(params, keys[s:s + c], tuple(groups[i // num] for i in order[s:s + c]))
          for s in range(0, len(order), c)]
  flat = np.concatenate(jax.device_get(rows)).astype(np.float64)
  return [flat[g * num:(g + 1) * num] for g in range(len(groups))]


def stratified(samples: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
  """Mean and standard error of ``mean_g E[X_g]`` from independent samples of each group.

  Each group (a batch) has its own i.i.d. samples ``[n_g, ...]``; the groups are
  all used, so only the within-group noise counts:
  ``se = sqrt(sum_g var_g / n_g) / G``. This is the error *conditional on the
  batches*: right for a fixed dataset, too small for a population quantity.
  """
  means = np.array([s.mean(axis=0) for s in samples])
  var = np.array([s.var(axis=0, ddof=1) / len(s) if len(s) > 1 else np.full(s.shape[1:], np.nan)
                  for s in samples])
  return means.mean(axis=0), np.sqrt(var.sum(axis=0)) / len(samples)


def two_level(samples: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
  """Mean and standard error of a population mean from ``G`` i.i.d. batches, each probed.

  Batch ``g`` is an independent draw of evaluation sentences and masks, and
  ``samples[g]`` holds ``p`` probe samples on it. With ``Y_g`` the batch's probe
  mean, ``E[Y_g]`` is the population quantity (e.g. the trace of the expected
  Hessian) and ``Var[Y_g] = s_batch^2 + s_probe^2 / p``: both levels of noise.
  The ``Y_g`` are i.i.d., so ``se = std_g(Y_g) / sqrt(G)`` (ddof 1) estimates
  the standard error of ``mean_g Y_g`` without bias in the variance, whatever
  the split between the two levels. Needs ``G >= 2``.
  """
  if len(samples) < 2:
    raise ValueError("a population standard error needs at least 2 independent batches")
  means = np.array([s.mean(axis=0) for s in samples])
  return means.mean(axis=0), means.std(axis=0, ddof=1) / np.sqrt(len(samples))


ERRORS = ("population", "conditional")


def resolve_error(error: str | None, batches) -> str:
  """Which standard error a sampled estimator reports (see `pooled`).

  ``None`` picks ``population`` when there are at least two batches (they are
  taken to be independent draws) and ``conditional`` otherwise.
  """
  n = 0 if batches is None else len(batches)
  if error is None:
    return "population" if n >= 2 else "conditional"
  if error not in ERRORS:
    raise ValueError(f"error must be one of {ERRORS}, got {error!r}")
  if error == "population" and n < 2:
    raise ValueError("error='population' needs at least 2 independent batches (got "
                     f"{n}); pass more batches, or error='conditional' for the error given "
                     "these batches")
  return error


def pooled(samples: Sequence[np.ndarray], error: str) -> tuple[np.ndarray, np.ndarray]:
  """`two_level` (``population``: batches are i.i.d. draws, the error covers them) or
  `stratified` (``conditional``: the error given these batches, probes only)."""
  return two_level(samples) if error == "population" else stratified(samples)
