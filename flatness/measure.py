"""Curvature and sharpness of every checkpoint of a run, on a fixed evaluation set.

The evaluation set is ``num_sentences`` validation sentences of the run's
language with BERT masks drawn once from ``seed`` (the same for every
checkpoint, so differences between checkpoints are not masking noise), split
into batches sharded over the device mesh. Metrics are written under
``curvature/`` to the run's TensorBoard files and ``metrics.jsonl``, at the
checkpoint's step; a checkpoint whose metrics are all there already is skipped.

Metric names (all per nat of the MLM loss; parameter units squared for traces):

  trace            tr(H) by the configured estimator (+ _stderr, + per module)
  trace_enlarged   tr(H) of the same function embedded (`flatness.enlargement`) into the
                   architecture ``enlarge_to`` (the paper's size comparison, Sec. 4.2)
  top_eigenvalue   largest Hessian eigenvalue (Lanczos)
  fisher           tr(F), labels sampled from the model (+ _stderr)
  ggn              tr(Gauss-Newton) (+ _stderr)
  sharpness        worst-case rho-sharpness;  sharpness_adaptive: the ASAM variant
  sharpness_avg    average-case sharpness at sigma (+ _stderr)
  loss             the loss on the evaluation set at that checkpoint
"""
import dataclasses

import jax
import numpy as np

from flatness import checkpoint_walk
from flatness import enlargement
from flatness import fisher
from flatness import hessian as hs
from flatness import presets
from flatness import sharding
from flatness import sharpness
from flatness import spectrum
from flatness import trace
from flatness import trainer
from flatness.model import Transformer
from flatness.objectives import Objective

METRICS = ("trace", "trace_enlarged", "top_eigenvalue", "fisher", "ggn", "sharpness",
           "sharpness_adaptive", "sharpness_avg", "loss")


def eval_batches(setup: trainer.Setup, num_sentences: int, batch_size: int, seed: int) -> list:
  """Fixed masked batches of validation sentences, sharded over the mesh."""
  if batch_size % setup.mesh.size:
    raise ValueError(f"measure.batch_size ({batch_size}) must be divisible by the "
                     f"{setup.mesh.size} devices")
  sents = setup.language.sample(np.random.default_rng([seed, 7919]), num_sentences)
  width = setup.model_cfg.seq_len - 2
  batches = []
  prepare = jax.jit(setup.objective.prepare)
  rows = sharding.process_rows(batch_size)
  for i, start in enumerate(range(0, num_sentences - batch_size + 1, batch_size)):
    raw = dict(tokens=sents.tokens[start:start + batch_size, :width].astype(np.int32),
               lengths=np.minimum(sents.lengths[start:start + batch_size], width).astype(np.int32))
    prepared = prepare(jax.random.key(seed * 1000 + i), raw)
    local = {k: np.asarray(v)[rows] for k, v in prepared.items() if v is not None}
    batches.append(sharding.global_batch(local, setup.mesh))
  if not batches:
    raise ValueError(f"measure.num_sentences ({num_sentences}) is smaller than one batch "
                     f"({batch_size})")
  return batches


class Measurer:
  """The configured metrics of one model family, on one evaluation set."""

  def __init__(self, setup: trainer.Setup, cfg, batches):
    self.setup, self.cfg, self.batches = setup, cfg, batches
    obj = setup.objective
    self.loss_fn = lambda params, batch: obj.loss(params, batch)
    self.logits_fn = lambda params, batch: (obj.logits(params, batch), batch["weights"])
    self.include = hs.paper_selection if cfg.get("include", "paper") == "paper" else None
    unknown = set(self.metrics) - set(METRICS)
    if unknown:
      raise ValueError(f"measure.metrics: unknown {sorted(unknown)}; choose from {METRICS}")
    self.large = self._enlarged_loss() if "trace_enlarged" in self.metrics else None

  def _enlarged_loss(self):
    """(large config, loss of the architecture ``enlarge_to``), built once so that the
    compiled estimators are reused from checkpoint to checkpoint."""
    target = self.cfg.get("enlarge_to", "")
    if not target:
      raise ValueError("measure.enlarge_to: trace_enlarged needs a target architecture "
                       "(a preset name, or hidden,layers,heads,mlp)")
    if target in presets.PRESETS:
      fields = presets.preset_fields(target)
    else:
      h, l, n, f = (int(x) for x in str(target).split(","))
      fields = dict(hidden_size=h, num_layers=l, num_heads=n, mlp_dim=f)
    large = dataclasses.replace(self.setup.model_cfg, **fields)
    enlargement.check_compatible(self.setup.model_cfg, large)
    obj = Objective(Transformer(large), self.setup.objective.spec)
    return large, lambda p, batch: obj.loss(p, batch)

  @property
  def metrics(self) -> list[str]:
    m = self.cfg.metrics
    return [x.strip() for x in m.split(",")] if isinstance(m, str) else list(m)

  def __call__(self, params, key) -> dict:
    c, out = self.cfg, {}
    keys = iter(jax.random.split(key, 16))
    common = dict(batches=self.batches)
    for name in self.metrics:
      k = next(keys)
      if name == "trace":
        est = trace.hessian_trace(self.loss_fn, params, k, num_probes=c.trace.num_probes,
                                  method=c.trace.method, probe=c.trace.probe,
                                  include=self.include, chunk=c.trace.chunk, **common)
        out.update(est.as_metrics("trace"))
      elif name == "trace_enlarged":
        large, loss_fn = self.large
        big = enlargement.enlarge(params, self.setup.model_cfg, large)
        est = trace.hessian_trace(loss_fn, big, k, num_probes=c.trace.num_probes,
                                  method=c.trace.method, probe=c.trace.probe,
                                  include=self.include, chunk=c.trace.chunk, **common)
        out.update(trace_enlarged=est.value, trace_enlarged_stderr=est.stderr)
      elif name == "top_eigenvalue":
        out["top_eigenvalue"] = spectrum.top_eigenvalues(
            self.loss_fn, params, k, k=1, num_iters=c.eigen.num_iters, include=self.include,
            **common)["largest"][0]
      elif name == "fisher":
        est = fisher.fisher_trace(self.logits_fn, params, k, num_samples=c.fisher.num_samples,
                                  **common)
        out.update(fisher=est.value, fisher_stderr=est.stderr)
      elif name == "ggn":
        est = fisher.ggn_trace(self.logits_fn, params, k, num_probes=c.ggn.num_probes, **common)
        out.update(ggn=est.value, ggn_stderr=est.stderr)
      elif name in ("sharpness", "sharpness_adaptive"):
        out[name] = sharpness.worst_case_sharpness(
            self.loss_fn, params, k, c.sharpness.rho, steps=c.sharpness.steps,
            adaptive=name == "sharpness_adaptive", include=self.include, **common)
      elif name == "sharpness_avg":
        v, se = sharpness.average_sharpness(self.loss_fn, params, k, c.sharpness.sigma,
                                            num_samples=c.sharpness.num_samples,
                                            include=self.include, **common)
        out.update(sharpness_avg=v, sharpness_avg_stderr=se)
      elif name == "loss":
        out["loss"] = sharpness.MeanLoss(self.loss_fn, self.batches).value(params)
    return out


def measure_run(workdir: str, cfg, *, steps=None, mesh=None) -> dict[int, dict]:
  """Measures every checkpoint of a run (or ``steps``); returns {step: metrics}."""
  def make(setup):
    measurer = Measurer(setup, cfg, eval_batches(setup, cfg.num_sentences, cfg.batch_size,
                                                 cfg.seed))
    return measurer.metrics, lambda params, step: measurer(params, jax.random.key(cfg.seed))
  return checkpoint_walk.walk(workdir, "curvature", make, steps=steps,
                              force=cfg.get("force", False), mesh=mesh)
