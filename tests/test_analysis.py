"""The analysis recovers planted correlations, and planted absences, from metric files."""
import json
import os

import numpy as np
import pytest

from flatness import analysis
from flatness import metric_writers
from flatness import report


def _write_run(root, name, num_params, traces, accs, gaps=None):
  d = os.path.join(root, name)
  os.makedirs(d)
  with open(os.path.join(d, analysis.RUN_INFO), "w") as f:
    json.dump(dict(name=name, experiment="planted", num_params=num_params), f)
  w = metric_writers.MetricWriter(d)
  for i, (t, a) in enumerate(zip(traces, accs)):
    step = 100 * (i + 1)
    w.write_scalars(step, {"eval/loss_gap": 0.01 if gaps is None else gaps[i]})
    w.write_scalars(step, {"curvature/trace": t, "curvature/trace_stderr": 0.1})
    w.write_scalars(step, {"downstream/A/probe_acc": a, "downstream/A/lookup_acc": 0.5})
  w.close()
  return d


def _scope(corrs, scope):
  return next(c for c in corrs if c.scope == scope)


def test_recovers_a_planted_negative_correlation_and_writes_the_report(tmp_path):
  rng = np.random.default_rng(0)
  dirs = []
  for i, size in enumerate((1000, 2000, 4000)):
    t = rng.uniform(5, 20, 12)
    dirs.append(_write_run(tmp_path, f"m{i}", size, t, 0.9 - 0.01 * t + rng.normal(0, 0.005, 12)))
  # Checkpoints far from the optimum are excluded by the tolerance.
  dirs.append(_write_run(tmp_path, "far", 1000, [1.0] * 4, [0.99] * 4, gaps=[0.5] * 4))
  rows = analysis.gather(dirs)
  corrs = analysis.correlate(rows, tolerance=0.05, num_bootstrap=300)
  everything = _scope(corrs, "all")
  assert everything.n == 36
  assert everything.spearman < -0.9 and everything.spearman_hi < -0.8
  assert everything.kendall < -0.7
  assert _scope(corrs, "partial_size").spearman_hi < -0.8
  assert _scope(corrs, "within_size").spearman_hi < -0.8
  assert all(c.spearman < -0.8 for c in corrs if c.scope.startswith("size="))
  paths = report.write(rows, corrs, str(tmp_path / "report"), tolerance=0.05)
  for key in ("table_csv", "table_md", "correlations_csv", "report", "loss_gap", "trace",
              "accuracy", "accuracy_vs_trace"):
    assert os.path.getsize(paths[key]) > 0, key
  assert open(paths["table_csv"]).read().count("\n") == len(rows) + 1


def test_recovers_a_planted_absence_of_correlation(tmp_path):
  rng = np.random.default_rng(1)
  d = _write_run(tmp_path, "m", 1000, rng.uniform(5, 20, 40), rng.uniform(0.5, 0.9, 40))
  c = _scope(analysis.correlate(analysis.gather([d]), num_bootstrap=300), "all")
  assert c.spearman_lo < 0 < c.spearman_hi


def test_partial_correlation_removes_a_size_confound(tmp_path):
  """Trace and accuracy both depend on size only: a strong raw correlation, none within size."""
  rng = np.random.default_rng(2)
  dirs = [_write_run(tmp_path, f"m{i}", size, 30 / (i + 1) + rng.normal(0, 0.5, 15),
                     0.5 + 0.1 * i + rng.normal(0, 0.01, 15))
          for i, size in enumerate((1000, 2000, 4000))]
  corrs = analysis.correlate(analysis.gather(dirs), num_bootstrap=300)
  assert _scope(corrs, "all").spearman < -0.7
  partial, within = _scope(corrs, "partial_size"), _scope(corrs, "within_size")
  assert partial.spearman_lo < 0 < partial.spearman_hi
  assert within.spearman_lo < 0 < within.spearman_hi
  assert abs(partial.spearman) < 0.35


def test_missing_metrics_file_is_a_clear_error(tmp_path):
  with pytest.raises(FileNotFoundError, match="metrics.jsonl"):
    analysis.read_run(str(tmp_path))
