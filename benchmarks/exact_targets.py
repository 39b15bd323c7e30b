r"""Step time of exact-target pre-training against sampled targets, side by side.

  python -m benchmarks.exact_targets                          # pcfg_small and tiny
  python -m benchmarks.exact_targets --variants=pcfg_small --steps=200 --rounds=7

For each variant of ``experiments/configs/pretrain.py`` the trainer's own step
(its model, optimizer, batch size, masking and shardings, built by
`experiments.wiring.build`) is jitted twice, with ``targets='sampled'`` and
``targets='exact'``, and the two are timed in alternating blocks of ``--steps``
steps on the same pre-drawn batches (the data pipeline runs in a background
thread during training and is not part of the step); the table gives the
median over ``--rounds`` blocks. ``targets alone`` times the exact targets of
one batch (`data_gen.bert_targets`, masks drawn as in the step) by themselves.
The issue's target: exact at most 1.3x sampled on ``pcfg_small``.
"""
import time

import jax
import numpy as np
from absl import app
from absl import flags

from experiments import wiring
from experiments.configs import pretrain
from flatness.model import objectives
from flatness.runtime import sharding
from flatness.training import train_step as train_step_lib

_VARIANTS = flags.DEFINE_list("variants", ["pcfg_small", "tiny"], "pretrain.py variants.")
_STEPS = flags.DEFINE_integer("steps", 100, "Steps per timed block.")
_ROUNDS = flags.DEFINE_integer("rounds", 5, "Alternating blocks per target kind.")
_BATCHES = 16   # distinct batches, cycled


def _block(fn, state, batches, keys, steps):
  """Runs ``steps`` steps; returns (state, seconds per step)."""
  jax.block_until_ready(state)
  start = time.perf_counter()
  for i in range(steps):
    state, metrics = fn(state, batches[i % len(batches)], keys[i % len(keys)])
  jax.block_until_ready((state, metrics))
  return state, (time.perf_counter() - start) / steps


def measure(variant: str, steps: int, rounds: int) -> dict:
  config = pretrain.get_config(variant)
  built = wiring.build(config)
  setup, source = built.setup, built.source()
  batches = [sharding.global_batch(source.batch(i), setup.mesh) for i in range(_BATCHES)]
  keys = [jax.random.fold_in(jax.random.key(0), i) for i in range(_BATCHES)]
  rep, data = sharding.replicated(setup.mesh), sharding.batch_sharding(setup.mesh)
  fns, states = {}, {}
  for kind in objectives.TARGETS:
    targets = wiring.training_targets(kind, built.language, setup.objective)
    step = train_step_lib.make_train_step(setup.objective, setup.tx, schedule=setup.schedule,
                                          targets=targets)
    fns[kind] = jax.jit(step, in_shardings=(rep, data, rep), out_shardings=(rep, rep),
                        donate_argnums=(0,))
    states[kind], _ = _block(fns[kind], setup.create_state(jax.random.key(0)), batches, keys,
                             2)   # compile and warm up
  times = {kind: [] for kind in fns}
  for _ in range(rounds):
    for kind, fn in fns.items():
      states[kind], dt = _block(fn, states[kind], batches, keys, steps)
      times[kind].append(dt)

  exact = wiring.training_targets("exact", built.language, setup.objective)
  alone = jax.jit(lambda b, k: exact(setup.objective.prepare(k, b), b))
  jax.block_until_ready(alone(batches[0], keys[0]))
  per = []
  for _ in range(rounds):
    start = time.perf_counter()
    out = [alone(batches[i % _BATCHES], keys[i % _BATCHES]) for i in range(steps)]
    jax.block_until_ready(out)
    per.append((time.perf_counter() - start) / steps)
  med = {kind: float(np.median(t)) * 1e3 for kind, t in times.items()}
  return dict(variant=variant, batch=int(config.train.batch_size),
              words=built.language.vocab_size, max_length=built.language.max_length,
              sampled=med["sampled"], exact=med["exact"], alone=float(np.median(per)) * 1e3)


def main(argv):
  del argv
  dev = jax.devices()[0]
  print(f"# {jax.device_count()} x {dev.device_kind} ({dev.platform}); median of "
        f"{_ROUNDS.value} blocks of {_STEPS.value} steps")
  print("| variant | batch | words / max length | sampled (ms/step) | exact (ms/step) | "
        "exact / sampled | targets alone (ms) |")
  print("|---|---|---|---|---|---|---|")
  for v in _VARIANTS.value:
    r = measure(v, _STEPS.value, _ROUNDS.value)
    print(f"| {r['variant']} | {r['batch']} | {r['words']} / {r['max_length']} | "
          f"{r['sampled']:.2f} | {r['exact']:.2f} | {r['exact'] / r['sampled']:.2f} | "
          f"{r['alone']:.2f} |", flush=True)


if __name__ == "__main__":
  app.run(main)
