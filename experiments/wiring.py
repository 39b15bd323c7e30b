"""From configs to objects: the one place where a config meets `data_gen` and the library.

The library (`flatness`) takes arrays, iterators and typed sections and returns
numbers; it never builds a language. Every entry point (pretrain, measure,
downstream, run, quickstart) goes through here:

  config.data -> `data_gen.registry.make_language`   the language
  config      -> `setup`            model, objective, optimizer, mesh, exact targets
              -> `make_source`      training batches (a language stream or a TFDS dataset)
              -> `make_validation`  sentences with their exact conditionals
              -> `adversary`        the paper's adversarial loss transform, its labels
              -> `build`, `train`   all of the above; pre-training with them
  a run       -> `trained_run`      its recorded config, language and model
              -> `EVALUATORS`       the registry of checkpoint evaluators: ``loss`` (the
                                    exact loss gap), ``curvature`` (`flatness.curvature.
                                    measure`), ``downstream`` (probes, fine-tuning, lookup)
              -> `evaluate_run`     one pass over its checkpoints with some of them

A run's record (``config.json``) is read on top of `experiments/configs/pretrain.py`'s
defaults, so that a run written before a field existed reads with that field's
default: the defaults live in the config files and nowhere else.
"""
import dataclasses
import math
from typing import Any, Callable, Mapping

import ml_collections
import numpy as np

from data_gen import bert_targets
from data_gen import registry
from data_gen.stream import LanguageStream
from experiments.configs import pretrain as pretrain_config
from flatness.curvature import measure
from flatness.model import tokens as tok
from flatness.model.objectives import TARGETS, Objective
from flatness.model.transformer import Transformer
from flatness.runtime import checkpoint_walk
from flatness.runtime import config_types
from flatness.runtime import sharding
from flatness.training import adversarial
from flatness.training import evaluation
from flatness.training import input_pipeline
from flatness.training import optimizers
from flatness.training import run_config
from flatness.training import trainer
from flatness.transfer import downstream

# Seeds of the fixed draws (with the configured seed): validation, measurement, tasks.
VALIDATION_STREAM, MEASURE_STREAM, TASK_STREAM = 2**31 - 1, 7919, 15485863


def training_targets(kind: str, language, objective: Objective) -> Callable | None:
  """``config.targets`` -> the step's target function (None: the sampled words)."""
  if kind not in TARGETS:
    raise ValueError(f"targets: unknown value {kind!r}; choose one of {TARGETS}")
  if kind == "sampled":
    return None
  try:
    return bert_targets.exact_targets(language, objective)
  except ValueError as e:
    raise ValueError(f"targets='exact': {e}") from e


def setup(config, *, language, mesh=None, training: bool = True) -> trainer.Setup:
  """Model, objective, optimizer and mesh of ``config`` for ``language``.

  ``training`` checks the training batch against the device count too; evaluation
  (another machine, another device count) skips that check.
  """
  mesh = mesh or sharding.make_mesh()
  if training:
    run_config.check_train(config, mesh.size)
  model_cfg = run_config.model_config(config.model, language.vocab_size, language.max_length)
  objective = Objective(Transformer(model_cfg), run_config.masking_spec(
      config.masking, max_words=tok.max_words(model_cfg.seq_len)))
  # Fails here, before anything is written, if the language or objective has no exact targets.
  targets = training_targets(config.targets, language, objective)
  steps = int(config.train.num_steps)
  return trainer.Setup(model_cfg, objective, mesh,
                       optimizers.make_optimizer(config.optimizer, steps),
                       optimizers.make_schedule(config.optimizer, steps), targets=targets)


def make_source(config, s: trainer.Setup, language, labels=()) -> input_pipeline.BatchSource:
  """The training batch source named by ``config.data.source``."""
  kind, batch_size, seed = config.data.source, int(config.train.batch_size), int(config.seed)
  if kind == "stream":
    return LanguageStream(language, batch_size, seed=seed, labels=labels)
  if kind == "dataset":
    if labels:
      raise ValueError(f"data.source='dataset' carries no downstream labels, which "
                       f"{list(labels)} need (adversarial.lam != 0); use data.source='stream'")
    from data_gen import datasets  # pylint: disable=g-import-not-at-top  (needs TFDS)
    return input_pipeline.ArraySource(datasets.load_split(config.data, "train"), batch_size,
                                      seed=seed, width=tok.max_words(s.model_cfg.seq_len))
  raise ValueError(f"data.source: unknown source {kind!r}; choose 'stream' or 'dataset'")


def validation_set(language, num: int, seed: int, causal: bool = False
                   ) -> evaluation.ValidationSet:
  """``num`` sentences of ``language`` with their exact conditionals (causal: their exact
  log-probabilities), drawn from ``default_rng([seed, VALIDATION_STREAM])``."""
  sents = language.sample(np.random.default_rng([seed, VALIDATION_STREAM]), num)
  if causal:
    return evaluation.ValidationSet(sents.tokens, sents.lengths,
                                    log_prob=language.log_prob(sents.tokens, sents.lengths))
  cond = language.conditionals(sents.tokens, sents.lengths).astype(np.float32)
  return evaluation.ValidationSet(sents.tokens, sents.lengths, conditionals=cond)


def make_validation(config, s: trainer.Setup, language) -> evaluation.ValidationSet:
  """The validation set of ``config``: ``data.num_validation`` sentences of the language,
  or the dataset's validation split."""
  if config.data.source == "dataset" and not s.model_cfg.causal:
    from data_gen import datasets  # pylint: disable=g-import-not-at-top  (needs TFDS)
    return evaluation.ValidationSet.from_records(datasets.load_split(config.data, "validation"),
                                                 tok.max_words(s.model_cfg.seq_len))
  return validation_set(language, int(config.data.num_validation), int(config.seed),
                        causal=s.model_cfg.causal)


def adversary(config, language, objective: Objective):
  """(loss_transform, label tasks) of ``config.adversarial``; (None, ()) when lam = 0."""
  adv = config.adversarial
  if float(adv.lam) == 0.0:
    return None, ()
  tasks = language.tasks()
  if adv.task not in tasks:
    raise ValueError(f"adversarial.task: {adv.task!r} is not a task of this language; it has "
                     f"{sorted(tasks) or 'none'}")
  cfg = config_types.from_section(adversarial.AdversarialConfig,
                                  dict(adv, num_classes=tasks[adv.task].num_classes),
                                  "adversarial")
  return adversarial.make_loss_transform(objective, cfg), (adv.task,)


@dataclasses.dataclass
class Built:
  """What a config builds: its language and the model, objective, optimizer and mesh."""
  config: ml_collections.ConfigDict
  language: Any
  setup: trainer.Setup

  def source(self, labels=()) -> input_pipeline.BatchSource:
    return make_source(self.config, self.setup, self.language, labels)

  def validation(self) -> evaluation.ValidationSet:
    return make_validation(self.config, self.setup, self.language)


def build(config, *, mesh=None, language=None, training: bool = True) -> Built:
  """The language of ``config.data`` (or ``language``) and the `setup` for it."""
  language = language or registry.make_language(config.data)
  return Built(config, language, setup(config, language=language, mesh=mesh,
                                       training=training))


def train(config, workdir: str, *, mesh=None, built: Built | None = None,
          source: input_pipeline.BatchSource | None = None,
          stop_after: int | None = None) -> trainer.TrainResult:
  """Builds everything ``config`` names (or takes ``built``) and pre-trains in ``workdir``,
  resuming; ``source`` replaces the configured batch source."""
  b = built or build(config, mesh=mesh)
  transform, labels = adversary(config, b.language, b.setup.objective)
  return trainer.train(config, workdir, setup=b.setup, source=source or b.source(labels),
                       validation=b.validation(), loss_transform=transform,
                       stop_after=stop_after)


# ---- Evaluation of a run's checkpoints.

def _merged(defaults: dict, saved: Mapping) -> dict:
  out = dict(defaults)
  for k, v in saved.items():
    out[k] = _merged(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), dict) else v
  return out


def run_config_of(workdir: str) -> ml_collections.ConfigDict:
  """The config a training run started with, on top of today's defaults."""
  saved = trainer.load_run_config(workdir).to_dict()
  return ml_collections.ConfigDict(_merged(pretrain_config.base().to_dict(), saved))


def trained_run(workdir: str, *, mesh=None) -> Built:
  """A training run rebuilt from its record, for evaluation (on any device count)."""
  return build(run_config_of(workdir), mesh=mesh, training=False)


def eval_sentences(language, num: int, seed: int):
  """``num`` sentences of the validation distribution for the curvature metrics."""
  sents = language.sample(np.random.default_rng([seed, MEASURE_STREAM]), num)
  return sents.tokens, sents.lengths


def task_data(language, tasks, num_pool: int, num_test: int,
              seed: int) -> list[downstream.TaskData]:
  """Labelled pool and test sentences for ``tasks`` (all of the language's when empty).

  One draw of ``num_pool + num_test`` sentences (a function of ``seed`` only)
  serves every task; the arrays are shared between the tasks.
  """
  known = language.tasks()
  if not known:
    raise ValueError(f"{type(language).__name__} defines no downstream task; use a pcfg, hmm "
                     "or teacher language")
  names = ([t.strip() for t in tasks.split(",") if t.strip()] if isinstance(tasks, str)
           else list(tasks)) or sorted(known)
  unknown = [t for t in names if t not in known]
  if unknown:
    raise ValueError(f"downstream.tasks: {unknown} are not tasks of this language; it has "
                     f"{sorted(known)}")
  sample = getattr(language, "sample_downstream", language.sample)
  sents = sample(np.random.default_rng([seed, TASK_STREAM]), num_pool + num_test)
  pool = (sents.tokens[:num_pool], sents.lengths[:num_pool])
  test = (sents.tokens[num_pool:], sents.lengths[num_pool:])
  out = []
  for name in names:
    labels = np.asarray(language.task_labels(name, sents), np.int32)
    out.append(downstream.TaskData(name, known[name].num_classes, pool + (labels[:num_pool],),
                                   test + (labels[num_pool:],)))
  return out


def lookup_features(language, tokens, lengths, width: int) -> np.ndarray:
  """float32 [n, width * V]: the true single-masked conditionals, zero past each length."""
  cond = np.asarray(language.conditionals(tokens[:, :width], np.minimum(lengths, width)),
                    np.float32)
  cond = np.pad(cond, ((0, 0), (0, width - cond.shape[1]), (0, 0)))
  return cond.reshape(len(cond), -1)


def loss_evaluator(run: Built, cfg=None) -> evaluation.LossEvaluator:
  """The exact loss gap on the run's own validation set (what training writes under
  ``eval/``), so that every checkpoint has one."""
  del cfg
  s = run.setup
  return evaluation.LossEvaluator(s.objective, run.validation(), mesh=s.mesh,
                                  batch_size=int(run.config.train.eval_batch_size))


def curvature_evaluator(run: Built, cfg) -> measure.Measurer:
  """``cfg``: a `experiments/configs/measure.py` section."""
  cfg = measure.measure_config(cfg)
  s, n, bs = run.setup, cfg.num_batches, cfg.batch_size
  tokens, lengths = eval_sentences(run.language, n * bs, cfg.seed)
  exact = None
  if "gradient_noise_exact" in cfg.metrics:
    exact = bert_targets.exact_targets(run.language, s.objective)
  batches = measure.eval_batches(s.objective, s.mesh, tokens, lengths, n, bs, cfg.seed)
  return measure.Measurer(s.objective, cfg, batches, exact_targets=exact)


def downstream_evaluator(run: Built, cfg) -> downstream.Evaluator:
  """``cfg``: a `experiments/configs/downstream.py` section."""
  cfg, s = downstream.downstream_config(cfg), run.setup
  tasks = task_data(run.language, cfg.tasks, cfg.num_pool, cfg.num_test, cfg.seed)
  x = None
  if cfg.lookup:
    width, t = tok.max_words(s.model_cfg.seq_len), tasks[0]
    x = tuple(lookup_features(run.language, tokens, lengths, width)
              for tokens, lengths in (t.pool[:2], t.test[:2]))
  return downstream.Evaluator(s.objective, cfg, tasks, mesh=s.mesh, lookup_features=x)


# name -> (the experiment config's section that configures it, builder(run, section)).
EVALUATORS: dict[str, tuple[str | None, Callable]] = {
    "loss": (None, loss_evaluator),
    "curvature": ("measure", curvature_evaluator),
    "downstream": ("downstream", downstream_evaluator),
}


def register_evaluator(name: str, section: str | None, builder: Callable) -> None:
  """Adds an evaluator: ``builder(run: Built, config[section]) -> evaluator`` (an
  object with ``prefix``, ``required`` and ``__call__(params, step)``)."""
  EVALUATORS[name] = (section, builder)


def make_evaluator(name: str, run: Built, config):
  """Evaluator ``name`` of the registry, configured by its section of ``config``."""
  if name not in EVALUATORS:
    raise ValueError(f"evals: unknown evaluator {name!r}; choose from {sorted(EVALUATORS)}")
  section, builder = EVALUATORS[name]
  return builder(run, config[section] if section else None)


def evaluate_run(workdir: str, config, evals, *, steps=None, mesh=None, force=False,
                 options: Mapping[str, Mapping[str, Any]] | None = None) -> dict[int, dict]:
  """One pass over the run's checkpoints with the evaluators ``evals`` (names, in order).

  ``config`` holds each evaluator's section (an experiment config, or a measure /
  downstream config under its section name); ``options[name]`` gives that evaluator's
  `checkpoint_walk.Entry` ``steps`` / ``when``.
  """
  run = trained_run(workdir, mesh=mesh)
  options = options or {}
  entries = [checkpoint_walk.Entry(make_evaluator(name, run, config), **options.get(name, {}))
             for name in evals]
  return checkpoint_walk.walk(workdir, run.setup.abstract_params(), entries, steps=steps,
                              force=force)


def within(tolerance: float | None) -> Callable[[int, dict], bool] | None:
  """An Entry's ``when``: checkpoints whose ``eval/loss_gap`` is at most ``tolerance``."""
  if tolerance is None:
    return None
  return lambda step, row: row.get("eval/loss_gap", math.inf) <= tolerance


def measure_run(workdir: str, cfg, *, steps=None, mesh=None) -> dict[int, dict]:
  """The curvature metrics of ``cfg`` (a measure config) at every checkpoint of a run."""
  return evaluate_run(workdir, {"measure": cfg}, ["curvature"], steps=steps, mesh=mesh,
                      force=bool(cfg.force))


def downstream_run(workdir: str, cfg, *, steps=None, mesh=None) -> dict[int, dict]:
  """The downstream metrics of ``cfg`` (a downstream config) at every checkpoint of a run."""
  return evaluate_run(workdir, {"downstream": cfg}, ["downstream"], steps=steps, mesh=mesh,
                      force=bool(cfg.force))
