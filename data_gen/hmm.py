"""Categorical hidden Markov models: the paper's second synthetic language.

``z_1 ~ pi``, ``z_{t+1} ~ T[z_t]``, ``x_t ~ E[z_t]``; the paper uses 100 hidden
states, 200 words and sentences of 16 words, and downstream tasks that
classify the hidden state at a position ("task-6" and "task-10"; positions
here count from 0). Random HMMs are sparse: each state moves to
``transitions_per_state`` random successors and emits ``words_per_state``
random words, with Dirichlet weights (0 means dense).

Exact computation is the scaled forward algorithm (`log_marginal`), in JAX with
`lax.scan`, on soft evidence; its reverse pass is the backward algorithm, which
`data_gen.evidence` turns into every position's exact conditional.
"""
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from data_gen import evidence as evidence_lib
from data_gen.language import Language, Sentences, Task
from data_gen.sections import HMMConfig  # pylint: disable=unused-import  (re-exported)


def _sparse_rows(rng, rows, cols, per_row, concentration):
  out = np.zeros((rows, cols))
  k = per_row or cols
  for r in range(rows):
    idx = rng.choice(cols, size=k, replace=False)
    out[r, idx] = rng.dirichlet(np.full(k, concentration))
  return out


def random_hmm(cfg: HMMConfig = HMMConfig(), seed: int = 0):
  """(initial [S], transition [S, S], emission [S, V]) of a seeded random HMM."""
  rng = np.random.default_rng(seed)
  initial = rng.dirichlet(np.ones(cfg.num_states))
  transition = _sparse_rows(rng, cfg.num_states, cfg.num_states, cfg.transitions_per_state,
                            cfg.transition_concentration)
  emission = _sparse_rows(rng, cfg.num_states, cfg.vocab_size, cfg.words_per_state,
                          cfg.emission_concentration)
  return initial, transition, emission


class _RowSampler:
  """Draws from the rows of a stochastic matrix with one `searchsorted` for all draws.

  Row ``r``'s cumulative probabilities are shifted to ``[r, r + 1]`` and
  concatenated, so ``searchsorted(flat, r + u)`` lands inside row ``r``.
  """

  def __init__(self, probs):
    probs = np.atleast_2d(probs)
    self.cols = probs.shape[1]
    cum = np.cumsum(probs, axis=1) / probs.sum(axis=1, keepdims=True)
    cum[:, -1] = 1.0
    self.flat = (cum + np.arange(len(probs))[:, None]).ravel()

  def __call__(self, rows, u):
    idx = np.searchsorted(self.flat, rows + u, side="right") - rows * self.cols
    return np.minimum(idx, self.cols - 1).astype(np.int32)


class HMM(Language):

  def __init__(self, initial, transition, emission, *, length: int = 16,
               task_positions=(6, 10), batch_size: int = 64, dtype=jnp.float32,
               description: dict | None = None):
    self.initial = np.asarray(initial, np.float64)
    self.transition = np.asarray(transition, np.float64)
    self.emission = np.asarray(emission, np.float64)
    self.num_states, self.vocab_size = self.emission.shape
    self.length = self.max_length = length
    self.words = tuple(f"w{i}" for i in range(self.vocab_size))
    self.task_positions = tuple(task_positions)
    self.dtype = dtype
    self._description = description or {}
    v = self.vocab_size

    def log_marg(tokens, lengths):
      return self.log_marginal(evidence_lib.one_hot_evidence(tokens, v, dtype=dtype), lengths)

    def cond(tokens, lengths, mask):
      e = evidence_lib.one_hot_evidence(tokens, v, mask, dtype)
      return evidence_lib.conditionals(self.log_marginal, e, lengths)

    def soft(tokens, lengths, evid):
      evid = evid.astype(dtype)
      return (evidence_lib.posterior_marginals(self.log_marginal, evid, lengths),
              self.log_marginal(evid, lengths))

    def states(tokens, lengths):
      e = evidence_lib.one_hot_evidence(tokens, v, dtype=dtype)
      leaf = self._leaf(e, lengths)
      g = jax.grad(lambda f: jnp.sum(self._forward(f, lengths)))(leaf)
      post = leaf * g
      return post / jnp.sum(post, axis=-1, keepdims=True)

    kw = dict(batch_size=batch_size, bucket=length)
    self._log_marginal = evidence_lib.Bucketed(log_marg, length, positional=(False,), **kw)
    self._cond = evidence_lib.Bucketed(cond, length, **kw)
    self._soft = evidence_lib.Bucketed(soft, length, positional=(True, False), **kw)
    self._states = evidence_lib.Bucketed(states, length, **kw)

  @classmethod
  def random(cls, cfg: HMMConfig = HMMConfig(), seed: int = 0, **kw) -> "HMM":
    desc = dict(dataclasses.asdict(cfg), seed=seed)
    return cls(*random_hmm(cfg, seed), length=cfg.length, task_positions=cfg.task_positions,
               description=desc, **kw)

  def config_dict(self) -> dict:
    return dict(kind="hmm", **self._description)

  @functools.cached_property
  def _samplers(self):
    return (_RowSampler(self.initial), _RowSampler(self.transition), _RowSampler(self.emission))

  def sample(self, rng, n) -> Sentences:
    first, move, emit = self._samplers
    z = np.empty((n, self.length), np.int32)
    z[:, 0] = first(np.zeros(n, np.int64), rng.random(n))
    for t in range(1, self.length):
      z[:, t] = move(z[:, t - 1].astype(np.int64), rng.random(n))
    x = emit(z.ravel().astype(np.int64), rng.random(z.size)).reshape(z.shape)
    return Sentences(x, np.full(n, self.length, np.int32), {"states": z})

  # ---- exact computation
  def _leaf(self, evidence, lengths):
    leaf = evidence @ jnp.asarray(self.emission.T, self.dtype)
    valid = jnp.arange(evidence.shape[1])[None, :] < lengths[:, None]
    return jnp.where(valid[..., None], leaf, 1.0)

  def _forward(self, leaf, lengths):
    """Scaled forward algorithm on leaf likelihoods [B, L, S] -> log Z [B].

    Each step divides alpha by its sum ``c_t`` and adds ``log c_t`` to the offset. The
    ``c_t`` are constants for differentiation (as the scales of `data_gen.pcfg.inside`):
    ``log Z = log sum(alpha_L) + sum_t log c_t`` has the same value (``sum(alpha_L) = 1``)
    and the same gradient whatever the constants are, but the gradient then never passes
    through a normaliser, whose terms cancel in float32 (the conditionals, which are this
    gradient, were off by up to 1.3e-5 against float64; now within 1e-6).
    """
    trans = jnp.asarray(self.transition, self.dtype)
    # An impossible prefix has sum 0: its scale stays 1, alpha stays 0 and log Z = -inf,
    # without 0/0 anywhere.
    scale = lambda s: jax.lax.stop_gradient(jnp.where(s > 0, s, 1.0))
    alpha = jnp.asarray(self.initial, self.dtype) * leaf[:, 0]
    c = scale(jnp.sum(alpha, axis=-1))
    alpha, log_c = alpha / c[:, None], jnp.log(c)

    def step(carry, xs):
      alpha, log_c = carry
      t, leaf_t = xs
      new = (alpha @ trans) * leaf_t
      c = scale(jnp.sum(new, axis=-1))
      live = t < lengths
      alpha = jnp.where(live[:, None], new / c[:, None], alpha)
      return (alpha, log_c + jnp.where(live, jnp.log(c), 0.0)), None

    ts = jnp.arange(1, leaf.shape[1])
    (alpha, log_c), _ = jax.lax.scan(step, (alpha, log_c), (ts, jnp.swapaxes(leaf[:, 1:], 0, 1)))
    return jnp.log(jnp.sum(alpha, axis=-1)) + log_c

  def log_marginal(self, evidence, lengths):
    """[B]: ``log sum_x p(x) prod_t e[t, x_t]`` (soft evidence [B, L, V])."""
    return self._forward(self._leaf(evidence.astype(self.dtype), lengths), lengths)

  def log_prob(self, tokens, lengths) -> np.ndarray:
    return self._log_marginal(tokens, lengths).astype(np.float64)

  def conditionals(self, tokens, lengths, mask=None) -> np.ndarray:
    mask = np.zeros(np.shape(tokens), bool) if mask is None else np.asarray(mask, bool)
    return self._cond(tokens, lengths, mask)

  def soft_conditionals(self, tokens, lengths, evidence):
    return self._soft(tokens, lengths, evidence)

  def state_posteriors(self, tokens, lengths) -> np.ndarray:
    """float [n, L, S]: p(z_t = s | x), the forward-backward smoothing marginals."""
    return self._states(tokens, lengths)

  # ---- tasks
  def tasks(self):
    return {f"state_{k}": Task(f"state_{k}", self.num_states,
                               f"hidden state at position {k} (from 0)")
            for k in self.task_positions}

  def task_labels(self, name, sentences: Sentences) -> np.ndarray:
    if name not in self.tasks():
      return super().task_labels(name, sentences)
    return sentences.latent["states"][:, int(name.split("_")[1])].astype(np.int32)

  def bayes_accuracy(self, name, sentences: Sentences) -> float:
    """Accuracy of the best possible classifier of x: E[max_s p(z_k = s | x)]."""
    k = int(name.split("_")[1])
    return float(np.mean(np.max(self.state_posteriors(sentences.tokens,
                                                      sentences.lengths)[:, k], axis=-1)))
