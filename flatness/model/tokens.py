"""Special tokens, defined once, and the layout of a model input.

Every language in `data_gen` produces sentences as word ids in ``[0, V)``. The
model's vocabulary puts the special tokens first, so word ``w`` is model token
``w + NUM_SPECIAL`` and the model vocabulary has ``V + NUM_SPECIAL`` entries.
A sentence of ``n`` words becomes ``[CLS] w_1 .. w_n [SEP] [PAD] ..`` of
``seq_len`` tokens; for the causal model ``[CLS]`` plays the role of
beginning-of-sentence and ``[SEP]`` of end-of-sentence.
"""
import jax.numpy as jnp
import numpy as np

PAD = 0
CLS = 1
SEP = 2
MASK = 3
NUM_SPECIAL = 4
SPECIAL_NAMES = ("[PAD]", "[CLS]", "[SEP]", "[MASK]")


def model_vocab_size(num_words: int) -> int:
  return num_words + NUM_SPECIAL


def max_words(seq_len: int) -> int:
  """Words a sequence of ``seq_len`` positions holds: [CLS] and [SEP] take two."""
  return seq_len - 2


def encode(tokens, lengths, seq_len: int):
  """Word batch -> model input ids.

  Args:
    tokens: int [B, L] word ids; entries at positions >= length are ignored.
    lengths: int [B] number of words, at most ``seq_len - 2``.
    seq_len: model sequence length (words + [CLS] + [SEP]).

  Returns:
    int32 [B, seq_len] input ids.
  """
  tokens = jnp.asarray(tokens, jnp.int32)
  lengths = jnp.asarray(lengths, jnp.int32)
  b, width = tokens.shape
  if width > max_words(seq_len):
    tokens = tokens[:, :max_words(seq_len)]
  pos = jnp.arange(seq_len)[None, :]
  word_idx = jnp.clip(pos - 1, 0, tokens.shape[1] - 1)
  words = jnp.take_along_axis(tokens, jnp.broadcast_to(word_idx, (b, seq_len)), axis=1)
  n = lengths[:, None]
  ids = jnp.where((pos >= 1) & (pos <= n), words + NUM_SPECIAL, PAD)
  ids = jnp.where(pos == 0, CLS, ids)
  return jnp.where(pos == n + 1, SEP, ids).astype(jnp.int32)


def word_mask(lengths, seq_len: int):
  """bool [B, seq_len]: True at the positions that hold words."""
  pos = jnp.arange(seq_len)[None, :]
  n = jnp.asarray(lengths)[:, None]
  return (pos >= 1) & (pos <= n)


def word_batch(tokens, lengths, rows, width: int) -> dict:
  """Rows ``rows`` of a sentence set as a model's word batch: int32 ``tokens [n, width]``
  (longer sentences cut to ``width`` words) and their ``lengths``, capped to match."""
  return dict(tokens=np.asarray(tokens)[rows, :width].astype(np.int32),
              lengths=np.minimum(np.asarray(lengths)[rows], width).astype(np.int32))
