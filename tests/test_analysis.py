"""The analysis recovers planted correlations, planted confounds and planted effects."""
import json
import logging
import os

import numpy as np
import pytest
from scipy import stats

from flatness.analysis import correlation as analysis
from flatness.analysis import report
from flatness.runtime import metric_writers


def _write_run(root, name, num_params, traces, accs, gaps=None, **info):
  d = os.path.join(root, name)
  os.makedirs(d)
  with open(os.path.join(d, analysis.RUN_INFO), "w") as f:
    json.dump(dict(name=name, experiment="planted", num_params=num_params, **info), f)
  w = metric_writers.MetricWriter(d)
  for i, (t, a) in enumerate(zip(traces, accs)):
    step = 100 * (i + 1)
    w.write_scalars(step, {"eval/loss_gap": 0.01 if gaps is None else gaps[i]})
    w.write_scalars(step, {"curvature/trace": t, "curvature/trace_stderr": 0.1})
    w.write_scalars(step, {"downstream/A/probe_acc": a, "downstream/A/lookup_acc": 0.5})
  w.close()
  return d


def _rows(run, traces, accs, gaps, *, num_params=1000, **extra):
  """In-memory rows of one run (what `analysis.gather` returns), steps 100, 200, ..."""
  return [dict(run=run, experiment="planted", group=run, seed=0, num_params=num_params,
               step=100 * (i + 1), **{"curvature/trace": t, "downstream/A/probe_acc": a,
                                      "eval/loss_gap": g}, **extra)
          for i, (t, a, g) in enumerate(zip(traces, accs, gaps))]


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
  assert everything.n == 36 and everything.n_runs == 3
  assert everything.interval == "bootstrap over 3 runs"
  assert everything.spearman < -0.9 and everything.spearman_hi < -0.8
  assert everything.kendall < -0.7
  assert _scope(corrs, "partial_size").spearman_hi < -0.8
  assert _scope(corrs, "within_size").spearman_hi < -0.8
  assert _scope(corrs, "partial_gap_size").spearman < -0.8
  assert all(c.spearman < -0.8 for c in corrs if c.scope.startswith("size="))
  # One run per size: no interval within a size.
  assert all(np.isnan(c.spearman_lo) for c in corrs if c.scope.startswith("size="))
  paths = report.write(rows, corrs, str(tmp_path / "report"), tolerance=0.05)
  for key in ("table_csv", "table_md", "correlations_csv", "paired_effects_csv", "report",
              "loss_gap", "trace", "accuracy", "accuracy_vs_trace"):
    assert os.path.getsize(paths[key]) > 0, key
  assert open(paths["table_csv"]).read().count("\n") == len(rows) + 1
  text = open(paths["report"]).read()
  for heading in ("## Correlations", "## Paired effects", "## Across pre-training seeds",
                  "bootstrap over runs"):
    assert heading in text


def test_recovers_a_planted_absence_of_correlation():
  rng = np.random.default_rng(1)
  rows = [r for i in range(8) for r in _rows(f"m{i}", rng.uniform(5, 20, 8),
                                             rng.uniform(0.5, 0.9, 8), [0.01] * 8)]
  c = _scope(analysis.correlate(rows, num_bootstrap=300), "all")
  assert c.n_runs == 8
  assert c.spearman_lo < 0 < c.spearman_hi


def test_partial_correlation_removes_a_size_confound():
  """Trace and accuracy both depend on size only: a strong raw correlation, none within size.

  Three runs per size; over 60 seeds of this design the run-bootstrap intervals covered 0
  in 97% of draws (80% with one run per size: few clusters under-cover).
  """
  rng = np.random.default_rng(0)
  rows = [r for i, size in enumerate((1000, 2000, 4000)) for s in range(3)
          for r in _rows(f"m{i}_{s}", 30 / (i + 1) + rng.normal(0, 0.5, 15),
                         0.5 + 0.1 * i + rng.normal(0, 0.01, 15), [0.01] * 15, num_params=size)]
  corrs = analysis.correlate(rows, num_bootstrap=300)
  assert _scope(corrs, "all").spearman < -0.7
  partial, within = _scope(corrs, "partial_size"), _scope(corrs, "within_size")
  assert partial.spearman_lo < 0 < partial.spearman_hi
  assert within.spearman_lo < 0 < within.spearman_hi
  assert abs(partial.spearman) < 0.35


def _gap_confounded(rng, num_runs=10, num_ckpts=8):
  """Trace rises and accuracy falls with the loss gap; given the gap they are independent."""
  rows = []
  for i in range(num_runs):
    gap = rng.uniform(0.002, 0.01) + 0.05 * np.exp(-np.arange(num_ckpts) / rng.uniform(2, 4))
    rows += _rows(f"r{i}", 2 + 100 * gap + rng.normal(0, 0.3, num_ckpts),
                  0.9 - 3 * gap + rng.normal(0, 0.01, num_ckpts), gap)
  return rows


def test_partialling_out_the_loss_gap_removes_a_planted_gap_confound():
  corrs = analysis.correlate(_gap_confounded(np.random.default_rng(3)), tolerance=None,
                             num_bootstrap=300)
  everything, partial = _scope(corrs, "all"), _scope(corrs, "partial_gap")
  assert everything.spearman < -0.7 and everything.spearman_hi < -0.5
  assert abs(partial.spearman) < 0.25
  assert partial.spearman_lo < 0 < partial.spearman_hi
  assert partial.n == everything.n == 80 and partial.n_runs == 10
  assert not any(c.scope.startswith(("partial_size", "size=")) for c in corrs)   # one size


def test_one_run_gets_no_interval_and_says_why():
  rng = np.random.default_rng(4)
  t = rng.uniform(5, 20, 30)
  corrs = analysis.correlate(_rows("only", t, 0.9 - 0.01 * t, [0.01] * 30), num_bootstrap=100)
  for c in corrs:
    assert c.n_runs == 1 and np.isnan(c.spearman_lo) and np.isnan(c.spearman_hi)
    assert c.interval.startswith("none: 1 run") and "autocorrelated" in c.interval
  assert _scope(corrs, "all").spearman < -0.99   # the estimate itself is still reported


def test_run_bootstrap_is_wider_than_a_row_bootstrap_under_run_level_effects():
  """Each run has its own trace and accuracy level (independent across runs), checkpoints
  scatter little around it: 8 runs carry the information of 8 points, not 96."""
  rng = np.random.default_rng(5)
  rows = [r for i in range(8)
          for r in _rows(f"r{i}", rng.normal(10, 3) + rng.normal(0, 0.1, 12),
                         rng.normal(0.7, 0.05) + rng.normal(0, 0.005, 12), [0.01] * 12)]
  c = _scope(analysis.correlate(rows, num_bootstrap=400), "all")
  x = np.array([r["curvature/trace"] for r in rows])
  y = np.array([r["downstream/A/probe_acc"] for r in rows])
  spearman = analysis.spearman
  lo, hi = analysis.bootstrap(spearman, (x, y), num=400)   # rows as if independent
  assert lo <= c.spearman <= hi
  assert c.spearman_hi - c.spearman_lo > 2 * (hi - lo)


def test_rows_without_a_loss_gap_are_counted_not_dropped(caplog):
  rng = np.random.default_rng(6)
  rows = _gap_confounded(rng, num_runs=4)
  for r in rows[:5]:
    del r["eval/loss_gap"]
  with caplog.at_level(logging.WARNING):
    corrs = analysis.correlate(rows, tolerance=None, num_bootstrap=50)
  assert _scope(corrs, "all").n == 32
  partial = _scope(corrs, "partial_gap")
  assert partial.n == 27 and partial.note.startswith("5 rows lacking")
  assert "5 of 32 rows lack eval/loss_gap" in caplog.text
  with caplog.at_level(logging.WARNING):
    assert _scope(analysis.correlate(rows, tolerance=1.0, num_bootstrap=50), "all").n == 27
  assert "cannot be judged against tolerance" in caplog.text


def test_read_run_carries_group_and_seed_and_measures_skip_seeds_and_intervals(tmp_path):
  d = _write_run(tmp_path, "adamw_seed1", 1000, [1.0, 2.0], [0.6, 0.7], group="adamw", seed=1)
  old = _write_run(tmp_path, "old", 1000, [1.0], [0.6])
  rows = analysis.gather([d, old])
  assert {(r["run"], r["group"], r["seed"]) for r in rows} == {
      ("adamw_seed1", "adamw", 1), ("old", "old", 0)}
  rows[0].update({"downstream/A/probe_acc/seed0": 0.5, "downstream/A/probe_acc_lo": 0.4,
                  "downstream/A/probe_acc_hi": 0.8, "curvature/trace_lo": 0.0,
                  "curvature/trace/seed3": 1.0})
  assert analysis.measure_names(rows) == (["curvature/trace"], ["downstream/A/probe_acc"])


def _probed(run, step, trace, trace_se, gap, accs, lookups=None, **extra):
  """A row with per-seed probe (and lookup) accuracies, their mean and s.e."""
  row = dict(run=run, experiment="planted", step=step, num_params=1000, **extra)
  row.update({"curvature/trace": trace, "curvature/trace_stderr": trace_se, "eval/loss_gap": gap})
  for key, vals in (("downstream/A/probe_acc", accs), ("downstream/A/lookup_acc", lookups)):
    if vals is None:
      continue
    row[key] = float(np.mean(vals))
    row[f"{key}_stderr"] = float(stats.sem(vals))
    row.update({f"{key}/seed{k}": v for k, v in enumerate(vals)})
  return row


def test_paired_effects_use_per_seed_differences_with_a_t_interval():
  first = np.array([0.55, 0.66, 0.58, 0.70, 0.61])
  last = first + np.array([0.05, 0.03, 0.06, 0.02, 0.04])   # every seed improves
  lookup = np.array([0.55, 0.57, 0.52, 0.60, 0.56])
  rows = [_probed("r", 100, 12.0, 0.3, 0.08, first, lookup),     # outside a 0.05 tolerance
          _probed("r", 200, 10.0, 0.3, 0.04, first, lookup),
          _probed("r", 300, 9.0, 0.2, 0.03, first + 0.01, lookup),
          _probed("r", 400, 8.0, 0.4, 0.02, last, lookup)]
  (e,) = analysis.paired_effects(rows, tolerance=0.05)
  assert (e.step_a, e.step_b) == (200, 400)
  assert e.d_loss_gap == pytest.approx(-0.02)
  assert e.d_trace == pytest.approx(-2.0)
  assert e.d_trace_se == pytest.approx(0.5) and e.d_trace_z == pytest.approx(-4.0)
  d = last - first
  lo, hi = stats.t.interval(0.95, len(d) - 1, loc=d.mean(), scale=stats.sem(d))
  assert e.d_acc == pytest.approx(0.04)
  assert (e.d_acc_lo, e.d_acc_hi) == (pytest.approx(lo), pytest.approx(hi))
  assert e.n_seeds == 5 and e.acc_method.startswith("paired over 5 seeds")
  # Pairing removes the large seed-to-seed spread: the interval excludes 0; unpaired would not.
  assert e.d_acc_lo > 0
  unpaired = np.hypot(stats.sem(first), stats.sem(last))
  assert e.d_acc_se < unpaired / 3

  # Without per-seed values: the difference of means with sqrt(se_a^2 + se_b^2), said so.
  bare = [{k: v for k, v in r.items() if "/seed" not in k} for r in rows]
  (u,) = analysis.paired_effects(bare, tolerance=0.05)
  assert u.acc_method.startswith("unpaired") and u.n_seeds == 0
  assert u.d_acc == pytest.approx(0.04) and u.d_acc_se == pytest.approx(unpaired)
  assert u.d_acc_lo < 0 < u.d_acc_hi

  # Any two rows; and each checkpoint against the lookup table, paired by seed.
  (c,) = analysis.compare(rows[3], rows[1])
  assert c.d_acc == pytest.approx(-0.04)
  looks = analysis.lookup_effects(rows, tolerance=0.05)
  assert [x.step for x in looks] == [200, 300, 400]
  dl = last - lookup
  lo, hi = stats.t.interval(0.95, 4, loc=dl.mean(), scale=stats.sem(dl))
  assert looks[-1].diff == pytest.approx(dl.mean())
  assert (looks[-1].lo, looks[-1].hi) == (pytest.approx(lo), pytest.approx(hi))


def _seeded(group, seed, step, gap, trace, acc):
  return dict(run=f"{group}_seed{seed}", group=group, seed=seed, experiment="algo", step=step,
              num_params=1000, **{"eval/loss_gap": gap, "curvature/trace": trace,
                                  "downstream/A/probe_acc": acc})


def test_seed_summary_across_seeds_and_between_recipes():
  rng = np.random.default_rng(7)
  acc = {"adamw": 0.80 + rng.normal(0, 0.01, 4), "sgd": 0.75 + rng.normal(0, 0.01, 4)}
  rows = []
  for g, shift in (("adamw", 0.0), ("sgd", 5.0)):
    for s in range(4):
      rows += [_seeded(g, s, 100, 0.05, 20 + shift + s, acc[g][s] - 0.1),
               _seeded(g, s, 200, 0.01, 10 + shift + s, acc[g][s])]
  rows.append(_seeded("alone", 0, 200, 0.01, 9.0, 0.7))   # one seed: no summary
  summary = analysis.seed_summary(rows, tolerance=None)
  assert {s.group for s in summary.stats} == {"adamw", "sgd"}
  final = next(s for s in summary.stats
               if (s.group, s.step, s.metric) == ("sgd", 200, "downstream/A/probe_acc"))
  lo, hi = stats.t.interval(0.95, 3, loc=acc["sgd"].mean(), scale=stats.sem(acc["sgd"]))
  assert final.n_seeds == 4 and final.mean == pytest.approx(acc["sgd"].mean())
  assert (final.lo, final.hi) == (pytest.approx(lo), pytest.approx(hi))
  trace_100 = next(s for s in summary.stats
                   if (s.group, s.step, s.metric) == ("adamw", 100, "curvature/trace"))
  assert trace_100.mean == pytest.approx(21.5) and trace_100.at == "step 100"

  # Same seeds in both recipes: paired by seed index, as scipy's paired t-test.
  diff = next(d for d in summary.differences if d.metric == "downstream/A/probe_acc")
  assert (diff.group_a, diff.group_b) == ("adamw", "sgd")
  assert diff.method.startswith("paired by seed")
  ci = stats.ttest_rel(acc["sgd"], acc["adamw"]).confidence_interval(0.95)
  assert diff.diff == pytest.approx(acc["sgd"].mean() - acc["adamw"].mean())
  assert (diff.lo, diff.hi) == (pytest.approx(ci.low), pytest.approx(ci.high))
  trace_diff = next(d for d in summary.differences if d.metric == "curvature/trace")
  assert trace_diff.diff == pytest.approx(5.0) and trace_diff.se == pytest.approx(0.0)

  # Different seeds (sgd seed 3 missing, and a seed 9): Welch, as scipy's.
  rows = [r for r in rows if r["run"] != "sgd_seed3"] + [_seeded("sgd", 9, 200, 0.01, 15.0, 0.74)]
  diff = next(d for d in analysis.seed_summary(rows).differences
              if d.metric == "downstream/A/probe_acc")
  b = np.append(acc["sgd"][:3], 0.74)
  ci = stats.ttest_ind(b, acc["adamw"], equal_var=False).confidence_interval(0.95)
  assert diff.method == "Welch"
  assert (diff.lo, diff.hi) == (pytest.approx(ci.low), pytest.approx(ci.high))


def test_seed_summary_falls_back_to_each_seeds_final_checkpoint():
  rows = [_seeded("adamw", 0, 100, 0.01, 10.0, 0.8), _seeded("adamw", 1, 200, 0.02, 12.0, 0.7)]
  (gap,) = [s for s in analysis.seed_summary(rows).stats if s.metric == "eval/loss_gap"]
  assert gap.step == -1 and gap.at == "final (steps 100, 200)"
  assert gap.mean == pytest.approx(0.015) and gap.n_seeds == 2


def test_report_labels_axes_in_words_and_draws_seed_figures(tmp_path):
  for tag in ("eval/loss_gap", "curvature/trace", "downstream/A/probe_acc",
              "downstream/A/lookup_acc"):
    assert "/" not in report.label(tag).replace("nats / ", "").replace(" / masked", "")
    assert "(" in report.label(tag)   # units
  assert report.label("downstream/POS/probe_acc") == (
      "linear-probe accuracy on task POS (fraction of test sentences)")
  rng = np.random.default_rng(8)
  rows = []
  for g in ("adamw", "sgd"):
    for s in range(3):
      for step, gap in ((100, 0.05), (200, 0.02), (300, 0.01)):
        r = _probed(f"{g}_seed{s}", step, 10 * gap * 100 + rng.normal(), 0.3, gap,
                    0.8 - gap + rng.normal(0, 0.01, 5), 0.6 + rng.normal(0, 0.01, 5),
                    group=g, seed=s)
        r["downstream/A/probe_acc_lo"] = r["downstream/A/probe_acc"] - 0.02
        r["downstream/A/probe_acc_hi"] = r["downstream/A/probe_acc"] + 0.02
        rows.append(r)
  corrs = analysis.correlate(rows, tolerance=0.03, num_bootstrap=50)
  paths = report.write(rows, corrs, str(tmp_path), tolerance=0.03)
  for key in ("seeds", "group_differences_csv", "seed_summary_csv", "lookup_effects_csv"):
    assert os.path.getsize(paths[key]) > 0, key
  text = open(paths["report"]).read()
  assert "Welch" in text or "paired by seed" in text
  assert "acc - lookup" in text


def test_missing_metrics_file_is_a_clear_error(tmp_path):
  with pytest.raises(FileNotFoundError, match="metrics.jsonl"):
    analysis.read_run(str(tmp_path))
