"""A first-order Markov chain over words, whose optimal losses have closed forms.

Sentences have a fixed length ``n``: ``x_1 ~ pi``, ``x_{t+1} ~ P[x_t]``. With
``mu_t = pi P^(t-1)`` the marginal of ``x_t``:

* the single-masked conditional is ``p(x_t = b | x_{-t}) ∝ P[a, b] P[b, c]``
  (``a = x_{t-1}``, ``c = x_{t+1}``; ``pi[b]`` replaces ``P[a, b]`` at ``t = 1``
  and the right factor is dropped at ``t = n``), so the optimal masked-LM loss
  is ``(1/n) sum_t E[H(x_t | x_{t-1}, x_{t+1})]``, a finite sum over triples;
* the optimal causal loss per prediction is
  ``(H(pi) + sum_{t<n} sum_a mu_t(a) H(P[a])) / (n + 1)`` (the end of a
  fixed-length sentence is certain, so its prediction costs nothing).

It is the small closed-form source the foundation's tests train on, and a
cross-check for the HMM code (a Markov chain is an HMM with identity emissions).
"""
import numpy as np

from data_gen.language import Language, Sentences


def _entropy(p, axis=-1):
  p = np.asarray(p, np.float64)
  return -np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0), axis=axis)


def _normalize(x, axis=-1):
  s = np.sum(x, axis=axis, keepdims=True)
  return np.divide(x, s, out=np.zeros_like(x), where=s > 0)


class MarkovChain(Language):

  def __init__(self, num_words: int = 16, length: int = 10, concentration: float = 0.3,
               seed: int = 0):
    if num_words < 2 or length < 2:
      raise ValueError(f"markov: num_words and length must be >= 2, got {num_words}, {length}")
    if concentration <= 0:
      raise ValueError(f"markov: concentration must be positive, got {concentration}")
    rng = np.random.default_rng(seed)
    self.vocab_size = num_words
    self.max_length = length
    self.length = length
    self.seed = seed
    self.concentration = concentration
    self.words = tuple(f"w{i}" for i in range(num_words))
    self.initial = rng.dirichlet(np.full(num_words, 1.0))
    self.transition = rng.dirichlet(np.full(num_words, concentration), size=num_words)

  def config_dict(self) -> dict:
    return dict(kind="markov", num_words=self.vocab_size, length=self.length,
                concentration=self.concentration, seed=self.seed)

  def marginals(self) -> np.ndarray:
    """float64 [n, V]: the marginal distribution of each position."""
    mu = [self.initial]
    for _ in range(self.length - 1):
      mu.append(mu[-1] @ self.transition)
    return np.stack(mu)

  def sample(self, rng: np.random.Generator, n: int) -> Sentences:
    cum_init = np.cumsum(self.initial)
    cum = np.cumsum(self.transition, axis=1)
    u = rng.random((n, self.length))
    x = np.empty((n, self.length), np.int32)
    x[:, 0] = np.minimum(np.searchsorted(cum_init, u[:, 0], side="right"), self.vocab_size - 1)
    for t in range(1, self.length):
      rows = cum[x[:, t - 1]]
      x[:, t] = np.minimum((rows <= u[:, t:t + 1]).sum(1), self.vocab_size - 1)
    return Sentences(x, np.full(n, self.length, np.int32))

  def log_prob(self, tokens, lengths) -> np.ndarray:
    tokens = np.asarray(tokens)[:, :self.length]
    lp = np.log(self.initial[tokens[:, 0]])
    lp += np.log(self.transition[tokens[:, :-1], tokens[:, 1:]]).sum(axis=1)
    return lp

  def conditionals(self, tokens, lengths, mask=None) -> np.ndarray:
    tokens = np.asarray(tokens)[:, :self.length]
    n, length = tokens.shape
    if mask is None:
      out = np.empty((n, length, self.vocab_size))
      for t in range(length):
        out[:, t] = self._conditional_between(tokens, t, t - 1, t + 1)
      return out
    mask = np.asarray(mask, bool)[:, :length]
    out = np.zeros((n, length, self.vocab_size))
    for b in range(n):
      visible = np.flatnonzero(~mask[b])
      for t in range(length):
        left = visible[visible < t]
        right = visible[visible > t]
        out[b, t] = self._conditional_between(
            tokens[b:b + 1], t, left[-1] if len(left) else -1,
            right[0] if len(right) else length)[0]
    return out

  def _conditional_between(self, tokens, t, left, right):
    """p(x_t | x_left, x_right) for visible neighbours ``left < t < right`` (or none)."""
    matpow = np.linalg.matrix_power
    if left >= 0:
      prior = matpow(self.transition, t - left)[tokens[:, left]]
    else:
      prior = np.broadcast_to(self.marginals()[t], (len(tokens), self.vocab_size))
    if right < self.length:
      like = matpow(self.transition, right - t)[:, tokens[:, right]].T
    else:
      like = np.ones_like(prior)
    return _normalize(prior * like)

  def optimal_mlm_loss(self) -> float:
    """Closed form: mean over positions of E[H(x_t | x_{t-1}, x_{t+1})] (nats)."""
    mu, p = self.marginals(), self.transition
    total = 0.0
    for t in range(self.length):
      left = self.initial[None, :] if t == 0 else mu[t - 1][:, None] * p      # q(a, b)
      right = p if t < self.length - 1 else np.ones((self.vocab_size, 1))    # P[b, c]
      joint = left[:, :, None] * right[None, :, :]                            # q(a, b, c)
      cond = _normalize(joint, axis=1)
      total += -np.sum(np.where(joint > 0, joint * np.log(np.where(cond > 0, cond, 1.0)), 0.0))
    return total / self.length

  def optimal_causal_loss(self) -> float:
    """Closed form: entropy of a sentence over its ``n + 1`` predictions (nats)."""
    mu = self.marginals()
    h = _entropy(self.initial) + sum(mu[t] @ _entropy(self.transition)
                                     for t in range(self.length - 1))
    return h / (self.length + 1)
