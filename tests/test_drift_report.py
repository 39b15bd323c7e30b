"""The mechanism report on runs whose drift is known: written out as run directories.

Each synthetic run's trace falls exactly as ``tr(H) = T0 + offset_seed - c eta^2 t / B``
(the label-noise law) and the exact-target arm's does not move, so every rate, the
rate law's slope and intercept and the paired differences have closed forms; the
accuracies are set per probe seed so that the end - start change is known.
"""
import json
import os

import numpy as np
import pytest

from flatness.analysis import drift_report
from flatness.runtime import metric_writers

T0, C = 80.0, 2.0e5            # trace at the start; drift per unit of eta^2 t / B
STEPS = (0, 500, 1000, 1500, 2000)
OPT = 1.7


def _write_run(root, name, group, seed, *, optimizer="sgd", targets="sampled", lr=0.02,
               batch=32, slope=0.0, acc_end=None, acc_start=None):
  d = os.path.join(root, name)
  os.makedirs(d)
  cfg = dict(name=name, group=group, seed=seed, targets=targets,
             optimizer=dict(name=optimizer, learning_rate=lr), train=dict(batch_size=batch))
  with open(os.path.join(d, "config.json"), "w") as f:
    json.dump(cfg, f)
  with open(os.path.join(d, "run_info.json"), "w") as f:
    json.dump(dict(name=name, group=group, seed=seed, experiment="mechanism"), f)
  with open(os.path.join(d, metric_writers.JSONL), "w") as f:
    for s in STEPS:
      rec = {"step": s, "curvature/trace": T0 + seed + slope * s, "curvature/trace_stderr": 1.0,
             "eval/loss_gap": 0.01 + 1e-6 * s, "eval/optimal_loss": OPT,
             # 90% of the drift in the embedding block, 10% in the head.
             "curvature/trace/embed": 0.8 * T0 + 0.9 * slope * s,
             "curvature/trace/head": 0.2 * T0 + seed + 0.1 * slope * s}
      probe = acc_start if s == 0 else acc_end if s == STEPS[-1] else None
      if probe is not None:
        rec["downstream/A/probe_acc"] = float(np.mean(probe))
        rec.update({f"downstream/A/probe_acc/seed{k}": v for k, v in enumerate(probe)})
      f.write(json.dumps(rec) + "\n")
  return d


@pytest.fixture
def runs(tmp_path):
  dirs = []
  start = [0.80, 0.82, 0.81, 0.83]
  # (0.02, 32) and (0.04, 128) share eta^2 / B: a collapse pair.
  for lr, batch in ((0.02, 32), (0.02, 64), (0.04, 32), (0.04, 64), (0.04, 128)):
    for seed in range(3):
      name = f"sgd_lr{lr}_b{batch}_seed{seed}"
      # Seed k's accuracy ends (k + 1) points above the start on every probe seed.
      dirs.append(_write_run(
          tmp_path, name, f"sgd_lr{lr}_b{batch}", seed, lr=lr, batch=batch,
          slope=-C * lr ** 2 / batch, acc_end=[a + 0.01 * (seed + 1) for a in start],
          acc_start=start if (lr, batch, seed) == (0.02, 32, 0) else None))
  for seed in range(3):
    dirs.append(_write_run(tmp_path, f"exact_seed{seed}", "exact", seed, targets="exact",
                           lr=0.04, batch=32, slope=0.0))
    dirs.append(_write_run(tmp_path, f"adamw_seed{seed}", "adamw", seed, optimizer="adamw",
                           lr=3e-4, batch=128, slope=-1e-3))
  return dirs


def test_rates_and_rate_law_recover_the_closed_form(runs):
  a = drift_report.analyze(runs, window=1000, tolerance=0.017)
  by = {s.arm.group: s for s in a.summaries}
  assert [s.arm.group for s in a.summaries][-2:] == ["exact", "adamw"]
  for s in a.law_arms:
    want = -C * s.arm.noise_scale
    assert s.rate.rate == pytest.approx(want, rel=1e-9)
    np.testing.assert_allclose(s.rate.per_run, want, rtol=1e-9)
    # The change end - start is paired per seed: the seed offsets cancel exactly.
    assert s.d_trace.mean == pytest.approx(want * STEPS[-1], rel=1e-9)
    assert s.d_trace.se == pytest.approx(0, abs=1e-9)
    assert s.d_modules["embed"].mean == pytest.approx(0.9 * want * STEPS[-1], rel=1e-9)
    assert s.d_modules["head"].mean == pytest.approx(0.1 * want * STEPS[-1], rel=1e-9)
  assert a.law.slope * 1e-3 == pytest.approx(-C, rel=1e-9)     # rates are per 1000 steps
  assert a.law.intercept == pytest.approx(0, abs=1e-9)
  assert a.law.r2 == pytest.approx(1.0)
  assert by["exact"].rate.rate == pytest.approx(0, abs=1e-12)
  (control,) = a.controls
  assert (control.exact, control.sampled) == ("exact", "sgd_lr0.04_b32")
  assert control.difference.mean == pytest.approx(C * 0.04 ** 2 / 32 * 1000, rel=1e-9)
  assert by["adamw"].arm.noise_scale != by["adamw"].arm.noise_scale      # NaN: not SGD
  assert by["sgd_lr0.02_b32"].within == 1.0
  (pair,) = a.pairs
  assert (pair.a, pair.b, pair.step) == ("sgd_lr0.02_b32", "sgd_lr0.04_b128", STEPS[-1])
  assert pair.d_change.mean == pytest.approx(0, abs=1e-9)
  assert pair.d_rate.mean == pytest.approx(0, abs=1e-9)


def test_accuracy_change_is_paired_over_probe_seeds_and_runs(runs):
  a = drift_report.analyze(runs, window=2000, tolerance=None)
  d = {s.arm.group: s.accuracy.get("A") for s in a.summaries}
  # Runs end 1, 2, 3 points up: mean 2, across-run se 1/sqrt(3); plus the start's probe-seed
  # error (sd of the four start accuracies / 2).
  se = np.hypot(1 / np.sqrt(3), 100 * np.std([0.80, 0.82, 0.81, 0.83], ddof=1) / 2)
  for group in ("sgd_lr0.02_b32", "sgd_lr0.04_b64"):
    assert d[group].mean == pytest.approx(2.0, rel=1e-9)
    assert d[group].se == pytest.approx(se, rel=1e-9)
  assert np.isnan(d["exact"].mean)            # never probed at its end: no change claimed


def test_written_files(runs, tmp_path):
  paths = drift_report.write(runs, str(tmp_path / "report"), window=1000, tolerance=0.017)
  text = open(paths["drift"]).read()
  assert "Rate law" in text and "intercept" in text and "exact - sgd_lr0.04_b32" in text
  assert "Where tr(H) changes" in text
  assert len(open(paths["drift_csv"]).read().splitlines()) == 1 + 7
  assert "sgd_lr0.02_b32 - sgd_lr0.04_b128" in text
  for k in ("collapse", "rate_law"):
    assert os.path.getsize(paths[k]) > 0


def test_arms_with_a_missing_or_unfinished_seed_pair_by_seed_id(tmp_path):
  """Two arms at the same eta^2 / B whose drift grows with the seed: with seed 1 of one
  arm missing and a run measured only at step 0, the rest still pair by seed id (by
  position they would differ), and the unfinished run is left out, not fatal."""
  dirs = []
  for lr, batch in ((0.02, 32), (0.04, 128)):
    for seed in range(3):
      if (batch, seed) == (128, 1):
        continue
      dirs.append(_write_run(tmp_path, f"sgd_lr{lr}_b{batch}_seed{seed}", f"sgd_b{batch}",
                             seed, lr=lr, batch=batch,
                             slope=-C * (1 + seed) * lr ** 2 / batch))
  partial = _write_run(tmp_path, "sgd_b32_seed9", "sgd_b32", 9, lr=0.02, batch=32)
  with open(os.path.join(partial, metric_writers.JSONL)) as f:
    first = f.readline()
  with open(os.path.join(partial, metric_writers.JSONL), "w") as f:
    f.write(first)
  a = drift_report.analyze(dirs + [partial], window=1000, tolerance=None)
  (pair,) = a.pairs
  assert pair.d_change.mean == pytest.approx(0, abs=1e-9)
  assert pair.d_rate.mean == pytest.approx(0, abs=1e-9)
  by = {s.arm.group: s for s in a.summaries}
  assert by["sgd_b128"].seeds == (0, 2) and by["sgd_b32"].seeds == (0, 1, 2)
