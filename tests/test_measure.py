"""Measurement: the same numbers on 8 devices as on 1, and the run-level driver."""
import os

import jax
import numpy as np
import pytest

from experiments import wiring
from experiments.configs import measure as measure_configs
from experiments.configs import pretrain
from flatness.curvature import measure
from flatness.runtime import metric_writers
from flatness.runtime import sharding


def _run_config():
  c = pretrain.get_config("tiny")
  c.model.update(hidden_size=8, mlp_dim=16, num_layers=1)
  c.data.num_validation = 16
  c.train.update(batch_size=16, num_steps=6, log_every=3, eval_every=6, checkpoint_every=3)
  return c


def _measure_config(metrics):
  c = measure_configs.get_config()
  c.update(metrics=metrics, num_batches=2, batch_size=16, fixed_batches=2)
  c.trace.update(num_probes=2, chunk=2)
  c.eigen.num_iters = 6
  c.fisher.num_samples = 2
  c.ggn.num_probes = 2
  c.sharpness.update(steps=2, num_samples=2)
  return c


def test_every_metric_is_the_same_on_8_devices_and_on_1():
  # trace_enlarged is hessian_trace on another model; test_experiments runs it on 8 devices.
  cfg = _measure_config(",".join(m for m in measure.METRICS if m != "trace_enlarged"))
  results = []
  for n in (8, 1):
    built = wiring.build(_run_config(), mesh=sharding.make_mesh(n))
    params = built.setup.create_state(jax.random.key(0)).params
    measurer = wiring.curvature_evaluator(built, cfg)
    assert measurer.batches[0]["ids"].sharding.num_devices == n
    results.append(measurer(params, key=jax.random.key(1)))
  assert set(results[0]) == set(results[1])
  assert {"trace", "trace_stderr", "top_eigenvalue", "fisher", "ggn", "sharpness",
          "sharpness_adaptive", "sharpness_avg", "loss"} <= set(results[0])
  for k in results[0]:
    np.testing.assert_allclose(results[0][k], results[1][k], rtol=2e-3, atol=1e-6, err_msg=k)


def test_measure_run_writes_each_checkpoint_once(workdir):
  wiring.train(_run_config(), workdir)
  cfg = _measure_config("trace,loss")
  out = wiring.measure_run(workdir, cfg)
  assert sorted(out) == [3, 6]
  assert wiring.measure_run(workdir, cfg) == {}          # already measured: skipped
  recs = metric_writers.read_jsonl(os.path.join(workdir, metric_writers.JSONL))
  measured = [r["step"] for r in recs if "curvature/trace" in r]
  assert measured == [3, 6]
  assert all(np.isfinite(r["curvature/trace"]) for r in recs if "curvature/trace" in r)
  with pytest.raises(ValueError, match="measure.metrics"):
    wiring.measure_run(workdir, _measure_config("trace,flatness"))
  with pytest.raises(FileNotFoundError, match="not a training run"):
    wiring.measure_run(os.path.dirname(workdir), cfg)
