r"""Cost of Hessian-vector products, and accuracy of the trace estimators per product.

  python -m benchmarks.curvature [--presets=tiny,2m,9m] [--batch_size=32] [--repeats=10]

Table 1, per size preset (MLM loss on batches of length-32 sequences, float32),
measured side by side in one run: the time of one gradient and, for each HVP
method (`flatness.curvature.hessian.HVP_METHODS`), the time per Hessian-vector
product in three settings: one product alone (x1); a chunk of 8 probes on one
batch in one vmapped pass (`hessian.hvps`, how `flatness.curvature.trace`
evaluates a batch's probes; ``linearized`` linearises the gradient once and maps
the 8 probes through its tangent map); and a chunk of 8 (batch, probe) pairs,
8 different batches with one probe each, in one vmapped pass (how
``hessian_trace(..., across_batches=True)`` evaluates one probe per batch).
Each cell is ms per product, its ratio to the gradient, and products per second.
Nothing in it is CPU-specific: on an accelerator it times the same programs
(the batches and probes are placed on the default device).

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


def _batch(obj, cfg, batch_size, seed):
  rng = np.random.default_rng(seed)
  raw = dict(tokens=rng.integers(0, cfg.vocab_size - tok.NUM_SPECIAL,
                                 (batch_size, cfg.seq_len - 2)).astype(np.int32),
             lengths=rng.integers(2, cfg.seq_len - 1, batch_size).astype(np.int32))
  return {k: v for k, v in obj.prepare(jax.random.key(1 + seed), raw).items() if v is not None}


def _problem(cfg, batch_size, seed=0):
  obj = Objective(Transformer(cfg))
  params = init_params(cfg, jax.random.key(seed))
  return obj, params, _batch(obj, cfg, batch_size, seed)


def _time(fn, *args, repeats):
  jax.block_until_ready(fn(*args))
  start = time.perf_counter()
  for _ in range(repeats):
    out = fn(*args)
  jax.block_until_ready(out)
  return (time.perf_counter() - start) / repeats


CHUNK = 8   # products per vmapped pass, as `flatness.curvature.trace` evaluates them (``chunk``)


def _cell(t, tg):
  return f"{1e3 * t:.1f} ({t / tg:.2f}, {1 / t:.1f}/s)"


def table_hvp(names, batch_size, repeats):
  """Per preset: one gradient, then per HVP method the time per product alone, in a chunk
  of `CHUNK` probes on one batch and in a chunk of `CHUNK` batches with one probe each."""
  head = ["preset", "params", "gradient (ms)", "method", "x1", f"{CHUNK} probes, 1 batch",
          f"{CHUNK} batches, 1 probe each"]
  print("ms per HVP (ratio to the gradient, HVPs/s)")
  print("| " + " | ".join(head) + " |")
  print("|" + "---|" * len(head))
  for name in names:
    fields = dict(hidden_size=64, num_layers=2, num_heads=1, mlp_dim=256) if name == "tiny" \
        else presets.preset_fields(name)
    cfg = TransformerConfig(vocab_size=tok.model_vocab_size(200), seq_len=32,
                            dropout_rate=0.0, attention_dropout_rate=0.0, **fields)
    obj, params, batch = _problem(cfg, batch_size)
    batches = tuple(jax.device_put(_batch(obj, cfg, batch_size, 100 + i)) for i in range(CHUNK))
    loss = lambda p, b: obj.loss(p, b)
    tg = _time(jax.jit(jax.grad(loss)), params, batch, repeats=repeats)
    v = hs.probe(jax.random.key(2), params)
    vs = jax.vmap(lambda k: hs.probe(k, params))(jax.random.split(jax.random.key(3), CHUNK))
    size = f"{sum(x.size for x in jax.tree.leaves(params)) / 1e6:.2f}M"
    for method in hs.HVP_METHODS:
      one = lambda p, vv, b, m=method: hs.hvp(loss, p, vv, b, method=m)
      probes = lambda p, vv, b, m=method: hs.hvps(loss, p, vv, b, method=m)
      pairs = lambda p, vv, bs, one=one: jax.vmap(one, in_axes=(None, 0, 0))(
          p, vv, hs.stack_batches(bs))
      t1 = _time(jax.jit(one), params, v, batch, repeats=repeats)
      tc = _time(jax.jit(probes), params, vs, batch, repeats=repeats) / CHUNK
      tp = _time(jax.jit(pairs), params, vs, batches, repeats=repeats) / CHUNK
      cells = [name, size, f"{1e3 * tg:.1f}", method, _cell(t1, tg), _cell(tc, tg),
               _cell(tp, tg)]
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
