r"""Cost of Hessian-vector products, and accuracy of the trace estimators per product.

  python -m benchmarks.curvature [--presets=tiny,2m,9m] [--batch_size=32]

Table 1, per size preset (MLM loss on a batch of length-32 sequences, float32),
measured side by side in one run: the time of one gradient and, for each order
of differentiation (`flatness.curvature.hessian.HVP_METHODS`), of one Hessian-vector
product alone and per product within a vmapped chunk of 8 probes (how
`flatness.curvature.trace` evaluates them), each with its ratio to the gradient.

Table 2, on a transformer small enough for a dense Hessian (float64): the
relative error ``|estimate - tr(H)| / tr(H)`` of each trace estimator, averaged
over seeds, against the number of Hessian-vector products it used.
"""
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app
from absl import flags

from flatness.curvature import hessian as hs
from flatness.curvature import trace
from flatness.model import presets
from flatness.model import tokens as tok
from flatness.model.objectives import Objective
from flatness.model.transformer import Transformer, TransformerConfig, init_params

_PRESETS = flags.DEFINE_list("presets", ["tiny", "2m", "9m"], "Presets ('tiny': 2 x 64).")
_BATCH = flags.DEFINE_integer("batch_size", 32, "Sentences per batch.")
_REPEATS = flags.DEFINE_integer("repeats", 10, "Timed calls per measurement.")
_SEEDS = flags.DEFINE_integer("seeds", 10, "Seeds per estimator and budget in table 2.")


def _problem(cfg, batch_size, seed=0):
  obj = Objective(Transformer(cfg))
  params = init_params(cfg, jax.random.key(seed))
  rng = np.random.default_rng(seed)
  raw = dict(tokens=rng.integers(0, cfg.vocab_size - tok.NUM_SPECIAL,
                                 (batch_size, cfg.seq_len - 2)).astype(np.int32),
             lengths=rng.integers(2, cfg.seq_len - 1, batch_size).astype(np.int32))
  batch = {k: v for k, v in obj.prepare(jax.random.key(1), raw).items() if v is not None}
  return obj, params, batch


def _time(fn, *args, repeats):
  jax.block_until_ready(fn(*args))
  start = time.perf_counter()
  for _ in range(repeats):
    out = fn(*args)
  jax.block_until_ready(out)
  return (time.perf_counter() - start) / repeats


CHUNK = 8   # probes per vmapped pass, as `flatness.curvature.trace` visits them (``trace.chunk``)


def table_hvp(names, batch_size, repeats):
  """Per preset: one gradient, then per HVP method one product alone and one product
  within a vmapped chunk of `CHUNK` probes (time per product), all on the same batch."""
  head = ["preset", "params", "gradient (ms)"] + [
      f"{m} {kind} (ms, ratio)" for m in hs.HVP_METHODS for kind in ("x1", f"x{CHUNK}/{CHUNK}")]
  print("| " + " | ".join(head) + " |")
  print("|" + "---|" * len(head))
  for name in names:
    fields = dict(hidden_size=64, num_layers=2, num_heads=1, mlp_dim=256) if name == "tiny" \
        else presets.preset_fields(name)
    cfg = TransformerConfig(vocab_size=tok.model_vocab_size(200), seq_len=32,
                            dropout_rate=0.0, attention_dropout_rate=0.0, **fields)
    obj, params, batch = _problem(cfg, batch_size)
    loss = lambda p, b: obj.loss(p, b)
    tg = _time(jax.jit(jax.grad(loss)), params, batch, repeats=repeats)
    v = hs.probe(jax.random.key(2), params)
    vs = jax.vmap(lambda k: hs.probe(k, params))(jax.random.split(jax.random.key(3), CHUNK))
    cells = [name, f"{sum(x.size for x in jax.tree.leaves(params)) / 1e6:.2f}M",
             f"{1e3 * tg:.1f}"]
    for method in hs.HVP_METHODS:
      one = lambda p, vv, b, m=method: hs.hvp(loss, p, vv, b, method=m)
      t1 = _time(jax.jit(one), params, v, batch, repeats=repeats)
      tc = _time(jax.jit(jax.vmap(one, in_axes=(None, 0, None))), params, vs, batch,
                 repeats=repeats) / CHUNK
      cells += [f"{1e3 * t1:.1f} ({t1 / tg:.2f})", f"{1e3 * tc:.1f} ({tc / tg:.2f})"]
    print("| " + " | ".join(cells) + " |", flush=True)


def table_estimators(seeds):
  with jax.enable_x64(True):
    cfg = TransformerConfig(vocab_size=8, seq_len=6, hidden_size=4, num_layers=1, num_heads=2,
                            mlp_dim=8, dropout_rate=0.0, attention_dropout_rate=0.0,
                            dtype="float64", param_dtype="float64")
    obj, params, batch = _problem(cfg, 6)
    params = jax.tree.map(lambda x: x * 5 if x.ndim > 1 else x, params)
    loss = lambda p: obj.loss(p, batch)
    flat, unravel = jax.flatten_util.ravel_pytree(params)
    exact = float(jnp.trace(jax.jit(jax.hessian(lambda x: loss(unravel(x))))(flat)))
    budgets = (6, 12, 24, 48, 96)
    print(f"| estimator (dense trace {exact:.2f}, {flat.size} parameters) | "
          + " | ".join(f"{b} HVPs" for b in budgets) + " |")
    print("|---|" + "---|" * len(budgets))
    for method in trace.METHODS:
      row = []
      for b in budgets:
        errs = [abs(trace.hessian_trace(loss, params, jax.random.key(s), num_probes=b,
                                        method=method, chunk=b).value - exact) / abs(exact)
                for s in range(seeds)]
        row.append(f"{np.mean(errs):.3f}")
      print(f"| {method} | " + " | ".join(row) + " |", flush=True)


def main(argv):
  del argv
  print(f"# {jax.device_count()} x {jax.devices()[0].device_kind}, batch {_BATCH.value}")
  table_hvp(_PRESETS.value, _BATCH.value, _REPEATS.value)
  print()
  table_estimators(_SEEDS.value)


if __name__ == "__main__":
  app.run(main)
