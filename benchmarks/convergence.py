r"""How close each CPU recipe gets to the exact optimum, against training time and data.

  python -m benchmarks.convergence                                  # every recipe
  python -m benchmarks.convergence --recipes=exact,exact_small --scale=0.5
  python -m benchmarks.convergence --recipes=exact_long             # 32,000 steps
  python -m benchmarks.convergence --recipes=exact_wide,exact_deep,exact_lr6e-3

Each recipe is ``experiments/configs/pretrain.py:pcfg_small`` (the 2-layer,
64-wide model; AdamW 3e-3 with cosine decay over the recipe's steps) with the
overrides in `RECIPES`; they run one after another in this process, so their
times are measured side by side on the same machine. For every evaluation the
table gives the step, sentences seen, training seconds so far, and the loss
gap (``eval/loss_gap``: mean KL from the exact single-masked conditionals on
``--num_validation`` validation sentences, nats) absolute and relative to the
exact optimum. Training seconds add up the trainer's own step timing
(``perf/steps_per_sec`` between log points; evaluation and compilation
excluded). The summary gives, per recipe, the final gap, the first point at
or below 1% and 0.5% of the optimum, and the majority-class share of each
downstream task of its language (a task is informative only well below 1).
One seed per recipe: read differences smaller than the step-to-step wobble of
the gap column as noise.
"""
import os
import tempfile

import numpy as np
from absl import app
from absl import flags
from absl import logging

from data_gen import sections
from data_gen.pcfg.random_grammar import COMPACT, COMPACT_SEED
from experiments import wiring
from experiments.configs import pretrain
from flatness.runtime import logs
from flatness.runtime import metric_writers

# A smaller grammar than SMALL: 16 words, 2 start symbols, 3 symbols a level.
_SMALL_GRAMMAR = {"data.pcfg.num_start": 2, "data.pcfg.symbols_per_level": 3,
                  "data.pcfg.rules_per_symbol": 3, "data.pcfg.words_per_last_symbol": 6,
                  "data.pcfg.vocab_size": 16}

# pretrain.py:pcfg_compact's grammar (data_gen.pcfg.random_grammar.COMPACT, seed 2).
_COMPACT = {"data.pcfg." + k: v for k, v in sections.pcfg_section(COMPACT).items()}
_COMPACT["data.seed"] = COMPACT_SEED

# name -> (steps, overrides of pretrain.py:pcfg_small)
RECIPES = {
    "sampled": (8000, {}),
    "exact": (8000, {"targets": "exact"}),
    "exact_b512": (3000, {"targets": "exact", "train.batch_size": 512}),
    "exact_long": (32000, {"targets": "exact"}),
    "exact_wide": (8000, {"targets": "exact", "model.hidden_size": 128, "model.num_heads": 4,
                          "model.mlp_dim": 512}),
    "exact_deep": (8000, {"targets": "exact", "model.num_layers": 4}),
    "exact_lr6e-3": (8000, {"targets": "exact", "optimizer.learning_rate": 6e-3}),
    "sampled_small": (8000, dict(_SMALL_GRAMMAR)),
    "exact_small": (8000, dict(_SMALL_GRAMMAR, targets="exact")),
    "exact_compact": (8000, dict(_COMPACT, targets="exact")),
}

# The 32-word grammar's other levers (README): 3-6 minutes each, run when named.
_ON_REQUEST = ("exact_long", "exact_wide", "exact_deep", "exact_lr6e-3")
_RECIPES = flags.DEFINE_list("recipes", [r for r in RECIPES if r not in _ON_REQUEST],
                             "Recipes to run, in order.")
_SCALE = flags.DEFINE_float("scale", 1.0, "Multiplies every recipe's number of steps.")
_EVALS = flags.DEFINE_integer("evals", 8, "Evaluations per recipe.")
_VALIDATION = flags.DEFINE_integer("num_validation", 512, "Validation sentences.")


def config(name: str, scale: float, evals: int, num_validation: int):
  steps, overrides = RECIPES[name]
  c = pretrain.get_config("pcfg_small")
  c.update_from_flattened_dict(overrides)
  steps = max(evals, int(steps * scale))
  c.train.update(num_steps=steps, eval_every=max(1, steps // evals), checkpoint_every=steps,
                 log_every=50, max_to_keep=1)
  c.data.num_validation = num_validation
  return c


def curve(workdir: str, batch_size: int) -> list[dict]:
  """[{step, sentences, seconds, gap, optimum}] at each evaluation, from metrics.jsonl."""
  recs = {}
  for r in metric_writers.read_jsonl(os.path.join(workdir, metric_writers.JSONL)):
    recs.setdefault(int(r["step"]), {}).update(r)
  seconds, prev, rate, out = 0.0, 0, None, []
  for step in sorted(recs):
    r = recs[step]
    if "perf/steps_per_sec" in r:
      rate = r["perf/steps_per_sec"]
    if "train/loss" in r:
      # The first interval has no timing of its own: it takes the next one's rate.
      rate = rate or next((recs[s]["perf/steps_per_sec"] for s in sorted(recs)
                           if s > step and "perf/steps_per_sec" in recs[s]), np.nan)
      seconds += (step - prev) / rate
      prev = step
    if "eval/loss_gap" in r:
      out.append(dict(step=step, sentences=step * batch_size, seconds=seconds,
                      gap=r["eval/loss_gap"], optimum=r["eval/optimal_loss"]))
  return out


def majority_shares(language, n: int = 2000) -> dict[str, float]:
  """Share of the most frequent label of each downstream task."""
  tasks = wiring.task_data(language, [], n, 0, seed=0)
  return {t.name: float(np.bincount(t.pool[2]).max() / len(t.pool[2])) for t in tasks}


def main(argv):
  del argv
  logs.quiet_libraries()
  logging.set_verbosity(logging.WARNING)
  unknown = [r for r in _RECIPES.value if r not in RECIPES]
  if unknown:
    raise app.UsageError(f"--recipes: unknown {unknown}; choose from {list(RECIPES)}")
  rows, summary = [], []
  for name in _RECIPES.value:
    c = config(name, _SCALE.value, _EVALS.value, _VALIDATION.value)
    built = wiring.build(c)
    with tempfile.TemporaryDirectory() as workdir:
      wiring.train(c, workdir, built=built)
      points = curve(workdir, int(c.train.batch_size))
    for p in points:
      rows.append(f"| {name} | {p['step']} | {p['sentences']:,} | {p['seconds']:.0f} | "
                  f"{p['gap']:.4f} | {100 * p['gap'] / p['optimum']:.2f}% |")
    first = {}
    for level in (0.01, 0.005):
      hit = next((p for p in points if p["gap"] <= level * p["optimum"]), None)
      first[level] = f"{hit['seconds']:.0f} s / {hit['sentences']:,}" if hit else "not reached"
    last = points[-1]
    shares = ", ".join(f"{k} {v:.2f}" for k, v in majority_shares(built.language).items())
    summary.append(f"| {name} | {last['optimum']:.3f} | {last['gap']:.4f} "
                   f"({100 * last['gap'] / last['optimum']:.2f}%) | {last['seconds']:.0f} | "
                   f"{first[0.01]} | {first[0.005]} | {shares} |")
    print(rows[-1], flush=True)
  print("\n| recipe | step | sentences | train s | loss gap (nats) | % of optimum |")
  print("|---|---|---|---|---|---|")
  print("\n".join(rows))
  print("\n| recipe | optimum (nats) | final gap | train s | <= 1% at (s / sentences) | "
        "<= 0.5% at | majority-class share per task |")
  print("|---|---|---|---|---|---|---|")
  print("\n".join(summary))


if __name__ == "__main__":
  app.run(main)
