"""Linear probes: frozen features -> L2-regularised multinomial logistic regression, solved.

The paper's downstream measure (Sec. 4 and the authors' code): freeze the pre-trained
encoder, take the final hidden states of the word positions, concatenated
(``[CLS]``/``[SEP]`` and padding excluded; a sentence shorter than the model's
width contributes zeros), and fit a linear softmax classifier on them.
Mean-pooled word states and the tanh-pooled ``[CLS]`` are offered as cheaper
features (`encoder_features`).

The probe is the minimiser of the convex objective (nats per sentence)

    F(W, b) = 1/n sum_i -log softmax(z_i W + b)[y_i] + (l2 / 2) ||W||_F^2,

with ``z_i`` the features z-scored by the mean and standard deviation of the
fitting rows (a constant column maps to 0) and the bias unpenalised (softmax
ignores a common shift of the biases, so ``b`` is reported with mean zero over
the classes; ``W`` is unique). It is solved full-batch to a gradient-norm
tolerance (``||grad F||_2 < tol`` over ``W`` and ``b``), not trained for a
fixed budget, so the accuracy measures the features and not the optimiser. A class absent from the fitting rows has
logit ``-inf`` (the infimum of ``F`` is approached as its bias goes to
``-inf``; it could never be predicted). ``l2`` is chosen from a grid by the
accuracy on a held-out fraction of the fitting rows (ties: the larger ``l2``),
then the probe is refit on all of them; `probe_accuracy` chooses it on the
first seed's subset and keeps it for the other seeds.

Solver: L-BFGS (``optax.lbfgs``, zoom line search with the strong Wolfe
conditions) inside one jitted ``lax.while_loop``, in the principal-component
basis of the fitting rows (``z = u V^T``, exact: the optimal ``W`` lies in the
row space of ``z``), each direction rescaled by ``(c lambda_j + l2)^-1/2``
(``lambda_j`` its variance, ``c = 1/4`` the curvature of the softmax loss at
``p = 1/2``): the inverse square root of the Hessian model ``c Cov(z) + l2``,
which takes the iteration count down several-fold on correlated features.
The reported gradient norm is recomputed on the z-scored features themselves
(if float32 rounding of the basis leaves it above ``tol``, L-BFGS finishes
there). Cost per iteration: ``O(n min(n, D) K)``; set-up: one
``min(n, D)``-sized eigenproblem per set of fitting rows. The grid is solved
from the largest ``l2`` down, each solve started at the previous optimum.

Seeds redraw the labelled data: a task has a fixed pool and a fixed test set;
seed ``s`` fits on ``num_train`` rows drawn from the pool without replacement
by ``np.random.default_rng([seed, s])`` (the same draws at every checkpoint, so
two checkpoints can be compared seed by seed, `paired_difference`). The mean,
its standard error and a Student-t interval over seeds describe the variation
from redrawing the training subset from the pool; they are conditional on the
pool and the test set (the test set's own sampling error, about
``sqrt(acc (1 - acc) / num_test)``, is not in them). The variance of the mean
over ``S`` seeds is estimated by ``sd^2 / S`` (``sd`` with ``S - 1`` degrees of
freedom); subsets of one pool overlap, so seeds are independent given the pool
only.
"""
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import optax.tree_utils as otu
from scipy import stats

try:   # optional: only makes the eigendecomposition faster on a busy CPU (`_basis`)
  from threadpoolctl import threadpool_limits
except ImportError:
  threadpool_limits = None

from flatness.model import tokens as tok
from flatness.model.objectives import Objective
from flatness.runtime import sharding

FEATURES = ("concat", "mean", "cls")
# Curvature of -log softmax per unit feature variance at p = 1/2 (p (1 - p)): the
# preconditioner's model of the Hessian is CURVATURE * Cov(z) + l2 per class.
_CURVATURE = 0.25


def encoder_features(objective: Objective, params, tokens, lengths, kind: str = "concat"):
  """[n, D] features of the frozen encoder: a pure function (no jit, no mesh).

  ``tokens`` int [n, L] word ids, ``lengths`` int [n] (at most ``seq_len - 2``
  words are read; longer sentences are cut). ``kind``: ``concat`` (the final
  hidden states of the ``seq_len - 2`` word positions, zero past each length,
  concatenated: D = (seq_len - 2) * hidden, the paper's), ``mean`` (their mean
  over the words, D = hidden) or ``cls`` (the tanh-pooled ``[CLS]``, D =
  hidden). Differentiable in ``params``: the adversarial objective can push on
  exactly what the probe reads.
  """
  if kind not in FEATURES:
    raise ValueError(f"probe features: unknown kind {kind!r}; choose from {FEATURES}")
  seq_len = objective.model.cfg.seq_len
  width = tok.max_words(seq_len)
  tokens = jnp.asarray(tokens, jnp.int32)[:, :width]
  lengths = jnp.minimum(jnp.asarray(lengths, jnp.int32), width)
  ids = tok.encode(tokens, lengths, seq_len)
  apply = functools.partial(objective.model.apply, {"params": params})
  if kind == "cls":
    return apply(ids, method="pool")
  h = apply(ids, method="encode")
  words = tok.word_mask(lengths, seq_len)[..., None].astype(h.dtype)
  if kind == "mean":
    return jnp.sum(h * words, 1) / jnp.maximum(jnp.sum(words, 1), 1.0)
  h = (h * words)[:, 1:seq_len - 1]
  return h.reshape(h.shape[0], -1)


@functools.lru_cache(maxsize=16)
def _feature_fn(objective: Objective, kind: str, mesh):

  def fn(params, batch):
    return encoder_features(objective, params, batch["tokens"], batch["lengths"], kind)

  return jax.jit(fn, out_shardings=sharding.replicated(mesh))


def features(objective: Objective, params, tokens, lengths, *, kind: str = "concat", mesh,
             batch_size: int = 256) -> np.ndarray:
  """float32 [n, D] `encoder_features` for ``n`` sentences, data-parallel over ``mesh``.

  Every process gets all rows.
  """
  if kind not in FEATURES:
    raise ValueError(f"probe features: unknown kind {kind!r}; choose from {FEATURES}")
  width = tok.max_words(objective.model.cfg.seq_len)
  batch_size = max(mesh.size, batch_size - batch_size % mesh.size)
  fn, out = _feature_fn(objective, kind, mesh), []
  n = len(lengths)
  for start in range(0, n, batch_size):
    idx = np.minimum(np.arange(start, start + batch_size), n - 1)
    batch = sharding.shard_batch(tok.word_batch(tokens, lengths, idx, width), mesh)
    out.append(np.asarray(fn(params, batch), np.float32))
  return np.concatenate(out)[:n]


@dataclasses.dataclass(frozen=True)
class ProbeConfig:
  """How the probe is fit (module docstring).

  l2_grid: candidate ``l2`` (penalty on ``W`` in z-scored units, per sentence).
  holdout: fraction of the fitting rows held out to choose ``l2``.
  max_iters: L-BFGS iterations per solve, at most (the weakest penalty of the default
    grid took up to ~1,000 on 512 word-state features of 16-class tasks).
  tol: converged when ``||grad F||_2 < tol`` (nats per sentence per unit weight).
  standardize: z-score the features by the fitting rows' mean and std.
  """
  l2_grid: tuple = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)
  holdout: float = 0.25
  max_iters: int = 2000
  tol: float = 1e-5
  standardize: bool = True

  def __post_init__(self):
    # Configs may hand over a list (command-line overrides); keep the dataclass hashable.
    object.__setattr__(self, "l2_grid", tuple(float(v) for v in np.ravel(self.l2_grid)))
    if not self.l2_grid or min(self.l2_grid) <= 0:
      raise ValueError(f"probe.l2_grid={self.l2_grid}: needs at least one value, all > 0 (the "
                       "penalty makes the optimum unique)")
    if not 0 < self.holdout < 1:
      raise ValueError(f"probe.holdout={self.holdout}: must be in (0, 1)")
    if self.max_iters < 1 or self.tol <= 0:
      raise ValueError(f"probe.max_iters={self.max_iters}, probe.tol={self.tol}: must be "
                       "positive")


@dataclasses.dataclass(frozen=True)
class Probe:
  """A fitted probe: ``logits(x) = ((x - mean) / scale) w + b`` (absent classes: -inf).

  ``b`` has mean zero over the present classes. From `fit_probe`, ``grad_norm``
  is the largest over the grid's solves and the refit, ``iters`` their sum.
  """
  mean: np.ndarray       # [D] float32
  scale: np.ndarray      # [D] float32
  w: np.ndarray          # [D, K] float32, in z-scored units
  b: np.ndarray          # [K]
  present: np.ndarray    # [K] bool: classes seen in the fitting rows
  l2: float
  grad_norm: float       # ||grad F||_2 at (w, b), computed in the z-scored parameters
  iters: int             # L-BFGS iterations
  holdout_acc: tuple = ()  # held-out accuracy per l2 of the grid (empty when not selected)

  def logits(self, x) -> np.ndarray:
    z = (np.asarray(x, np.float32) - self.mean) / self.scale
    return np.where(self.present, z @ self.w + self.b, -np.inf)

  def predict(self, x) -> np.ndarray:
    return np.argmax(self.logits(x), -1)


def _standardizer(x: np.ndarray, standardize: bool):
  if not standardize:
    return np.zeros(x.shape[1], np.float32), np.ones(x.shape[1], np.float32)
  # Sums in float64 without a float64 copy of x (n x D can be 10,000 x 8,000).
  mean = x.mean(0, dtype=np.float64)
  centred = x - mean.astype(np.float32)
  shift = centred.mean(0, dtype=np.float64)
  std = np.sqrt(np.maximum(np.mean(np.square(centred), 0, dtype=np.float64) - shift ** 2, 0.0))
  # A constant column carries nothing; scale 1 keeps it at exactly 0 instead of 0/0.
  return mean.astype(np.float32), np.where(std > 0, std, 1.0).astype(np.float32)


@jax.jit
def _principal_basis(z):
  """(u, lam, v): ``z v = u``, ``u`` columns orthogonal with variance ``lam``, ``v^T v = I``.

  From the D x D covariance when D <= n, else from the n x n Gram matrix (then
  ``v`` spans the row space of ``z``; directions of variance below 1e-6 of the
  largest are dropped, zero columns of ``u`` and ``v``: float32 cannot place
  them, and the final check of the gradient in W catches what that costs).
  """
  n, d = z.shape
  if d <= n:
    lam, v = jnp.linalg.eigh(z.T @ z / n)
    return z @ v, jnp.maximum(lam, 0.0), v
  lam, q = jnp.linalg.eigh(z @ z.T / n)
  keep = lam > 1e-6 * lam[-1]
  root = jnp.sqrt(jnp.where(keep, n * lam, 1.0))
  v = z.T @ (q * jnp.where(keep, 1.0 / root, 0.0))
  return q * jnp.where(keep, root, 0.0), jnp.where(keep, lam, 0.0), v


def _basis(z):
  # LAPACK's eigh runs on OpenBLAS threads that spin-wait: on a loaded CPU a 512 x 512
  # problem took seconds instead of 20 ms. One thread is as fast at these sizes.
  if threadpool_limits is None or jax.default_backend() != "cpu":
    return jax.block_until_ready(_principal_basis(z))
  with threadpool_limits(limits=1, user_api="blas"):
    return jax.block_until_ready(_principal_basis(z))


def _mean_nll(logits, y, present):
  logits = jnp.where(present, logits, -jnp.inf)
  return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], 1))


@jax.jit
def _lbfgs(u, lam, y, present, l2, a0, b0, tol, max_iters):
  """L-BFGS on F in the principal basis; returns (a, b, ||grad F||, iterations).

  The variables are ``a' = a / s`` with ``s = (c lam + l2)^-1/2`` (preconditioning);
  the convergence test is on the gradient in ``a`` (``grad_a' / s``), which is
  the gradient in ``W`` rotated by the orthogonal ``v``: the same norm.
  """
  s = jax.lax.rsqrt(_CURVATURE * lam + l2)[:, None]
  us = u * s.T

  def objective(p):
    penalty = 0.5 * l2 * jnp.sum(jnp.square(p["a"] * s))
    return _mean_nll(us @ p["a"] + p["b"], y, present) + penalty

  def grad_norm(g):
    return jnp.sqrt(jnp.sum(jnp.square(g["a"] / s)) + jnp.sum(jnp.square(g["b"])))

  opt = optax.lbfgs(linesearch=optax.scale_by_zoom_linesearch(
      max_linesearch_steps=30, initial_guess_strategy="one"))
  value_and_grad = optax.value_and_grad_from_state(objective)

  def step(carry):
    p, state = carry
    value, g = value_and_grad(p, state=state)
    updates, state = opt.update(g, state, p, value=value, grad=g, value_fn=objective)
    return optax.apply_updates(p, updates), state

  def running(carry):
    _, state = carry
    count = otu.tree_get(state, "count")
    # count == 0: the state's gradient is a placeholder, not the gradient at a0.
    return (count == 0) | ((count < max_iters) & (grad_norm(otu.tree_get(state, "grad")) >= tol))

  p0 = dict(a=a0 / s, b=b0)
  p, state = jax.lax.while_loop(running, step, (p0, opt.init(p0)))
  return p["a"] * s, p["b"], grad_norm(jax.grad(objective)(p)), otu.tree_get(state, "count")


@jax.jit
def _grad_norm(z, y, present, w, b, l2):
  """||grad F(w, b)||_2 on the z-scored rows, independent of the basis the solver used."""
  g = jax.grad(lambda p: _mean_nll(z @ p[0] + p[1], y, present)
               + 0.5 * l2 * jnp.sum(jnp.square(p[0])))((w, b))
  return jnp.sqrt(jnp.sum(jnp.square(g[0])) + jnp.sum(jnp.square(g[1])))


class _Rows:
  """One set of fitting rows: standardised once, rotated once, then solved for any ``l2``."""

  def __init__(self, x, y, num_classes: int, cfg: ProbeConfig):
    x = np.asarray(x, np.float32)
    if not np.all(np.isfinite(x)):
      raise ValueError("probe: the features contain NaN or inf")
    y = np.asarray(y, np.int32)
    if y.min() < 0 or y.max() >= num_classes:
      raise ValueError(f"probe: labels outside [0, {num_classes})")
    self.cfg, self.y = cfg, jnp.asarray(y)
    self.mean, self.scale = _standardizer(x, cfg.standardize)
    self.z = jnp.asarray((x - self.mean) / self.scale)
    self.u, self.lam, self.v = _basis(self.z)
    self.present = np.bincount(y, minlength=num_classes) > 0
    self.num_classes = num_classes

  def solve(self, l2: float, init: Probe | None = None) -> Probe:
    """The minimiser of F for this ``l2``, started from ``init`` (any probe) or zero."""
    k, cfg = self.num_classes, self.cfg
    if init is None:
      w0, b0 = jnp.zeros((self.z.shape[1], k), jnp.float32), jnp.zeros((k,), jnp.float32)
    else:
      w0, b0 = _restandardize(init, self.mean, self.scale)
    # Classes absent here keep zero weights: their logits are -inf, their gradient l2 w.
    w0 = jnp.where(self.present, w0, 0.0)
    present = jnp.asarray(self.present)
    a, b, _, iters = _lbfgs(self.u, self.lam, self.y, present, l2, self.v.T @ w0, b0,
                            cfg.tol, cfg.max_iters)
    w = self.v @ a
    gnorm, total = float(_grad_norm(self.z, self.y, present, w, b, l2)), int(iters)
    if gnorm >= cfg.tol and total < cfg.max_iters:
      # The rotated problem is the original one only up to float32 rounding in v (and
      # the directions the Gram basis dropped): finish on the z-scored features themselves,
      # where the convergence test is on the very gradient reported.
      ones = jnp.ones(self.z.shape[1], jnp.float32)
      w, b, _, more = _lbfgs(self.z, ones, self.y, present, l2, w, b, cfg.tol,
                             cfg.max_iters - total)
      gnorm, total = float(_grad_norm(self.z, self.y, present, w, b, l2)), total + int(more)
    if not np.isfinite(gnorm):
      raise FloatingPointError(f"probe: the solver diverged (l2={l2}, gradient norm {gnorm})")
    # softmax ignores a common shift of the logits and b is unpenalised, so b is only
    # determined up to a constant: report the representative with mean zero over the
    # present classes (0 for absent ones, whose logits are -inf anyway).
    b = np.asarray(b, np.float32)
    b = np.where(self.present, b - b[self.present].mean(), 0.0).astype(np.float32)
    return Probe(self.mean, self.scale, np.asarray(w), b, self.present, float(l2), gnorm,
                 total)


def _restandardize(p: Probe, mean, scale):
  """(w, b) computing the same logits as ``p`` on features standardised by (mean, scale)."""
  w = p.w * (scale / p.scale)[:, None]
  b = p.b + ((mean - p.mean) / p.scale) @ p.w
  return jnp.asarray(w, jnp.float32), jnp.asarray(b, jnp.float32)


def fit_logistic(x, y, num_classes: int, *, l2: float, cfg: ProbeConfig = ProbeConfig(),
                 init: Probe | None = None) -> Probe:
  """The probe minimising F with the given ``l2`` on all rows (no selection)."""
  return _Rows(x, y, num_classes, cfg).solve(l2, init)


def fit_probe(x, y, num_classes: int, cfg: ProbeConfig = ProbeConfig()) -> Probe:
  """``l2`` chosen on the last ``holdout`` fraction of the rows, then refit on all of them.

  Rows are taken in the order given: pass them shuffled (`subset_rows` does).
  The grid is solved from the largest ``l2`` down, each solve started at the
  previous optimum (the same minimiser, fewer iterations); the refit starts at
  the chosen held-out fit. The returned probe's ``grad_norm`` is the largest
  over all the solves (each of them decides something) and ``iters`` their sum.
  """
  grid = sorted(cfg.l2_grid, reverse=True)
  if len(grid) == 1:
    return _Rows(x, y, num_classes, cfg).solve(grid[0])
  n = len(y)
  n_hold = int(round(cfg.holdout * n))
  if not 0 < n_hold < n:
    raise ValueError(f"probe.holdout={cfg.holdout} of {n} rows leaves no fitting or no "
                     "held-out row")
  x, y = np.asarray(x, np.float32), np.asarray(y, np.int32)
  rows = _Rows(x[:n - n_hold], y[:n - n_hold], num_classes, cfg)
  accs, fits, prev = [], [], None
  for l2 in grid:
    prev = rows.solve(l2, prev)
    fits.append(prev)
    accs.append(float(np.mean(prev.predict(x[n - n_hold:]) == y[n - n_hold:])))
  best = int(np.argmax(accs))       # first maximum of the descending grid: the larger l2
  final = _Rows(x, y, num_classes, cfg).solve(grid[best], fits[best])
  by_l2 = dict(zip(grid, accs))
  return dataclasses.replace(
      final, grad_norm=max(f.grad_norm for f in fits + [final]),
      iters=sum(f.iters for f in fits + [final]),
      holdout_acc=tuple(by_l2[v] for v in cfg.l2_grid))


def subset_rows(num_pool: int, num_train: int, seed: int, s: int) -> np.ndarray:
  """The pool rows of seed ``s``: ``num_train`` without replacement, in random order.

  A function of (num_pool, num_train, seed, s) only, so every checkpoint sees
  the same draws.
  """
  if not 0 < num_train <= num_pool:
    raise ValueError(f"probe: num_train={num_train} must be in [1, num_pool={num_pool}]")
  return np.random.default_rng([seed, s]).choice(num_pool, num_train, replace=False)


def t_interval(values, level: float = 0.95) -> dict:
  """Mean, standard error and Student-t interval of the mean of iid ``values``.

  stderr = sd / sqrt(S) (sd with S - 1 degrees of freedom); the interval is
  mean +- t_{(1 + level) / 2, S - 1} stderr. With one value stderr and the
  bounds are NaN (no spread to estimate).
  """
  v = np.asarray(values, np.float64)
  mean = float(np.mean(v))
  if len(v) < 2:
    return dict(mean=mean, stderr=float("nan"), lo=float("nan"), hi=float("nan"))
  stderr = float(np.std(v, ddof=1) / np.sqrt(len(v)))
  half = float(stats.t.ppf(0.5 + level / 2, len(v) - 1)) * stderr
  return dict(mean=mean, stderr=stderr, lo=mean - half, hi=mean + half)


def paired_difference(acc_a, acc_b, level: float = 0.95) -> dict:
  """Student-t interval of mean(acc_a - acc_b) over seeds drawn identically for a and b.

  Pairing removes the variation the two checkpoints share (which subset a
  seed drew), so the interval is narrower than comparing two marginal ones.
  Returns ``dict(mean, lo, hi, stderr)`` (accuracy fractions).
  """
  a, b = np.asarray(acc_a, np.float64), np.asarray(acc_b, np.float64)
  if a.shape != b.shape or a.ndim != 1:
    raise ValueError(f"paired_difference: per-seed accuracies of equal length, got {a.shape} "
                     f"and {b.shape}")
  return t_interval(a - b, level)


def probe_accuracy(train_x, train_y, test_x, test_y, num_classes: int, *, seeds: int = 5,
                   num_train: int | None = None, cfg: ProbeConfig = ProbeConfig(),
                   seed: int = 0, level: float = 0.95) -> dict:
  """Test accuracy of probes fit on ``seeds`` random subsets of the pool ``train_x``.

  Seed ``s`` fits on `subset_rows` (``num_train`` of the pool; all of it,
  reshuffled, when None) and scores the fixed test set. ``l2`` is chosen once,
  by `fit_probe` on seed 0's subset (held-out quarter, then refit); the other
  seeds fit that ``l2`` on their own subsets, each solve started from the
  previous seed's optimum. Choosing once keeps the test set out of the choice
  (it sees only seed 0's held-out rows) and costs one solve per further seed
  instead of a grid. Returns ``acc`` (mean over seeds), ``acc_stderr``,
  ``acc_lo``/``acc_hi`` (Student-t ``level`` interval over seeds: the variation
  from redrawing the training subset, not the test set's sampling error),
  ``per_seed``, ``grad_norm`` (max over seeds and solves), ``l2`` (per seed: the
  same value) and ``iters`` (per seed).
  """
  n = len(train_y)
  num_train = n if num_train is None else int(num_train)
  train_x, train_y = np.asarray(train_x, np.float32), np.asarray(train_y)
  test_y = np.asarray(test_y)
  accs, l2s, iters, gnorm, p = [], [], [], 0.0, None
  for s in range(seeds):
    rows = subset_rows(n, num_train, seed, s)
    if p is None:
      p = fit_probe(train_x[rows], train_y[rows], num_classes, cfg)
    else:
      p = fit_logistic(train_x[rows], train_y[rows], num_classes, l2=p.l2, cfg=cfg, init=p)
    accs.append(float(np.mean(p.predict(test_x) == test_y)))
    l2s.append(p.l2)
    iters.append(p.iters)
    gnorm = max(gnorm, p.grad_norm)
  ci = t_interval(accs, level)
  return dict(acc=ci["mean"], acc_stderr=ci["stderr"], acc_lo=ci["lo"], acc_hi=ci["hi"],
              per_seed=accs, grad_norm=gnorm, l2=l2s, iters=iters)
