"""TFDS datasets: deterministic, readable without TensorFlow, consumed by the trainer."""
import json
import subprocess
import sys

import ml_collections
import numpy as np
import pytest

import resume_check
from data_gen import datasets
from data_gen import describe
from data_gen import registry
from data_gen import sections
from data_gen.pcfg.random_grammar import RandomGrammarConfig
from experiments.configs import pretrain
from flatness.training import evaluation
from flatness.training import input_pipeline

TINY = RandomGrammarConfig(num_start=2, levels=2, symbols_per_level=3, rules_per_symbol=3,
                           words_per_last_symbol=3, vocab_size=6)
SIZES = datasets.Sizes(train=300, validation=40, test=20, task_train=30, task_test=10)


def _data(seed=0):
  d = ml_collections.ConfigDict(dict(language="pcfg", seed=seed, **sections.sections()))
  d.pcfg = sections.pcfg_section(TINY)
  return d


def _records(builder, split):
  src = builder.as_data_source(split=split)
  return [src[i] for i in range(len(src))]


def test_same_config_same_bytes_other_seed_other_data(tmp_path):
  built = []
  for name, seed in (("a", 0), ("b", 0), ("c", 1)):
    b = datasets.builder(_data(seed), SIZES, data_dir=str(tmp_path / name))
    b.download_and_prepare()
    built.append(b)
  a, b, c = (_records(x, "train") for x in built)
  assert len(a) == 300 and all(np.array_equal(x["tokens"], y["tokens"]) for x, y in zip(a, b))
  assert not all(np.array_equal(x["tokens"], y["tokens"]) for x, y in zip(a, c))
  assert built[0].builder_config.name == built[1].builder_config.name != built[2].builder_config.name
  assert set(built[0].info.splits) == {"train", "validation", "test", "A_train", "A_test",
                                       "B_train", "B_test", "C_train", "C_test"}


def test_validation_split_stores_exact_conditionals(tmp_path):
  b = datasets.builder(_data(), SIZES, data_dir=str(tmp_path))
  b.download_and_prepare()
  val = evaluation.ValidationSet.from_records(b.as_data_source(split="validation"), width=4)
  lang = b.language
  np.testing.assert_allclose(val.conditionals, lang.conditionals(val.tokens, val.lengths),
                             atol=1e-6)
  rec = _records(b, "validation")[0]
  p = rec["conditionals"].astype(np.float64)
  plogp = np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0)
  np.testing.assert_allclose(rec["entropy"], -plogp.sum(1), atol=1e-5)
  # Downstream filter (the paper's 4 < length, cut to this grammar's longest sentence).
  assert lang.downstream_min_length == 4
  assert all(len(r["tokens"]) >= 4 for r in _records(b, "B_train"))
  src = input_pipeline.ArraySource(b.as_data_source(split="train"), 16, seed=0, width=4)
  batch = src.batch(0)
  assert batch["tokens"].shape == (16, 4) and set(batch) >= {"tokens", "lengths", "label_A"}


def test_data_source_needs_no_tensorflow(tmp_path):
  """Build and read in a fresh interpreter, then check TensorFlow was never imported."""
  code = f"""
import sys, json
sys.path.insert(0, {str(tmp_path)!r})
from data_gen import datasets
import ml_collections
from data_gen import registry
from data_gen import sections
from data_gen.pcfg.random_grammar import RandomGrammarConfig
d = ml_collections.ConfigDict(dict(language="markov", seed=0, **sections.sections()))
b = datasets.builder(d, datasets.Sizes(train=20, validation=5, test=5, task_train=5, task_test=5),
                     data_dir={str(tmp_path / "tfds")!r})
b.download_and_prepare()
import tensorflow_datasets as tfds
src = tfds.data_source(b.name + "/" + b.builder_config.name, data_dir={str(tmp_path / "tfds")!r},
                       split="train")
print(json.dumps([len(src), "tensorflow" in sys.modules]))
"""
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
  assert json.loads(out.stdout.strip().splitlines()[-1]) == [20, False]


def test_describe_summarises_a_language():
  summary = describe.describe(registry.make_language(_data()), num_sentences=200, num_bert=20,
                              num_task=100)
  json.dumps(summary)
  losses = summary["optimal_losses"]
  assert set(losses) == {"single_masked", "causal", "bert_masking", "emitter_entropy"}
  assert all(v["stderr"] > 0 for v in losses.values())
  # The parse-aware bound is below what any model of the words alone can reach.
  assert losses["emitter_entropy"]["value"] < losses["single_masked"]["value"]
  assert set(summary["tasks"]) == {"A", "B", "C"}
  assert summary["tasks"]["A"]["majority_accuracy"] >= 1 / summary["tasks"]["A"]["num_classes"]
  assert sum(summary["length_histogram"].values()) == 200
  assert summary["throughput"]["sampling_sentences_per_sec"] > 0


def test_trainer_reads_the_dataset_and_resumes_exactly(tmp_path):
  """`data.source='dataset'`: the trainer's optimum is the split's stored one, and the
  checkpointed data position makes 6 + 6 steps equal 12 straight."""
  c = pretrain.get_config("tiny")
  c.data.source = "dataset"
  c.data.dataset.update(data_dir=str(tmp_path / "tfds"), train=120, validation=24, test=8,
                        task_train=8, task_test=8)
  c.model.update(hidden_size=16, mlp_dim=32)
  # 120 sentences / 16 per batch: the 12 steps cross an epoch boundary (a reshuffle).
  c.train.update(batch_size=16, num_steps=12, log_every=2, eval_every=6, checkpoint_every=6)
  straight = resume_check.assert_resume_is_exact(c, str(tmp_path), stop_after=6)
  val = datasets.load_split(c.data, "validation")
  pooled = (sum(float(val[i]["entropy"].sum()) for i in range(len(val)))
            / sum(len(val[i]["tokens"]) for i in range(len(val))))
  assert straight.eval_metrics["optimal_loss"] == pytest.approx(pooled, rel=1e-5)
