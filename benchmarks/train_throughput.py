r"""Training throughput: step time, steps/s, tokens/s and GFLOP/s against the machine's peak.

  # pcfg_small (experiments/configs/pretrain.py), the loop of before vs the loop of now,
  # timed in alternating blocks in one process; on a shared 2-core CPU pin it to a core:
  taskset -c 1 python -m benchmarks.train_throughput
  python -m benchmarks.train_throughput --config=pcfg_compact --rounds=10 --block=50
  # What each piece of train.fast_kernels saves (the loss's gradient on one batch):
  python -m benchmarks.train_throughput --ablation --rounds=10
  # "now" data-parallel over one CPU device per core (the default stays on one device):
  XLA_FLAGS=--xla_force_host_platform_device_count=2 python -m benchmarks.train_throughput \
      --now_devices=2

  # The size presets on an accelerator (one jitted step, the paper's sentence shape):
  python -m benchmarks.train_throughput --presets=41m,85m,235m --batch_size=256 \
      --dtype=bfloat16

Default mode, one table per variant and per measure (the same batches, keys and params):

* ``loop``: what `experiments.pretrain` runs, minus evaluation and checkpoints: host
  batches sampled from the language in the prefetch thread, the jitted step, metrics kept
  on the device. ``before``: the trainer's default (``train.steps_per_call = 1``,
  ``train.fast_kernels = False``: one call per step, the step's key folded on the host,
  the batch transferred per step, JAX's own reverse-mode rules); ``now``: the trainer
  with ``train.steps_per_call = K`` (``--steps_per_call``: K steps per call in a
  `lax.scan`, keys folded inside) and ``train.fast_kernels = True`` (the model's
  training kernels, `TransformerConfig.fast_grad`; the prediction columns masking never
  fills dropped and the last block at the predicted positions only,
  `train_step.trim_predictions`, `TransformerConfig.last_block_at_positions`).
* ``step``: the jitted step alone on batches already on the device (``before``: one
  step per call; ``now``: one call of K steps, per step).

``--now_devices=N`` puts ``now`` on a mesh of N devices (``before`` stays on one): on a
CPU with XLA's ``--xla_force_host_platform_device_count=N``, one device per core, each
running its share of the batch, the gradients summed across them.

GFLOP/s counts the matrix products each variant executes (`flatness.model.flops`):
``before`` the MLM head at ``masking.max_predictions`` positions per sentence, ``now`` at
the `masking.max_selected` columns masking can fill, with the last block there only
(`TransformerConfig.last_block_at_positions`), so ``now`` does fewer FLOPs per step
for the same loss and gradient; tokens/s and steps/s compare the variants. The peak is
measured (a 4096^3 float32 matmul in JAX on the same cores, best of a few) and, where the
CPU is recognised, derived (cores x FLOP/cycle x clock). Tokens/s counts real tokens
(words + [CLS] + [SEP]), as the trainer's ``perf/tokens_per_sec``. Rounds alternate the
variants, so load from other processes hits both alike; the table gives the median over
rounds and the ratio of medians.
"""
import dataclasses
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app
from absl import flags

from experiments import wiring
from experiments.configs import pretrain
from flatness.model import flops
from flatness.model import masking
from flatness.model import presets
from flatness.model import tokens as tok
from flatness.model.objectives import Objective
from flatness.model.transformer import Transformer, TransformerConfig, init_params, param_count
from flatness.runtime import sharding
from flatness.training import input_pipeline
from flatness.training import optimizers
from flatness.training import run_config
from flatness.training import train_step as train_step_lib
from flatness.training import trainer

_CONFIG = flags.DEFINE_string("config", "pcfg_small", "Variant of experiments/configs/pretrain.py.")
_ROUNDS = flags.DEFINE_integer("rounds", 7, "Alternating rounds (each times every variant).")
_BLOCK = flags.DEFINE_integer("block", 50, "Steps per variant and round.")
_PEAK_N = flags.DEFINE_integer("peak_n", 4096, "Size of the peak-measuring square matmul.")
_PRESETS = flags.DEFINE_list("presets", [], "Size presets to measure instead (one jitted step).")
_STEPS_PER_CALL = flags.DEFINE_integer("steps_per_call", 10,
                                       "train.steps_per_call of the 'now' variant.")
_NOW_DEVICES = flags.DEFINE_integer("now_devices", 1,
                                    "Devices of the 'now' variant's mesh ('before': 1).")
_BATCH = flags.DEFINE_integer("batch_size", 64, "Global batch (sentences), presets only.")
_STEPS = flags.DEFINE_integer("steps", 10, "Timed steps per preset (after one warm-up).")
_DTYPE = flags.DEFINE_string("dtype", "float32", "Activation dtype: float32 | bfloat16.")
_ABLATION = flags.DEFINE_bool("ablation", False,
                              "Instead: the loss gradient with the pieces of "
                              "train.fast_kernels added one at a time.")
_WORDS = 200
_SEQ = 32


# ---- The machine's peak.

def measured_peak(n: int, repeats: int = 5) -> float:
  """FLOP/s of the best of ``repeats`` float32 [n, n] @ [n, n] products in JAX."""
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  f = jax.jit(lambda x, y: x @ y)
  f(a, a).block_until_ready()
  best = float("inf")
  for _ in range(repeats):
    t = time.perf_counter()
    f(a, a).block_until_ready()
    best = min(best, time.perf_counter() - t)
  return 2.0 * n ** 3 / best


def _cpuinfo() -> dict:
  info = {}
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if ":" in line:
          k, v = line.split(":", 1)
          info.setdefault(k.strip(), v.strip())
  except OSError:
    pass
  return info


def theoretical_peak() -> tuple[float | None, str]:
  """(FLOP/s, how it was derived) of this CPU's float32 FMA peak, or (None, why not).

  FLOP/cycle per core = 2 (an FMA) x float32 lanes x FMA pipes: AVX-512 on AMD Zen 5
  (family 26) and on Intel server cores: 2 full-width pipes, 64; AMD Zen 4 (family 25)
  runs AVX-512 on 256-bit pipes, 32; AVX2 with 2 pipes, 32. The clock is the nominal
  one /proc/cpuinfo reports (boost clocks can exceed it)."""
  info = _cpuinfo()
  if jax.devices()[0].platform != "cpu" or "flags" not in info:
    return None, "not a CPU run"
  flags_, vendor = info["flags"].split(), info.get("vendor_id", "")
  family = int(info.get("cpu family", "0") or 0)
  cores = len(os.sched_getaffinity(0))
  mhz = float(info.get("cpu MHz", "0") or 0)
  if "avx512f" in flags_ and not (vendor == "AuthenticAMD" and family < 26):
    per_cycle, isa = 64, "AVX-512, 2 x 512-bit FMA pipes"
  elif "avx512f" in flags_ or "fma" in flags_:
    per_cycle, isa = 32, "2 x 256-bit FMA pipes"
  else:
    return None, "unknown vector unit"
  if not mhz:
    return None, "unknown clock"
  peak = cores * per_cycle * mhz * 1e6
  return peak, (f"{cores} core(s) x {per_cycle} FLOP/cycle ({isa}) x {mhz / 1e3:.2f} GHz "
                f"(nominal clock; {info.get('model name', '?')}, family {family})")


# ---- pcfg_small: the loop of before against the loop of now.

def run_loop(stepper, state, batches, start, n):
  """`trainer._train`'s loop (``stepper``: a `trainer._Stepper`), without evaluation and
  saves."""
  pending, step = [], start
  while step < start + n:
    state, metrics, k, _ = stepper(state, batches, step, start + n)
    pending.append(metrics)
    step += k
  return state, pending


def _finish(state, pending):
  jax.block_until_ready(state)
  jax.device_get(pending)      # the metrics' one transfer, as a flush
  return state


def compare_loops(config_name: str, rounds: int, block: int) -> None:
  config = pretrain.get_config(config_name)
  config.train.update(steps_per_call=_STEPS_PER_CALL.value, fast_kernels=True)
  old_built = wiring.build(config, mesh=sharding.make_mesh(1))
  built = wiring.build(config, mesh=sharding.make_mesh(_NOW_DEVICES.value),
                       language=old_built.language)
  s, s_old = built.setup, old_built.setup
  t = run_config.train_config(config.train)
  k = trainer.steps_per_call(t)
  # Whole calls per block; the periods (log etc.) of the real loop are multiples of K.
  block = max(k, block - block % k)
  source = built.source()
  base_key = jax.random.key(int(config.seed))
  # before: the trainer's default, one step per call (its key folded on the host), JAX's rules.
  old_jit = trainer._compile_step(dataclasses.replace(t, steps_per_call=1, fast_kernels=False),
                                  s_old, None, 1)
  old_stepper = trainer._Stepper(old_jit, s_old.mesh, base_key, 1, (block,))
  new_jit = trainer._compile_step(t, s, None, k)
  stepper = trainer._Stepper(new_jit, s.mesh, base_key, k, (block,))
  steppers = {"before": old_stepper, "now": stepper}

  cfg = s.model_cfg
  spec = s.objective.spec
  batch = int(config.train.batch_size)
  # The matrix products each variant executes: "now" runs the head at the prediction
  # columns masking can fill and the last block only there (`train_step.trim_predictions`).
  fast_cfg = train_step_lib.training_objective(s.objective).model.cfg
  f_steps = {"before": flops.train_step_flops(cfg, batch, spec.max_predictions),
             "now": flops.train_step_flops(fast_cfg, batch,
                                           masking.max_selected(cfg.seq_len, spec))}
  sample = [source.batch(i) for i in range(20)]
  tokens_per_step = float(np.mean([input_pipeline.num_tokens(b) for b in sample]))

  # Equivalence: the same 2 blocks of steps from the same state, both ways.
  def fresh(setup):
    return setup.create_state(jax.random.fold_in(base_key, 0))
  runs = {}
  for name, setup in (("before", s_old), ("now", s)):
    it = input_pipeline.prefetch(source.batches(0), size=2)
    runs[name] = run_loop(steppers[name], fresh(setup), it, 0, 2 * block)
    it.close()
  (st_old, pend_old), (st_new, pend_new) = runs["before"], runs["now"]
  loss_old, loss_new = (np.concatenate([np.atleast_1d(m["loss"]) for m in jax.device_get(p)])
                        for p in (pend_old, pend_new))
  dl = float(np.max(np.abs(loss_old - loss_new) / np.abs(loss_old)))
  p_old, p_new = jax.device_get((st_old.params, st_new.params))   # meshes may differ
  dp = max(float(np.max(np.abs(a - b))) for a, b in
           zip(jax.tree.leaves(p_old), jax.tree.leaves(p_new)))
  pmax = max(float(np.max(np.abs(a))) for a in jax.tree.leaves(p_old))

  # Timing: alternate the variants, each continuing its own run on its own batches.
  times = {"loop/before": [], "loop/now": [], "step/before": [], "step/now": []}
  states = {"before": st_old, "now": st_new}
  position = 2 * block
  dev1 = [sharding.global_batch(b, s_old.mesh) for b in sample]
  devk = sharding.global_batches(sample[:k], s.mesh)
  keys = [jax.random.fold_in(base_key, i) for i in range(len(dev1))]
  for _ in range(rounds):
    for name in ("before", "now"):
      it = input_pipeline.prefetch(source.batches(position), size=int(t.prefetch))
      t0 = time.perf_counter()
      st, pend = run_loop(steppers[name], states[name], it, position, block)
      states[name] = _finish(st, pend)
      times[f"loop/{name}"].append((time.perf_counter() - t0) / block)
      it.close()
    for name in ("before", "now"):   # the step alone, on batches already on the device
      st = states[name]
      t0 = time.perf_counter()
      if name == "before":
        for i in range(block):
          st, m = old_jit(st, dev1[i % len(dev1)], keys[i % len(keys)])
      else:
        for _ in range(block // k):
          st, m = new_jit(st, devk, stepper.base_key)
      states[name] = _finish(st, [m])
      times[f"step/{name}"].append((time.perf_counter() - t0) / block)
    position += block

  peak = measured_peak(_PEAK_N.value)
  theo, how = theoretical_peak()
  dev = jax.devices()[0]
  print(f"# {config_name}: {param_count(st_new.params):,} params, batch {batch}, seq_len "
        f"{cfg.seq_len}, hidden {cfg.hidden_size}, {cfg.num_layers} layers, vocab "
        f"{cfg.vocab_size}; GFLOP/step (matmuls) before {f_steps['before'] / 1e9:.3f}, now "
        f"{f_steps['now'] / 1e9:.3f}; {tokens_per_step:.0f} tokens/step")
  print(f"# {jax.device_count()} x {dev.device_kind} ({dev.platform}); CPUs this process may "
        f"use: {sorted(os.sched_getaffinity(0))}; load average "
        f"{os.getloadavg()[0]:.2f}; K = {k} steps per call (now); meshes: before 1 device, "
        f"now {s.mesh.size}")
  print(f"# peak: measured {peak / 1e9:.0f} GFLOP/s ({_PEAK_N.value}^3 float32 matmul in JAX)"
        + (f"; theoretical {theo / 1e9:.0f} GFLOP/s = {how}" if theo else f"; theoretical: {how}"))
  print(f"# {rounds} rounds x {block} steps per variant, alternating; medians over rounds; "
        "speed-up: ratio of medians [range of the rounds' paired ratios]")
  print("| measure | variant | step (ms) | steps/s | tokens/s | GFLOP/s | % of measured peak |"
        " speed-up |")
  print("|---|---|---|---|---|---|---|---|")
  for what in ("loop", "step"):
    base = statistics.median(times[f"{what}/before"])
    for name in ("before", "now"):
      dt = statistics.median(times[f"{what}/{name}"])
      paired = [b / n for b, n in zip(times[f"{what}/before"], times[f"{what}/{name}"])]
      spread = f" [{min(paired):.2f}-{max(paired):.2f}]" if name == "now" else ""
      f_step = f_steps[name]
      print(f"| {what} | {name} | {dt * 1e3:.2f} | {1 / dt:.1f} | {tokens_per_step / dt:,.0f} | "
            f"{f_step / dt / 1e9:.1f} | {100 * f_step / dt / peak:.1f}% | "
            f"{base / dt:.2f}x{spread} |")
  print(f"# equivalence over {2 * block} steps from the same init, batches and keys: max "
        f"relative loss difference {dl:.2e}; max |param difference| {dp:.2e} "
        f"(largest |param| {pmax:.2f})")


# ---- What each piece of train.fast_kernels saves: the loss's gradient on one batch.

def ablation(config_name: str, rounds: int, block: int) -> None:
  """The gradient of the MLM loss on one ``pcfg_small`` batch, the pieces of
  ``train.fast_kernels`` added one at a time, each variant timed for ``block`` calls per
  round over ``rounds`` alternating rounds (the same params, batch and masks)."""
  config = pretrain.get_config(config_name)
  built = wiring.build(config, mesh=sharding.make_mesh(1))
  s = built.setup
  ref = s.objective
  params = s.create_state(jax.random.key(0)).params
  batch = sharding.global_batch(built.source().batch(0), s.mesh)
  prepared = jax.jit(lambda b: ref.prepare(jax.random.key(1), b))(batch)

  def with_cfg(**fields):
    cfg = dataclasses.replace(ref.model.cfg, **fields)
    return dataclasses.replace(ref, model=ref.model.clone(cfg=cfg))
  fast = with_cfg(fast_grad=True)
  full = train_step_lib.training_objective(ref)      # what train.fast_kernels runs
  trimmed = train_step_lib.trim_predictions(full, prepared)
  variants = {   # name: (objective, batch)
      "JAX's rules (the default)": (ref, prepared),
      "+ `fast_grad` (dense-layer rule, GELU by erf)": (fast, prepared),
      f"+ prediction columns {prepared['positions'].shape[1]} -> "
      f"{trimmed['positions'].shape[1]} (`trim_predictions`)": (fast, trimmed),
      "+ last block at the predicted positions (`last_block_at_positions`)": (full, trimmed),
  }
  grads = {}
  for name, (objective, b) in variants.items():
    fn = jax.jit(jax.value_and_grad(lambda p, o=objective, b=b: o.loss(p, b)))
    jax.block_until_ready(fn(params))
    grads[name] = fn
  times = {name: [] for name in variants}
  for _ in range(rounds):
    for name, fn in grads.items():
      t0 = time.perf_counter()
      for _ in range(block):
        out = fn(params)
      jax.block_until_ready(out)
      times[name].append((time.perf_counter() - t0) / block)
  base = times["JAX's rules (the default)"]
  print(f"# {config_name}: the MLM loss's gradient on one batch of "
        f"{prepared['ids'].shape[0]}; {rounds} rounds x {block} calls per variant, "
        "alternating; speed-up: ratio of medians [range of the rounds' paired ratios]")
  print("| loss gradient | ms | speed-up |")
  print("|---|---|---|")
  for name, ts in times.items():
    paired = [b / t for b, t in zip(base, ts)]
    print(f"| {name} | {statistics.median(ts) * 1e3:.2f} | "
          f"{statistics.median(base) / statistics.median(ts):.2f}x "
          f"[{min(paired):.2f}-{max(paired):.2f}] |")


# ---- Size presets (accelerators): one jitted step.

def measure(preset: str, batch_size: int, steps: int, dtype: str, fast: bool) -> dict:
  cfg = TransformerConfig(vocab_size=tok.model_vocab_size(_WORDS), seq_len=_SEQ, dtype=dtype,
                          **presets.preset_fields(preset))
  mesh = sharding.make_mesh()
  objective = Objective(Transformer(cfg))
  tx = optimizers.make_optimizer(
      dict(pretrain.base().optimizer.to_dict(), learning_rate=5e-4, warmup_steps=10), 1000)
  rep, data = sharding.replicated(mesh), sharding.batch_sharding(mesh)
  state = jax.jit(lambda k: train_step_lib.init_state(init_params(cfg, k), tx),
                  out_shardings=rep)(jax.random.key(0))
  step = jax.jit(train_step_lib.make_train_step(objective, tx, fast_kernels=fast),
                 in_shardings=(rep, data, rep), out_shardings=(rep, rep), donate_argnums=(0,))
  rng = np.random.default_rng(0)
  lengths = np.full(batch_size, _SEQ - 2, np.int32)
  batch = sharding.global_batch(dict(tokens=rng.integers(0, _WORDS, (batch_size, _SEQ - 2),
                                                         dtype=np.int32), lengths=lengths), mesh)
  state, m = step(state, batch, jax.random.key(0))
  jax.block_until_ready(m)
  start = time.perf_counter()
  for i in range(steps):
    state, m = step(state, batch, jax.random.key(i))
  jax.block_until_ready(m)
  dt = (time.perf_counter() - start) / steps
  if fast:   # the products the fast step executes (fewer: `train_step.trim_predictions`)
    f = flops.train_step_flops(train_step_lib.training_objective(objective).model.cfg,
                               batch_size, masking.max_selected(_SEQ, objective.spec))
  else:
    f = flops.train_step_flops(cfg, batch_size, objective.spec.max_predictions)
  peak = flops.peak_flops(jax.devices()[0].device_kind)
  return dict(preset=preset, params=param_count(state.params), step_ms=dt * 1e3,
              tokens_per_s=batch_size * _SEQ / dt, tflops=f / dt / 1e12,
              mfu=(f / dt / (peak * mesh.size)) if peak else None)


def preset_table() -> None:
  dev = jax.devices()[0]
  print(f"# {jax.device_count()} x {dev.device_kind} ({dev.platform}), batch {_BATCH.value}, "
        f"seq {_SEQ}, dtype {_DTYPE.value}; tokens/s counts padded positions; MFU against "
        "the dense bf16 peak")
  print("| preset | kernels | params (V=200) | step (ms) | tokens/s | TFLOP/s | MFU |")
  print("|---|---|---|---|---|---|---|")
  for p in _PRESETS.value:
    for fast in (False, True):
      r = measure(p, _BATCH.value, _STEPS.value, _DTYPE.value, fast)
      mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "n/a"
      print(f"| {r['preset']} | {'training' if fast else 'JAX rules'} | "
            f"{r['params'] / 1e6:.2f}M | {r['step_ms']:.1f} | {r['tokens_per_s']:,.0f} | "
            f"{r['tflops']:.3f} | {mfu} |", flush=True)


def main(argv):
  del argv
  if _PRESETS.value:
    preset_table()
  elif _ABLATION.value:
    ablation(_CONFIG.value, _ROUNDS.value, _BLOCK.value)
  else:
    compare_loops(_CONFIG.value, _ROUNDS.value, _BLOCK.value)


if __name__ == "__main__":
  app.run(main)
