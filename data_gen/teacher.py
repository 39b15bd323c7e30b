"""Text sampled from a random causal transformer: the stand-in for the paper's OPT data.

The paper's third language was sampled from OPT-125M restricted to its 2,000
most frequent tokens (up to 24 tokens a sentence), which we cannot ship. Here a
seeded causal `flatness.model.transformer.Transformer` plays the teacher: a sentence draws
a latent class ``c`` uniformly, then words autoregressively from
``softmax(logits / temperature)`` after the prefix ``[class token] w_1 ..
w_t``, until it emits ``[SEP]`` (not allowed before ``min_length`` words,
forced after ``max_length``). The downstream task is the class, which the
student never sees.

Exact quantities, all from the teacher's own log-probabilities:

* ``log p(x) = log sum_c p(c) p(x | c)``: each class scored in one forward pass;
* single-masked conditionals ``p(x_i = w | x_{-i}) ∝ sum_c p(c) p(x with x_i = w | c)``:
  every vocabulary word scored at every position (``n V C`` sequences a sentence);
* ``p(c | x)``, hence the Bayes accuracy of the task.

Conditionals given several masked words would need ``V^k`` sequences, so this
language offers the single-masked ones only.
"""
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from data_gen.language import Language, Sentences, Task
from data_gen.sections import TeacherConfig  # pylint: disable=unused-import  (re-exported)
from flatness.model import tokens as tok
from flatness.model.transformer import Transformer, TransformerConfig, init_params


class Teacher(Language):

  def __init__(self, cfg: TeacherConfig = TeacherConfig(), seed: int = 0, batch_size: int = 8):
    self.cfg, self.seed = cfg, seed
    self.vocab_size, self.max_length = cfg.vocab_size, cfg.max_length
    self.words = tuple(f"w{i}" for i in range(cfg.vocab_size))
    self.model_cfg = TransformerConfig(
        vocab_size=tok.NUM_SPECIAL + cfg.vocab_size + cfg.num_classes, seq_len=cfg.max_length + 1,
        hidden_size=cfg.hidden_size, num_layers=cfg.num_layers, num_heads=cfg.num_heads,
        mlp_dim=cfg.mlp_dim, dropout_rate=0.0, attention_dropout_rate=0.0, causal=True,
        init_std=cfg.init_std)
    self.model = Transformer(self.model_cfg)
    self.params = init_params(self.model_cfg, jax.random.key(seed))
    self._batch = batch_size
    # Output slots: 0 = [SEP] (end of sentence), 1 + w = word w.
    self._allowed = np.r_[tok.SEP, tok.NUM_SPECIAL + np.arange(cfg.vocab_size)]
    t = np.arange(cfg.max_length + 1)[:, None]
    slots = np.arange(cfg.vocab_size + 1)[None, :]
    self._forbidden = ((slots == 0) & (t < cfg.min_length)) | ((slots > 0) & (t >= cfg.max_length))

  def config_dict(self) -> dict:
    return dict(kind="teacher", seed=self.seed, **dataclasses.asdict(self.cfg))

  def _inputs(self, tokens, classes):
    """[B, L+1] ids: class token then words (word ids, [PAD]-padded where < 0)."""
    cls = tok.NUM_SPECIAL + self.cfg.vocab_size + classes
    words = jnp.where(tokens >= 0, tokens + tok.NUM_SPECIAL, tok.PAD)
    return jnp.concatenate([cls[:, None], words], axis=1).astype(jnp.int32)

  def _slot_logprobs(self, ids):
    """[B, L+1, V+1] log-probabilities of the next slot after each prefix."""
    logits = self.model.apply({"params": self.params}, ids)[..., self._allowed]
    logits = jnp.where(self._forbidden[None], -jnp.inf, logits / self.cfg.temperature)
    return jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)

  @functools.partial(jax.jit, static_argnums=0)
  def _class_log_likelihoods(self, tokens, lengths):
    """[B, C]: log p(x | c) for every class."""
    b, width = tokens.shape
    c = self.cfg.num_classes
    pos = jnp.arange(width)[None, :]
    words = jnp.where(pos < lengths[:, None], tokens, -1)
    words = jnp.pad(words, ((0, 0), (0, self.cfg.max_length - width)), constant_values=-1)
    ids = self._inputs(jnp.repeat(words, c, axis=0), jnp.tile(jnp.arange(c), b))
    lp = self._slot_logprobs(ids)                                      # [B*C, L+1, V+1]
    steps = jnp.arange(self.cfg.max_length + 1)[None, :]
    n = jnp.repeat(lengths, c)[:, None]
    nxt = jnp.concatenate([words, jnp.full((b, 1), -1)], axis=1)
    slot = jnp.where(steps < n, jnp.repeat(nxt, c, axis=0) + 1, 0)
    picked = jnp.take_along_axis(lp, slot[..., None], axis=-1)[..., 0]
    return jnp.sum(jnp.where(steps <= n, picked, 0.0), axis=1).reshape(b, c)

  def _batched(self, fn, tokens, lengths, batch):
    outs = []
    tokens, lengths = np.asarray(tokens), np.asarray(lengths)
    for s in range(0, len(lengths), batch):
      t, l = tokens[s:s + batch], lengths[s:s + batch]
      pad = batch - len(l)
      out = fn(np.pad(t, ((0, pad), (0, 0))), np.pad(l, (0, pad), constant_values=1))
      outs.append(np.asarray(jax.device_get(out))[:len(l)])
    return np.concatenate(outs)

  def class_log_likelihoods(self, tokens, lengths) -> np.ndarray:
    return self._batched(self._class_log_likelihoods, np.asarray(tokens)[:, :self.max_length],
                         lengths, 64).astype(np.float64)

  def log_prob(self, tokens, lengths) -> np.ndarray:
    ll = self.class_log_likelihoods(tokens, lengths)
    return np.logaddexp.reduce(ll, axis=1) - np.log(self.cfg.num_classes)

  def class_posteriors(self, tokens, lengths) -> np.ndarray:
    ll = self.class_log_likelihoods(tokens, lengths)
    return np.exp(ll - np.logaddexp.reduce(ll, axis=1, keepdims=True))

  @functools.partial(jax.jit, static_argnums=0)
  def _conditionals(self, tokens, lengths):
    """[B, L, V]: p(x_i = w | x_{-i}) by scoring every word at every position."""
    b, length = tokens.shape
    v = self.cfg.vocab_size

    def one(row, n):
      # variants[i, w] = the sentence with word w at position i.
      at_i = jnp.arange(length)[:, None, None] == jnp.arange(length)[None, None, :]
      variants = jnp.where(at_i, jnp.arange(v)[None, :, None], row[None, None, :])
      flat = variants.reshape(length * v, length)
      ll = self._class_log_likelihoods(flat, jnp.full((length * v,), n))
      joint = jax.nn.logsumexp(ll, axis=1).reshape(length, v)
      cond = jax.nn.softmax(joint, axis=1)
      return jnp.where(jnp.arange(length)[:, None] < n, cond, 0.0)

    return jax.lax.map(lambda a: one(*a), (tokens, lengths))

  def conditionals(self, tokens, lengths, mask=None) -> np.ndarray:
    if mask is not None and np.any(mask):
      raise ValueError("the teacher language has single-masked conditionals only (several "
                       "masked words of a transformer would need V^k scored sentences)")
    tokens = np.asarray(tokens)[:, :self.max_length]
    tokens = np.pad(tokens, ((0, 0), (0, self.max_length - tokens.shape[1])))
    return self._batched(self._conditionals, tokens, lengths, self._batch)

  @functools.partial(jax.jit, static_argnums=(0, 2))
  def _sample(self, key, n):
    k_cls, k_words = jax.random.split(key)
    classes = jax.random.randint(k_cls, (n,), 0, self.cfg.num_classes)
    length = self.cfg.max_length

    def step(t, carry):
      words, ended = carry
      lp = self._slot_logprobs(self._inputs(words, classes))[:, t]
      slot = jax.random.categorical(jax.random.fold_in(k_words, t), lp)
      write = ~ended & (slot > 0)
      words = words.at[:, t].set(jnp.where(write, slot - 1, words[:, t]))
      return words, ended | (slot == 0)

    words, _ = jax.lax.fori_loop(0, length, step,
                                 (jnp.full((n, length), -1, jnp.int32), jnp.zeros(n, bool)))
    return words, classes

  def sample(self, rng, n) -> Sentences:
    key = jax.random.key(int(rng.integers(2**31)))
    words, classes = jax.device_get(self._sample(key, n))
    lengths = (words >= 0).sum(axis=1).astype(np.int32)
    return Sentences(np.maximum(words, 0).astype(np.int32), lengths,
                     {"class": classes.astype(np.int32)})

  def tasks(self):
    return {"class": Task("class", self.cfg.num_classes, "the latent class of the sentence")}

  def task_labels(self, name, sentences):
    if name != "class":
      return super().task_labels(name, sentences)
    return sentences.latent["class"]

  def bayes_accuracy(self, name, sentences) -> float:
    post = self.class_posteriors(sentences.tokens, sentences.lengths)
    return float(np.mean(np.max(post, axis=1)))
