"""From an ml_collections experiment config to typed objects, with checks.

Every check raises ``ValueError`` naming the offending config field, at start,
before any state is created or anything in the workdir is touched.
"""
import dataclasses
import json
from typing import Any, Mapping

from flatness.model import masking
from flatness.model import presets
from flatness.model import tokens as tok
from flatness.model.transformer import TransformerConfig
from flatness.runtime import config_types
from flatness.training import optimizers

MODEL_FIELDS = ("seq_len", "hidden_size", "num_layers", "num_heads", "mlp_dim", "dropout_rate",
                "attention_dropout_rate", "causal", "tie_embeddings", "dtype", "param_dtype")


def model_config(model: Mapping[str, Any], num_words: int, max_length: int) -> TransformerConfig:
  """The model of ``config.model`` for a language of ``num_words`` words.

  ``model.preset`` (a `flatness.model.presets` name) sets hidden size, layers, heads
  and MLP width; ``'custom'`` takes them from the config. ``model.seq_len = 0``
  means the language's longest sentence plus [CLS] and [SEP].
  """
  missing = [k for k in ("preset",) + MODEL_FIELDS if k not in model]
  if missing:
    raise ValueError(f"model: missing fields {missing}; experiments/configs/pretrain.py sets "
                     "every one")
  fields = {k: model[k] for k in MODEL_FIELDS}
  if model["preset"] != "custom":
    fields.update(presets.preset_fields(model["preset"]))
  if fields["seq_len"] == 0:
    fields["seq_len"] = max_length + 2
  if fields["seq_len"] < max_length + 2:
    raise ValueError(f"model.seq_len ({fields['seq_len']}) is too short for this language's "
                     f"sentences of up to {max_length} words (+ [CLS] and [SEP])")
  for name in ("dtype", "param_dtype"):
    if fields[name] not in ("float32", "bfloat16", "float16", "float64"):
      raise ValueError(f"model.{name}: unknown dtype {fields[name]!r}")
  return TransformerConfig(vocab_size=tok.model_vocab_size(num_words), **fields)


def masking_spec(cfg: Mapping[str, Any], max_words: int | None = None) -> masking.MaskingSpec:
  """``config.masking``; ``max_predictions`` capped at ``max_words`` (the model's word
  positions): a sentence never has more predictions than words, and a grammar whose
  sentences are shorter than the configured maximum is still valid."""
  # count_special is BERT's convention, not a config field (runs' records lack it).
  spec = config_types.from_section(masking.MaskingSpec, cfg, "masking", strict=False)
  if max_words is not None and spec.max_predictions > max_words:
    spec = dataclasses.replace(spec, max_predictions=max_words)
  return spec


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """The ``train`` section (`experiments/configs/pretrain.py` documents each field)."""
  batch_size: int          # global, over all devices and processes
  num_steps: int
  grad_accum_steps: int
  log_every: int
  eval_every: int
  eval_batch_size: int
  checkpoint_every: int
  max_to_keep: int
  keep_every: int          # 0: none kept for ever
  prefetch: int
  steps_per_call: int      # 1: one jitted call per step; K: up to K steps in one call
  fast_kernels: bool       # the training step's kernels (train_step.training_objective)


def train_config(section) -> TrainConfig:
  """``config.train`` typed and checked (positive counts; the batch splits into its
  micro-batches)."""
  t = config_types.from_section(TrainConfig, section, "train")
  for name in ("batch_size", "num_steps", "grad_accum_steps", "log_every", "eval_every",
               "checkpoint_every", "max_to_keep", "eval_batch_size", "steps_per_call"):
    if getattr(t, name) <= 0:
      raise ValueError(f"train.{name} must be positive, got {getattr(t, name)}")
  if t.keep_every < 0 or t.prefetch < 0:
    raise ValueError(f"train.keep_every and train.prefetch must be >= 0, got {t.keep_every} "
                     f"and {t.prefetch}")
  if t.batch_size % t.grad_accum_steps:
    raise ValueError(f"train.batch_size ({t.batch_size}) must be divisible by "
                     f"train.grad_accum_steps ({t.grad_accum_steps})")
  return t


def check_train(config, num_devices: int) -> None:
  """Checks ``config.train`` and ``config.optimizer``, and the micro-batch against the
  device count (training only: evaluation never reads the training batch)."""
  t = train_config(config.train)
  micro = t.batch_size // t.grad_accum_steps
  if micro % num_devices:
    raise ValueError(f"train.batch_size ({t.batch_size}) / train.grad_accum_steps "
                     f"({t.grad_accum_steps}) = {micro} is not divisible by the {num_devices} "
                     "devices of the data mesh")
  optimizers.make_optimizer(config.optimizer, t.num_steps)  # raises on a bad name/value


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
