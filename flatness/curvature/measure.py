"""Curvature and sharpness of every checkpoint of a run, with errors that cover the data.

The evaluation data are ``num_batches`` independent batches of ``batch_size``
validation-distribution sentences of the run's language, each with its own
BERT masks. They are drawn from ``seed``, the same for every checkpoint, so two
checkpoints are compared on paired draws (their difference is not masking
noise), and sharded over the device mesh.

The stochastic estimators (trace, trace_enlarged, fisher, ggn, sharpness_avg)
use every batch, with their own probes per batch, and report a standard error
that covers both the probes and the draw of sentences and masks: the spread of
the per-batch estimates over sqrt(num_batches) (`flatness.curvature.hessian.two_level`).
What they estimate is a population quantity, e.g. ``tr E[H_batch]``, the trace
of the expected Hessian of the masked-LM loss over the evaluation distribution.
The deterministic ones (top_eigenvalue, sharpness, sharpness_adaptive, loss)
work on the mean loss over the first ``fixed_batches`` batches and carry no
error. Metrics are written under ``curvature/`` to the run's TensorBoard files
and ``metrics.jsonl``, at the checkpoint's step; a checkpoint whose metrics are
all there already is skipped.

Metric names (all per nat of the MLM loss; parameter units squared for traces):

  trace            tr(H) by the configured estimator (+ _stderr, + per module)
  trace_enlarged   tr(H) of the same function embedded (`flatness.model.enlargement`) into the
                   architecture ``enlarge_to`` (the paper's size comparison, Sec. 4.2)
  top_eigenvalue   largest Hessian eigenvalue (Lanczos)
  fisher           tr(F), labels sampled from the model (+ _stderr)
  gradient_noise   tr of the second moment of per-prediction gradients with the data's sampled
                   labels (+ _stderr, over the same parameters as the trace): predicted equal
                   to tr(H) at the optimum (`flatness.curvature.fisher.gradient_noise_trace`)
  gradient_noise_exact  the same with exact targets: predicted 0 at the optimum
  ggn              tr(Gauss-Newton) (+ _stderr)
  sharpness        worst-case rho-sharpness;  sharpness_adaptive: the ASAM variant
  sharpness_avg    average-case sharpness at sigma (+ _stderr)
  loss             the loss on the fixed batches at that checkpoint
"""
import dataclasses
import functools

import jax
import numpy as np

from flatness.curvature import fisher
from flatness.curvature import hessian as hs
from flatness.curvature import sharpness
from flatness.curvature import spectrum
from flatness.curvature import trace
from flatness.model import enlargement
from flatness.model import presets
from flatness.model import tokens as tok
from flatness.model.objectives import Objective
from flatness.model.transformer import Transformer
from flatness.runtime import config_types
from flatness.runtime import sharding


@dataclasses.dataclass(frozen=True)
class TraceSettings:
  num_probes: int              # per batch
  method: str                  # flatness.curvature.trace.METHODS
  probe: str                   # rademacher | gaussian
  chunk: int                   # probes per compiled pass
  hvp: str                     # flatness.curvature.hessian.HVP_METHODS


@dataclasses.dataclass(frozen=True)
class Iterations:
  num_iters: int


@dataclasses.dataclass(frozen=True)
class Samples:
  num_samples: int             # per batch


@dataclasses.dataclass(frozen=True)
class Probes:
  num_probes: int              # per batch


@dataclasses.dataclass(frozen=True)
class SharpnessSettings:
  rho: float                   # worst-case radius
  steps: int                   # ascent steps of the worst case
  sigma: float                 # average case: std of the Gaussian perturbation
  num_samples: int             # average case: antithetic pairs per batch


@dataclasses.dataclass(frozen=True)
class MeasureConfig:
  """The ``measure`` section (`experiments/configs/measure.py` documents each field)."""
  metrics: tuple
  num_batches: int
  batch_size: int
  fixed_batches: int
  seed: int
  include: str                 # paper | all
  force: bool
  enlarge_to: str
  trace: TraceSettings
  eigen: Iterations
  fisher: Samples
  gradient_noise: Samples
  ggn: Probes
  sharpness: SharpnessSettings

  def __post_init__(self):
    unknown = set(self.metrics) - set(METRICS)
    if unknown:
      raise ValueError(f"measure.metrics: unknown {sorted(unknown)}; choose from {METRICS}")
    if self.include not in ("paper", "all"):
      raise ValueError(f"measure.include: {self.include!r}; choose 'paper' or 'all'")
    if self.num_batches < 1:
      raise ValueError(f"measure.num_batches must be positive, got {self.num_batches}")


def measure_config(section) -> MeasureConfig:
  """``config.measure`` typed (``metrics`` as "a,b" or a sequence becomes a tuple)."""
  if isinstance(section, MeasureConfig):
    return section
  fields = dict(section)
  if "metrics" in fields:
    fields["metrics"] = tuple(metric_names(fields["metrics"]))
  return config_types.from_section(MeasureConfig, fields, "measure")


def eval_batches(objective: Objective, mesh, tokens, lengths, num_batches: int,
                 batch_size: int, seed: int) -> list:
  """``num_batches`` independent batches of masked sentences, sharded over the mesh.

  ``tokens [N, L], lengths [N]``: at least ``num_batches * batch_size`` sentences
  of the evaluation distribution (`experiments.wiring` draws them from the run's
  language, seeded). Batch ``i`` holds sentences ``i * batch_size ...`` and masks
  from ``key(seed * 1000 + i)``: the same batches for every checkpoint.
  """
  if batch_size % mesh.size:
    raise ValueError(f"measure.batch_size ({batch_size}) must be divisible by the "
                     f"{mesh.size} devices")
  if num_batches < 1:
    raise ValueError(f"measure.num_batches must be positive, got {num_batches}")
  if len(lengths) < num_batches * batch_size:
    raise ValueError(f"eval_batches: {len(lengths)} sentences for {num_batches} batches of "
                     f"{batch_size}")
  width = tok.max_words(objective.model.cfg.seq_len)
  prepare = jax.jit(objective.prepare)
  batches = []
  for i in range(num_batches):
    raw = tok.word_batch(tokens, lengths, np.arange(i * batch_size, (i + 1) * batch_size), width)
    prepared = prepare(jax.random.key(seed * 1000 + i), raw)
    # lengths: what the exact targets of gradient_noise_exact need besides the masks.
    prepared = dict(prepared, lengths=raw["lengths"])
    batches.append(sharding.shard_batch(
        {k: np.asarray(v) for k, v in prepared.items() if v is not None}, mesh))
  return batches


@functools.lru_cache(maxsize=8)
def _functions(objective: Objective):
  """(loss_fn, logits_fn) of an objective: one pair of function objects per objective
  (compared by value), so that the estimators' compiled programs, cached per function
  (`flatness.runtime.fn_cache`), serve every run of the same model."""
  def loss_fn(params, batch):
    return objective.loss(params, batch)

  def logits_fn(params, batch):
    return objective.logits(params, batch), batch["weights"]

  return loss_fn, logits_fn


@functools.lru_cache(maxsize=8)
def _one_hot(vocab: int):
  """The sampled labels as targets (one function object per vocabulary, as above)."""
  return lambda b: jax.nn.one_hot(b["labels"], vocab)


class Measurer:
  """The configured metrics of one model family, on one evaluation set; a checkpoint
  evaluator (`flatness.runtime.checkpoint_walk`) writing under ``curvature/``.

  ``exact_targets``: ``(prepared, raw) -> [B, P, V]`` exact conditionals of a prepared
  batch (`data_gen.bert_targets.exact_targets`), needed by ``gradient_noise_exact`` only.
  """
  prefix = "curvature"

  def __init__(self, objective: Objective, cfg, batches, *, exact_targets=None):
    cfg = measure_config(cfg)
    self.objective, self.cfg, self.batches = objective, cfg, batches
    self.model_cfg = objective.model.cfg
    self.fixed = batches[:max(1, cfg.fixed_batches)]
    # A population error needs independent batches; with one batch it is conditional.
    self.error = "population" if len(batches) >= 2 else "conditional"
    self.loss_fn, self.logits_fn = _functions(objective)
    self.include = hs.paper_selection if cfg.include == "paper" else None
    self.large = self._enlarged_loss() if "trace_enlarged" in self.metrics else None
    vocab = self.model_cfg.vocab_size
    self.targets = {"gradient_noise": _one_hot(vocab)}
    if "gradient_noise_exact" in self.metrics:
      if exact_targets is None:
        raise ValueError("measure.metrics: gradient_noise_exact needs the exact targets of "
                         "the run's language (a masked LM on pcfg, hmm or markov)")
      self.targets["gradient_noise_exact"] = lambda b: exact_targets(b, b)
    self.required = self.metrics

  def _enlarged_loss(self):
    """(large config, loss of the architecture ``enlarge_to``), built once so that the
    compiled estimators are reused from checkpoint to checkpoint."""
    target = self.cfg.enlarge_to
    if not target:
      raise ValueError("measure.enlarge_to: trace_enlarged needs a target architecture "
                       "(a preset name, or hidden,layers,heads,mlp)")
    if target in presets.PRESETS:
      fields = presets.preset_fields(target)
    else:
      h, l, n, f = (int(x) for x in str(target).split(","))
      fields = dict(hidden_size=h, num_layers=l, num_heads=n, mlp_dim=f)
    large = dataclasses.replace(self.model_cfg, **fields)
    enlargement.check_compatible(self.model_cfg, large)
    return large, _functions(Objective(Transformer(large), self.objective.spec))[0]

  @property
  def metrics(self) -> list[str]:
    return list(self.cfg.metrics)

  def __call__(self, params, step: int = 0, *, key=None) -> dict:
    """Every configured metric at ``params``; metric i draws its randomness from the i-th
    of 16 keys split from ``key`` (so adding a metric never changes the others), by
    default ``key(measure.seed)`` at every ``step``: checkpoints are compared on paired
    probes."""
    del step
    key = jax.random.key(self.cfg.seed) if key is None else key
    keys = iter(jax.random.split(key, 16))
    out = {}
    for name in self.metrics:
      out.update(self._METRICS[name](self, name, params, next(keys)))
    return out

  # One method per metric: (name, params, key) -> {tag: value}. Sampled estimators get
  # the independent batches and report their error; deterministic ones use the fixed few.

  def _trace(self, name, params, key) -> dict:
    c, loss_fn, point = self.cfg, self.loss_fn, params
    if name == "trace_enlarged":
      large, loss_fn = self.large
      point = enlargement.enlarge(params, self.model_cfg, large)
    # Hutch++ / XTrace work on the mean Hessian over the batches: conditional errors.
    error = self.error if c.trace.method == "hutchinson" else "conditional"
    est = trace.hessian_trace(loss_fn, point, key, num_probes=c.trace.num_probes,
                              method=c.trace.method, probe=c.trace.probe,
                              include=self.include, chunk=c.trace.chunk,
                              batches=self.batches, error=error, hvp=c.trace.hvp)
    if name == "trace":
      return est.as_metrics(name)
    return dict(trace_enlarged=est.value, trace_enlarged_stderr=est.stderr)

  def _top_eigenvalue(self, name, params, key) -> dict:
    top = spectrum.top_eigenvalues(self.loss_fn, params, key, k=1,
                                   num_iters=self.cfg.eigen.num_iters, include=self.include,
                                   batches=self.fixed)
    return {name: top["largest"][0]}

  def _fisher(self, name, params, key) -> dict:
    est = fisher.fisher_trace(self.logits_fn, params, key,
                              num_samples=self.cfg.fisher.num_samples, batches=self.batches,
                              error=self.error)
    return {name: est.value, f"{name}_stderr": est.stderr}

  def _gradient_noise(self, name, params, key) -> dict:
    n = self.cfg.gradient_noise.num_samples
    est = fisher.gradient_noise_trace(self.logits_fn, params, key,
                                      targets_fn=self.targets[name], include=self.include,
                                      num_samples=n, chunk=n, batches=self.batches,
                                      error=self.error)
    return {name: est.value, f"{name}_stderr": est.stderr}

  def _ggn(self, name, params, key) -> dict:
    est = fisher.ggn_trace(self.logits_fn, params, key, num_probes=self.cfg.ggn.num_probes,
                           batches=self.batches, error=self.error)
    return {name: est.value, f"{name}_stderr": est.stderr}

  def _sharpness(self, name, params, key) -> dict:
    c = self.cfg.sharpness
    return {name: sharpness.worst_case_sharpness(
        self.loss_fn, params, key, c.rho, steps=c.steps,
        adaptive=name == "sharpness_adaptive", include=self.include, batches=self.fixed)}

  def _sharpness_avg(self, name, params, key) -> dict:
    c = self.cfg.sharpness
    v, se = sharpness.average_sharpness(self.loss_fn, params, key, c.sigma,
                                        num_samples=c.num_samples, include=self.include,
                                        batches=self.batches, error=self.error)
    return {name: v, f"{name}_stderr": se}

  def _loss(self, name, params, key) -> dict:
    del key
    return {name: sharpness.MeanLoss(self.loss_fn, self.fixed).value(params)}

  _METRICS = {"trace": _trace, "trace_enlarged": _trace, "top_eigenvalue": _top_eigenvalue,
              "fisher": _fisher, "gradient_noise": _gradient_noise,
              "gradient_noise_exact": _gradient_noise, "ggn": _ggn, "sharpness": _sharpness,
              "sharpness_adaptive": _sharpness, "sharpness_avg": _sharpness_avg,
              "loss": _loss}


METRICS = tuple(Measurer._METRICS)   # pylint: disable=protected-access


def metric_names(metrics) -> list[str]:
  """``measure.metrics`` ("a,b" or a sequence) as a list of names."""
  if isinstance(metrics, str):
    return [x.strip() for x in metrics.split(",") if x.strip()]
  return list(metrics)
