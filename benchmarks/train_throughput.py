r"""Training throughput of each size preset: step time, tokens/s, TFLOP/s, MFU.

  python -m benchmarks.train_throughput                       # CPU: the presets that fit
  python -m benchmarks.train_throughput --presets=41m,85m,235m --batch_size=256 \
      --dtype=bfloat16                                        # GPU / TPU

One jitted `train_step` (AdamW, MLM with BERT masking, dropout 0.1) on
sentences of the paper's PCFG shape (16 words + [CLS] + [SEP], sequence length
32, vocabulary 200 words), data-parallel over all devices. Tokens/s counts
padded positions (batch * 32 per step). FLOPs follow `flatness.model.flops`; MFU is
printed where the device's peak is known, always against its dense bf16 peak
(so a float32 run's MFU shows what bf16 would leave on the table).
"""
import time

import jax
import numpy as np
from absl import app
from absl import flags

from experiments.configs import pretrain
from flatness.model import flops
from flatness.model import masking
from flatness.model import presets
from flatness.model import tokens as tok
from flatness.model.objectives import Objective
from flatness.model.transformer import Transformer, TransformerConfig, init_params, param_count
from flatness.runtime import sharding
from flatness.training import optimizers
from flatness.training import train_step as train_step_lib

_PRESETS = flags.DEFINE_list("presets", ["2m", "9m", "41m"], "Size presets to measure.")
_BATCH = flags.DEFINE_integer("batch_size", 64, "Global batch (sentences).")
_STEPS = flags.DEFINE_integer("steps", 10, "Timed steps per preset (after one warm-up).")
_DTYPE = flags.DEFINE_string("dtype", "float32", "Activation dtype: float32 | bfloat16.")
_WORDS = 200
_SEQ = 32


def measure(preset: str, batch_size: int, steps: int, dtype: str) -> dict:
  cfg = TransformerConfig(vocab_size=tok.model_vocab_size(_WORDS), seq_len=_SEQ, dtype=dtype,
                          **presets.preset_fields(preset))
  mesh = sharding.make_mesh()
  objective = Objective(Transformer(cfg))
  tx = optimizers.make_optimizer(
      dict(pretrain.base().optimizer.to_dict(), learning_rate=5e-4, warmup_steps=10), 1000)
  rep, data = sharding.replicated(mesh), sharding.batch_sharding(mesh)
  state = jax.jit(lambda k: train_step_lib.init_state(init_params(cfg, k), tx),
                  out_shardings=rep)(jax.random.key(0))
  step = jax.jit(train_step_lib.make_train_step(objective, tx), in_shardings=(rep, data, rep),
                 out_shardings=(rep, rep), donate_argnums=(0,))
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
  preds = masking.num_predictions(_SEQ - 2, objective.spec)
  f = flops.train_step_flops(cfg, batch_size, preds)
  peak = flops.peak_flops(jax.devices()[0].device_kind)
  return dict(preset=preset, params=param_count(state.params), step_ms=dt * 1e3,
              tokens_per_s=batch_size * _SEQ / dt, tflops=f / dt / 1e12,
              mfu=(f / dt / (peak * mesh.size)) if peak else None)


def main(argv):
  del argv
  dev = jax.devices()[0]
  print(f"# {jax.device_count()} x {dev.device_kind} ({dev.platform}), batch {_BATCH.value}, "
        f"seq {_SEQ}, dtype {_DTYPE.value}")
  print("| preset | params (V=200) | step (ms) | tokens/s | TFLOP/s | MFU (of bf16 peak) |")
  print("|---|---|---|---|---|---|")
  for p in _PRESETS.value:
    r = measure(p, _BATCH.value, _STEPS.value, _DTYPE.value)
    mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "n/a"
    print(f"| {r['preset']} | {r['params'] / 1e6:.2f}M | {r['step_ms']:.1f} | "
          f"{r['tokens_per_s']:,.0f} | {r['tflops']:.3f} | {mfu} |", flush=True)


if __name__ == "__main__":
  app.run(main)
