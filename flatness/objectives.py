"""Pre-training objectives: masked LM (the paper's) and causal LM.

An objective turns a raw word batch ``{tokens [B, L], lengths [B]}`` into model
inputs (`prepare`, random for MLM) and scores them (`loss_terms`). Both are pure,
so a loss is a pure function of the params pytree:

    loss_fn = lambda p: objective.loss(p, prepared_batch)   # differentiable twice

`loss_terms` returns sums rather than means, so that gradient accumulation and
data-parallel reductions average over all predictions of a global batch exactly.
Units: nats per predicted token.
"""
import dataclasses
import jax
import jax.numpy as jnp

from flatness import masking
from flatness import tokens as tok
from flatness.model import Transformer


def _nll_terms(logits, labels, weights):
  logp = jax.nn.log_softmax(logits.astype(jnp.promote_types(logits.dtype, jnp.float32)))
  nll = -jnp.take_along_axis(logp, labels[..., None], axis=-1)[..., 0]
  correct = (jnp.argmax(logits, -1) == labels).astype(nll.dtype)
  return dict(nll_sum=jnp.sum(nll * weights), weight_sum=jnp.sum(weights),
              correct_sum=jnp.sum(correct * weights))


@dataclasses.dataclass(frozen=True)
class Objective:
  """MLM (``causal=False``) or next-token prediction (``causal=True``)."""
  model: Transformer
  spec: masking.MaskingSpec = masking.MaskingSpec()

  @property
  def causal(self) -> bool:
    return self.model.cfg.causal

  def prepare(self, rng, batch):
    """Raw word batch -> the model batch (ids, positions, labels, weights).

    MLM: BERT masking drawn from ``rng``. Causal: predict ``w_1..w_n, [SEP]`` from
    ``[CLS] w_1..w_n`` (``rng`` unused), so that a sentence's summed loss is
    ``-log p(sentence)`` including its end.
    """
    cfg = self.model.cfg
    ids = tok.encode(batch["tokens"], batch["lengths"], cfg.seq_len)
    if not self.causal:
      return masking.bert_mask(rng, ids, batch["lengths"], self.spec, cfg.vocab_size)
    labels = jnp.concatenate([ids[:, 1:], jnp.full_like(ids[:, :1], tok.PAD)], axis=1)
    weights = (jnp.arange(cfg.seq_len)[None, :] <= batch["lengths"][:, None]).astype(
        jnp.float32)
    return dict(ids=ids, positions=None, labels=labels, weights=weights)

  def logits(self, params, batch, dropout_rng=None):
    rngs = {} if dropout_rng is None else {"dropout": dropout_rng}
    return self.model.apply({"params": params}, batch["ids"], batch.get("positions"),
                            deterministic=dropout_rng is None, rngs=rngs)

  def loss_terms(self, params, batch, dropout_rng=None):
    """Sums over the batch: nll_sum, weight_sum (number of predictions), correct_sum."""
    return _nll_terms(self.logits(params, batch, dropout_rng), batch["labels"],
                      batch["weights"])

  def loss(self, params, batch, dropout_rng=None):
    """Mean cross-entropy per prediction (nats). Deterministic without a dropout rng."""
    t = self.loss_terms(params, batch, dropout_rng)
    return t["nll_sum"] / jnp.maximum(t["weight_sum"], 1.0)

