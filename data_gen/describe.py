r"""Prints a JSON summary of a synthetic language.

  python -m data_gen.describe --config=experiments/configs/languages.py:pcfg
  python -m data_gen.describe --config=experiments/configs/languages.py:pcfg \
      --grammar_file=../shared/paper/rule_deep_mlm.txt --num_sentences=4000

The config may be any config file with a ``data`` section (the pretraining
configs included). The summary holds the sizes, the length histogram, the exact
optimal losses with standard errors (`data_gen.optimal`), per downstream task
the class balance, the majority-class and (where computable) the Bayes-optimal
accuracy, and throughput of sampling and of exact conditionals.
"""
import json
import time

import numpy as np
from absl import flags
from ml_collections import config_flags

from data_gen import optimal
from data_gen import registry
from flatness.runtime import cli
from flatness.runtime import logs

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file with a `data` section.")
_GRAMMAR = flags.DEFINE_string("grammar_file", "", "A PCFG rule file (overrides the config).")
_N = flags.DEFINE_integer("num_sentences", 2000, "Sentences for the optimal losses.")
_N_BERT = flags.DEFINE_integer("num_bert", 300, "Sentences for the BERT-masking loss (0: skip).")
_N_TASK = flags.DEFINE_integer("num_task", 2000, "Downstream sentences per task.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the sampled sentences.")
_OUTPUT = flags.DEFINE_string("output", "", "Also write the JSON here.")
flags.mark_flags_as_required(["config"])


def _timed(fn):
  start = time.perf_counter()
  out = fn()
  return out, time.perf_counter() - start


def describe(language, *, num_sentences=2000, num_bert=300, num_task=2000, seed=0) -> dict:
  rng = np.random.default_rng(seed)
  sents, t_sample = _timed(lambda: language.sample(rng, num_sentences))
  # Compile every length bucket before timing.
  first = np.unique(sents.lengths, return_index=True)[1]
  language.conditionals(sents.tokens[first], sents.lengths[first])
  _, t_cond = _timed(lambda: language.conditionals(sents.tokens, sents.lengths))
  lengths = np.bincount(sents.lengths)
  out = dict(language=language.config_dict(), vocab_size=language.vocab_size,
             max_length=language.max_length,
             length_histogram={int(n): int(c) for n, c in enumerate(lengths) if c},
             mean_length=float(sents.lengths.mean()))
  losses = dict(single_masked=optimal.single_masked_loss(language, sents).as_dict(),
                causal=optimal.causal_loss(language, sents).as_dict())
  if num_bert and hasattr(language, "soft_conditionals"):
    losses["bert_masking"] = optimal.bert_masking_loss(language, sents.take(
        np.arange(min(num_bert, len(sents)))), seed=seed).as_dict()
  if "emitter" in sents.latent:
    losses["emitter_entropy"] = optimal.emitter_entropy(language, sents).as_dict()
  out["optimal_losses"] = losses
  tasks = {}
  sample_task = getattr(language, "sample_downstream", language.sample)
  task_sents = sample_task(np.random.default_rng([seed, 1]), num_task)
  for name, task in language.tasks().items():
    labels = language.task_labels(name, task_sents)
    valid = labels >= 0
    balance = np.bincount(labels[valid], minlength=task.num_classes) / max(valid.sum(), 1)
    info = dict(num_classes=task.num_classes, description=task.description,
                class_balance=[round(float(b), 4) for b in balance],
                majority_accuracy=float(balance.max()), defined_fraction=float(valid.mean()))
    if hasattr(language, "bayes_accuracy"):
      info["bayes_accuracy"] = language.bayes_accuracy(name, task_sents)
    tasks[name] = info
  out["tasks"] = tasks
  out["throughput"] = dict(sampling_sentences_per_sec=num_sentences / t_sample,
                           conditionals_sentences_per_sec=num_sentences / t_cond)
  return out


def main(argv):
  del argv
  logs.quiet_libraries()
  data = _CONFIG.value.data if "data" in _CONFIG.value else _CONFIG.value
  if _GRAMMAR.value:
    data.language = "pcfg"
    data.pcfg.grammar_file = _GRAMMAR.value
  summary = describe(registry.make_language(data), num_sentences=_N.value, num_bert=_N_BERT.value,
                     num_task=_N_TASK.value, seed=_SEED.value)
  text = json.dumps(summary, indent=2)
  print(text)
  if _OUTPUT.value:
    with open(_OUTPUT.value, "w") as f:
      f.write(text + "\n")


if __name__ == "__main__":
  cli.run(main)
