"""From an ml_collections experiment config to typed objects, with checks.

Every check raises ``ValueError`` naming the offending config field, at start,
before any state is created or anything in the workdir is touched.
"""
import json
from typing import Any, Mapping

from flatness.model import masking
from flatness.model import presets
from flatness.model import tokens as tok
from flatness.model.transformer import TransformerConfig
from flatness.training import optimizers

MODEL_FIELDS = ("seq_len", "hidden_size", "num_layers", "num_heads", "mlp_dim", "dropout_rate",
                "attention_dropout_rate", "causal", "tie_embeddings", "dtype", "param_dtype")


def model_config(model: Mapping[str, Any], num_words: int, max_length: int) -> TransformerConfig:
  """The model of ``config.model`` for a language of ``num_words`` words.

  ``model.preset`` (a `flatness.model.presets` name) sets hidden size, layers, heads
  and MLP width; ``'custom'`` takes them from the config. ``model.seq_len = 0``
  means the language's longest sentence plus [CLS] and [SEP].
  """
  fields = {k: model[k] for k in MODEL_FIELDS if k in model}
  preset = model.get("preset", "custom")
  if preset != "custom":
    fields.update(presets.preset_fields(preset))
  if fields.get("seq_len", 0) == 0:
    fields["seq_len"] = max_length + 2
  if fields["seq_len"] < max_length + 2:
    raise ValueError(f"model.seq_len ({fields['seq_len']}) is too short for this language's "
                     f"sentences of up to {max_length} words (+ [CLS] and [SEP])")
  for name in ("dtype", "param_dtype"):
    if fields.get(name, "float32") not in ("float32", "bfloat16", "float16", "float64"):
      raise ValueError(f"model.{name}: unknown dtype {fields[name]!r}")
  return TransformerConfig(vocab_size=tok.model_vocab_size(num_words), **fields)


def masking_spec(cfg: Mapping[str, Any] | None, max_words: int | None = None
                 ) -> masking.MaskingSpec:
  """``config.masking``; ``max_predictions`` capped at ``max_words`` (the model's word
  positions): a sentence never has more predictions than words, and a grammar whose
  sentences are shorter than the configured maximum is still valid."""
  fields = dict(cfg or {})
  if max_words is not None and fields.get("max_predictions", 0) > max_words:
    fields["max_predictions"] = max_words
  return masking.MaskingSpec(**fields)


def check_train(config, num_devices: int) -> None:
  """Checks ``config.train`` and ``config.optimizer`` against the device count."""
  t = config.train
  for name in ("batch_size", "num_steps", "grad_accum_steps", "log_every", "eval_every",
               "checkpoint_every", "max_to_keep"):
    if int(t[name]) <= 0:
      raise ValueError(f"train.{name} must be positive, got {t[name]}")
  if t.batch_size % t.grad_accum_steps:
    raise ValueError(f"train.batch_size ({t.batch_size}) must be divisible by "
                     f"train.grad_accum_steps ({t.grad_accum_steps})")
  micro = t.batch_size // t.grad_accum_steps
  if micro % num_devices:
    raise ValueError(f"train.batch_size ({t.batch_size}) / train.grad_accum_steps "
                     f"({t.grad_accum_steps}) = {micro} is not divisible by the {num_devices} "
                     "devices of the data mesh")
  optimizers.make_optimizer(config.optimizer, int(t.num_steps))  # raises on a bad name/value


def incompatible_fields(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
  """Dotted config fields whose change makes a run's checkpoint meaningless to resume.

  The model, the masking rule, the optimizer type (its state's structure), and
  the data stream (language, its knobs, seed and source). Learning rate, steps
  and logging may change between a run and its resumption.
  """
  def flat(d, prefix=""):
    out = {}
    for k, v in d.items():
      if isinstance(v, Mapping):
        out.update(flat(v, f"{prefix}{k}."))
      else:
        out[f"{prefix}{k}"] = v
    return out
  # Compare as JSON would store them (tuples become lists).
  a, b = (flat(json.loads(json.dumps(x, default=str))) for x in (saved, current))
  language = b.get("data.language")
  prefixes = ("model.", "masking.", "optimizer.name", "optimizer.sam_base",
              "data.language", "data.seed", "data.source", f"data.{language}.")
  return sorted(k for k in set(a) | set(b) if k.startswith(prefixes) and a.get(k) != b.get(k))
