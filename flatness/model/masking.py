"""BERT masking and single-position masking, as pure JAX functions.

BERT (Devlin et al. 2019; the paper's App. A keeps its recipe) selects
``k = min(max_predictions, max(1, round(rate * (n + 2))))`` of the ``n`` word
positions of a sentence uniformly at random (``n + 2`` counts [CLS] and [SEP],
as BERT's ``create_pretraining_data`` does; Python's round-half-to-even), and
replaces each selected token by [MASK] with probability 0.8, by a uniformly
random word with probability 0.1, and keeps it with probability 0.1. The loss
is the cross-entropy at the selected positions. `MaskingSpec` is the one
definition of this rule: `data_gen.optimal` computes the exact optimal loss of
the same rule.

The paper evaluates its loss by masking each position of a test sentence in
turn (`single_position_masks`).
"""
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from flatness.model import tokens as tok


@dataclasses.dataclass(frozen=True)
class MaskingSpec:
  rate: float = 0.15
  max_predictions: int = 5
  mask_prob: float = 0.8        # selected -> [MASK]
  random_prob: float = 0.1      # selected -> a uniformly random word; the rest keep
  count_special: bool = True    # count [CLS] and [SEP] in the sentence length, as BERT

  def __post_init__(self):
    if not 0.0 < self.rate <= 1.0:
      raise ValueError(f"masking.rate must lie in (0, 1], got {self.rate}")
    if self.max_predictions <= 0:
      raise ValueError(f"masking.max_predictions must be positive, got {self.max_predictions}")
    if self.mask_prob < 0 or self.random_prob < 0 or self.mask_prob + self.random_prob > 1:
      raise ValueError("masking.mask_prob and masking.random_prob must be non-negative and "
                       f"sum to at most 1, got {self.mask_prob} and {self.random_prob}")

  @property
  def keep_prob(self) -> float:
    return 1.0 - self.mask_prob - self.random_prob


def num_predictions(num_words: int, spec: MaskingSpec) -> int:
  """How many of a sentence's ``num_words`` positions BERT masking selects."""
  if num_words <= 0:
    return 0
  counted = num_words + 2 if spec.count_special else num_words
  return min(spec.max_predictions, max(1, int(round(counted * spec.rate))), num_words)


@functools.lru_cache(maxsize=None)
def num_predictions_table(max_words: int, spec: MaskingSpec) -> np.ndarray:
  """int32 [max_words + 1]: `num_predictions` for every sentence length (host-side, exact)."""
  return np.array([num_predictions(n, spec) for n in range(max_words + 1)], np.int32)


def max_selected(seq_len: int, spec: MaskingSpec) -> int:
  """The most positions `bert_mask` selects in a sentence of ``seq_len`` positions: its
  ``[B, P]`` outputs beyond this column have weight 0 in every batch (e.g. 2 of
  ``max_predictions = 5`` for ``seq_len = 10``: ``round(0.15 * 10) = 2``)."""
  return int(min(spec.max_predictions, num_predictions_table(seq_len, spec).max()))


def bert_mask(rng, ids, lengths, spec: MaskingSpec, vocab_size: int):
  """Applies BERT masking to encoded sentences.

  Args:
    rng: PRNG key; the masks are a deterministic function of it (and invariant to
      how the batch is sharded, since JAX's threefry is partitionable).
    ids: int [B, S] model input ids from `tokens.encode`.
    lengths: int [B] words per sentence.
    spec: the masking rule.
    vocab_size: model vocabulary size (random replacements are words only).

  Returns:
    dict with ``ids`` [B, S] (corrupted input), ``positions`` [B, P] (selected
    positions, P = spec.max_predictions), ``labels`` [B, P] (original ids there)
    and ``weights`` [B, P] (1.0 for the k real predictions, 0.0 for padding).
  """
  b, s = ids.shape
  p = spec.max_predictions
  if p > s:
    raise ValueError(f"masking.max_predictions ({p}) exceeds the sequence length ({s})")
  k = jnp.asarray(num_predictions_table(s, spec))[jnp.clip(lengths, 0, s)]
  r_pos, r_kind, r_word = jax.random.split(rng, 3)
  scores = jnp.where(tok.word_mask(lengths, s), jax.random.uniform(r_pos, (b, s)), 2.0)
  positions = jnp.argsort(scores, axis=-1)[:, :p].astype(jnp.int32)
  valid = jnp.arange(p)[None, :] < k[:, None]
  labels = jnp.take_along_axis(ids, positions, axis=1)
  u = jax.random.uniform(r_kind, (b, p))
  random_words = jax.random.randint(r_word, (b, p), tok.NUM_SPECIAL, vocab_size, ids.dtype)
  corrupted = jnp.where(u < spec.mask_prob, tok.MASK,
                        jnp.where(u < spec.mask_prob + spec.random_prob, random_words, labels))
  corrupted = jnp.where(valid, corrupted, labels)
  new_ids = ids.at[jnp.arange(b)[:, None], positions].set(corrupted.astype(ids.dtype))
  return dict(ids=new_ids, positions=positions, labels=labels,
              weights=valid.astype(jnp.float32))


def single_position_masks(ids, lengths):
  """Every word position masked in turn (the paper's loss evaluation).

  Args:
    ids: int [B, S] encoded sentences; lengths: int [B].

  Returns:
    The same dict as `bert_mask`, for B * (S - 2) copies (copy ``b * (S-2) + i``
    masks word ``i`` of sentence ``b``) with one prediction each (P = 1);
    copies with ``i >= lengths[b]`` have weight 0.
  """
  b, s = ids.shape
  w = s - 2
  rep = jnp.repeat(ids, w, axis=0)
  pos = jnp.tile(jnp.arange(1, s - 1, dtype=jnp.int32), b)[:, None]
  labels = jnp.take_along_axis(rep, pos, axis=1)
  valid = (pos[:, 0] - 1) < jnp.repeat(lengths, w)
  new_ids = rep.at[jnp.arange(b * w)[:, None], pos].set(tok.MASK)
  return dict(ids=new_ids, positions=pos, labels=labels,
              weights=valid[:, None].astype(jnp.float32))
