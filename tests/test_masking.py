"""BERT masking statistics and single-position masking layout."""
import jax
import numpy as np
from scipy import stats

from flatness.model import masking
from flatness.model import tokens as tok


def test_num_predictions_follows_bert():
  spec = masking.MaskingSpec()
  # BERT: min(max_pred, max(1, round(0.15 * (n + 2)))), never more than n.
  assert [masking.num_predictions(n, spec) for n in range(10)] == [0, 1, 1, 1, 1, 1, 1, 1, 2, 2]
  assert masking.num_predictions(16, spec) == 3
  assert masking.num_predictions(40, spec) == 5


# One compile per shape rather than one per op.
_bert_mask = jax.jit(masking.bert_mask, static_argnums=(3, 4))


def test_max_selected_bounds_every_bert_mask():
  # Every length, many draws: no weight beyond max_selected's column, and some sentence
  # fills it (so trimming to it drops only columns of weight 0, and no more).
  for s, spec in ((10, masking.MaskingSpec()), (32, masking.MaskingSpec()),
                  (12, masking.MaskingSpec(rate=0.5, max_predictions=4)),
                  (4, masking.MaskingSpec(max_predictions=2))):
    p = masking.max_selected(s, spec)
    lengths = np.tile(np.arange(0, s - 1), 50)
    ids = tok.encode(np.full((len(lengths), s - 2), 3), lengths, s)
    w = np.asarray(_bert_mask(jax.random.key(s), ids, lengths, spec, 20)["weights"])
    assert not w[:, p:].any() and w[:, :p].sum(1).max() == p, (s, spec, p)


def test_bert_mask_selection_and_replacement_rates():
  spec = masking.MaskingSpec()
  rng = np.random.default_rng(0)
  b, s, vocab = 4000, 20, 50
  lengths = rng.integers(1, s - 1, b)
  words = rng.integers(0, vocab - tok.NUM_SPECIAL, (b, s - 2))
  ids = tok.encode(words, lengths, s)
  out = jax.device_get(masking.bert_mask(jax.random.key(0), ids, lengths, spec, vocab))
  k = out["weights"].sum(1)
  np.testing.assert_array_equal(k, masking.num_predictions_table(s, spec)[lengths])
  sel = out["weights"] > 0
  pos = out["positions"]
  assert np.all((pos[sel] >= 1) & (pos[sel.nonzero()[0], sel.nonzero()[1]] <=
                                   np.repeat(lengths, sel.sum(1))))
  # Selected positions are distinct within a sentence.
  for row, valid in zip(pos[:200], sel[:200]):
    assert len(set(row[valid])) == valid.sum()
  # 80/10/10: [MASK], a random word (which may equal the original), the original.
  new = np.take_along_axis(out["ids"], pos, axis=1)[sel]
  orig = out["labels"][sel]
  n = len(new)
  is_mask = new == tok.MASK
  same = new == orig
  counts = [is_mask.sum(), (~is_mask & ~same).sum(), same.sum()]
  p_rand_diff = 0.1 * (1 - 1 / (vocab - tok.NUM_SPECIAL))
  expected = np.array([0.8, p_rand_diff, 1 - 0.8 - p_rand_diff]) * n
  assert stats.chisquare(counts, expected).pvalue > 1e-3
  # Unselected positions are untouched.
  untouched = np.ones_like(out["ids"], bool)
  np.put_along_axis(untouched, pos, ~sel, axis=1)
  np.testing.assert_array_equal(out["ids"][untouched], np.asarray(ids)[untouched])


def test_single_position_masks():
  ids = tok.encode(np.array([[5, 6, 7, 0], [8, 9, 0, 0]]), np.array([3, 2]), 6)
  out = jax.device_get(masking.single_position_masks(ids, np.array([3, 2])))
  assert out["ids"].shape == (8, 6)
  np.testing.assert_array_equal(out["weights"][:, 0], [1, 1, 1, 0, 1, 1, 0, 0])
  np.testing.assert_array_equal(out["labels"][:, 0][[0, 1, 2, 4, 5]],
                                np.array([5, 6, 7, 8, 9]) + tok.NUM_SPECIAL)
  assert out["ids"][1, 2] == tok.MASK and out["ids"][1, 1] == 5 + tok.NUM_SPECIAL
