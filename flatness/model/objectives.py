r"""Pre-training objectives: masked LM (the paper's) and causal LM.

An objective turns a raw word batch ``{tokens [B, L], lengths [B]}`` into model
inputs (`prepare`, random for MLM) and scores them (`loss_terms`). Both are pure,
so a loss is a pure function of the params pytree:

    loss_fn = lambda p: objective.loss(p, prepared_batch)   # differentiable twice

`loss_terms` returns sums rather than means, so that gradient accumulation and
data-parallel reductions average over all predictions of a global batch exactly.
Units: nats per predicted token.

**Targets** (``config.targets``). With ``"sampled"`` (the default, BERT's) the
loss at a predicted position ``i`` is ``-log p_theta(x_i | y)``: the word the
generator drew, given the corrupted input ``y`` the model sees. With
``"exact"`` (`data_gen.bert_targets.exact_targets`) it is the cross-entropy against the exact
conditional of that word,

    l_i(theta) = -sum_v q_i(v) log p_theta(v | y),   q_i(v) = P(x_i = v | y, i in S),

computed for the batch's own corruption (the selected set ``S``, and [MASK],
random word or kept word at each of its positions; `data_gen.bert_targets`).

* Same estimand. Given ``y`` and ``i in S``, the hidden word is distributed as
  ``q_i``, so ``E[-log p_theta(x_i | y) | y, i in S] = l_i(theta)``: the two
  losses, and their gradients, have the same expectation over the data and the
  masking. The population loss is unchanged, hence so are its minimisers; its
  minimum is the Bayes loss of BERT masking (`data_gen.optimal.bert_masking_loss`),
  reached at ``p_theta(. | y) = q_i``.
* Less noise. The sampled loss is the exact one plus ``(q_i - e_{x_i}) . log
  p_theta(. | y)``, a term of mean zero whose gradient
  ``J^T (q_i - e_{x_i})`` (``J`` the Jacobian of the logits) is pure
  label-sampling noise, with covariance ``J^T (diag q_i - q_i q_i^T) J``: at
  the optimum, the Gauss-Newton part of the Hessian (equal to the Fisher). The
  exact target removes it: at ``p_theta = q`` every example's gradient
  ``J^T (p_theta - q_i)`` is zero, while a sampled label's gradient is not,
  so SGD on sampled labels keeps diffusing around the minimum with a noise
  covariance that equals the (population) Hessian there. What remains with
  exact targets is the noise of which sentences and masks were drawn, which
  vanishes at that minimum too.

``train/loss`` is then the exact-target cross-entropy, whose expectation is
the sampled loss's; ``train/accuracy`` still scores the drawn word.
"""
import dataclasses

import jax
import jax.numpy as jnp

from flatness.model import masking
from flatness.model import tokens as tok
from flatness.model.transformer import Transformer

TARGETS = ("sampled", "exact")


def _nll_terms(logits, labels, weights):
  logp = jax.nn.log_softmax(logits.astype(jnp.promote_types(logits.dtype, jnp.float32)))
  nll = -jnp.take_along_axis(logp, labels[..., None], axis=-1)[..., 0]
  correct = (jnp.argmax(logits, -1) == labels).astype(nll.dtype)
  return dict(nll_sum=jnp.sum(nll * weights), weight_sum=jnp.sum(weights),
              correct_sum=jnp.sum(correct * weights))


def _soft_nll_terms(logits, targets, labels, weights):
  logp = jax.nn.log_softmax(logits.astype(jnp.promote_types(logits.dtype, jnp.float32)))
  # Words the target rules out contribute 0 even where the model's log p is -inf.
  ce = -jnp.sum(jnp.where(targets > 0, targets * logp, 0.0), axis=-1)
  correct = (jnp.argmax(logits, -1) == labels).astype(ce.dtype)
  return dict(nll_sum=jnp.sum(ce * weights), weight_sum=jnp.sum(weights),
              correct_sum=jnp.sum(correct * weights))


def nll_terms(logits, labels, weights, targets=None):
  """Sums over predictions: nll_sum, weight_sum (number of predictions), correct_sum.

  ``nll_sum = sum_p w_p l_p`` with ``l_p = -log softmax(logits_p)[labels_p]``,
  or with target distributions ``targets`` [..., V] the cross-entropy
  ``l_p = -sum_v targets_p(v) log softmax(logits_p)(v)`` (exact targets);
  ``correct_sum`` counts argmax hits of ``labels`` either way.
  """
  if targets is None:
    return _nll_terms(logits, labels, weights)
  return _soft_nll_terms(logits, targets, labels, weights)


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
    """Sums over the batch: nll_sum, weight_sum (number of predictions), correct_sum.

    A batch with ``targets`` [B, P, V] (exact targets) is scored against
    those distributions instead of its one-hot ``labels``.
    """
    return nll_terms(self.logits(params, batch, dropout_rng), batch["labels"],
                     batch["weights"], batch.get("targets"))

  def loss(self, params, batch, dropout_rng=None):
    """Mean cross-entropy per prediction (nats). Deterministic without a dropout rng."""
    t = self.loss_terms(params, batch, dropout_rng)
    return t["nll_sum"] / jnp.maximum(t["weight_sum"], 1.0)
